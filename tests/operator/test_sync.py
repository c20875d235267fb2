"""``email-service sync``: templates/ and EmailTemplate YAML into the store without a cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mailcore.store import TemplateStoreWriter
from mailcore.template_resources import compile_resource

from ..support import REPO, RedisServer, ServiceProcess, wait_for
from .conftest import EXAMPLES

BROKEN = """apiVersion: email.platform.example.com/v1
kind: EmailTemplate
metadata: {name: note}
spec:
  subject: Note
  mjml: |
    <mjml>
      <mj-body>
        <mj-text>{{ unclosed </mj-text>
      </mj-body>
    </mjml>
"""
FIXED = BROKEN.replace("{{ unclosed ", "{{ name }}")


def sync_env(redis: RedisServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TEMPLATE_"))}
    env.update(REDIS_URL=redis.url, TEMPLATE_NAMESPACES="dev,team-a", SECRETS_DIR="/nonexistent",
               KEY_PREFIX="sync-test", PYTHONUNBUFFERED="1")
    return env


def writer(redis: RedisServer) -> TemplateStoreWriter:
    return TemplateStoreWriter(redis.client(), "sync-test")


def test_one_shot_sync_reports_like_the_status(store_redis: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "note.yaml").write_text(BROKEN)
    result = subprocess.run(
        [sys.executable, "-m", "email_service", "sync", str(REPO / "templates"), str(EXAMPLES),
         str(tmp_path)], env=sync_env(store_redis), capture_output=True, text=True, timeout=60,
        cwd=REPO)
    assert result.returncode == 1, result.stderr  # something was refused
    lines = result.stdout.splitlines()
    assert any(line.startswith("dev/password_reset\tReady=True\tCompiled\tversion ")
               for line in lines)
    assert any(line.startswith("default/welcome\tReady=True") for line in lines)
    refused = [line for line in lines if "Ready=False" in line]
    assert len(refused) == 1
    assert refused[0].split("\t")[1:3] == ["Ready=False", "RenderError"]
    assert refused[0].endswith("(line 3)")
    store = writer(store_redis)
    assert set(store.versions()) >= {"dev/password_reset", "dev/order_confirmation",
                                     "default/welcome", "default/invoice"}
    assert store.get("dev/note") is None


@pytest.mark.slow
def test_watch_resyncs_on_change(store_redis: RedisServer, tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    shutil.copy(EXAMPLES / "invoice-html.yaml", folder / "invoice.yaml")
    (folder / "note.yaml").write_text(FIXED)
    process = ServiceProcess(["sync", "--watch", str(folder)], sync_env(store_redis),
                             tmp_path / "sync.log").start()
    store = writer(store_redis)
    try:
        process.wait_until(lambda: "watching" in process.output(), message="the first sync")
        first = store.get("dev/note")
        assert first is not None

        (folder / "note.yaml").write_text(BROKEN)
        process.wait_until(lambda: "RenderError" in process.output(),
                           message="the error to be reported")
        kept = store.get("dev/note")
        assert kept is not None and kept.version == first.version  # last good version stays

        second = FIXED.replace("subject: Note", "subject: Note v2")
        (folder / "note.yaml").write_text(second)
        expected = compile_resource("dev/note", yaml.safe_load(second)["spec"]).version
        wait_for(lambda: (s := store.get("dev/note")) is not None and s.version == expected,
                 message="the fixed version to be synced")

        (folder / "invoice.yaml").unlink()
        wait_for(lambda: store.get("default/invoice") is None, message="the removal")
        assert "default/invoice\tremoved" in process.output()
    finally:
        process.stop()


def hostile_resource(name: str, **spec: object) -> dict[str, object]:
    return {"apiVersion": "email.platform.example.com/v1", "kind": "EmailTemplate",
            "metadata": {"name": name}, "spec": {"subject": "Hi", **spec}}


def deep_mjml(levels: int) -> str:
    return ("<mjml><mj-body>" + "<mj-section>" * levels + "</mj-section>" * levels
            + "</mj-body></mjml>")


#: Sample data that must never be printed, whatever fails.
SAMPLE_SECRET = "SAMPLE-SECRET-5150"


@pytest.mark.slow
@pytest.mark.parametrize(("depth_setting", "reason"), [
    (None, "MJMLTooDeep"),  # refused before the compiler runs
    ("100000", "CompilerCrashed"),  # check lifted: the compiler's SIGSEGV kills only the child
])
def test_sync_survives_hostile_templates_and_reports_each(
    store_redis: RedisServer, tmp_path: Path, depth_setting: str | None, reason: str,
) -> None:
    documents = [
        hostile_resource("deep", mjml=deep_mjml(3000)),
        hostile_resource("wide", html="{{ '%999999999s'|format(code) }}",
                         sampleData={"code": SAMPLE_SECRET}),
        hostile_resource("loop", html="{% for a in range(100000) %}{% for b in range(100000) %}"
                         "{% set x = code %}{% endfor %}{% endfor %}",
                         sampleData={"code": SAMPLE_SECRET}),
        hostile_resource("typed", html="{{ code }}", sampleData={"code": SAMPLE_SECRET},
                         variables={"type": "object", "properties": {
                             "code": {"type": "integer"}}}),
        hostile_resource("fine", html="<p>{{ code }}</p>", sampleData={"code": SAMPLE_SECRET}),
    ]
    (tmp_path / "hostile.yaml").write_text(yaml.safe_dump_all(documents))
    env = sync_env(store_redis)
    env["COMPILE_MEMORY_LIMIT_MB"] = "512"  # a regressed bound costs the child, not the CI
    env.pop("MJML_MAX_DEPTH", None)
    if depth_setting:
        env["MJML_MAX_DEPTH"] = depth_setting
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "email_service", "sync", str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert time.monotonic() - started < 60
    assert result.returncode == 1, result.stderr  # refused some, did not crash (not -11)
    reasons = {line.split("\t")[0].rsplit(": ", 1)[-1]: line.split("\t")[2]
               for line in result.stdout.splitlines() if "\tReady=False\t" in line}
    assert reasons == {"deep": reason, "wide": "OutputTooLarge", "loop": "RenderBudgetExceeded",
                       "typed": "InvalidData"}, result.stdout
    assert "dev/fine\tReady=True" in result.stdout
    assert writer(store_redis).get("dev/fine") is not None
    assert SAMPLE_SECRET not in result.stdout + result.stderr
