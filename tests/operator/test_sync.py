"""``email-service sync``: templates/ and EmailTemplate YAML into the store without a cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
