"""API details that must agree with each other and with the README: one error code per problem,
each template listed once, RFC 3339 timestamps everywhere, and a command line whose --help is
complete, plain text and shows defaults."""

from __future__ import annotations

import argparse
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from email_service.cli import _parser
from mailcore.deadletters import DeadLetter
from mailcore.rendering import TemplateSource
from mailcore.store import TemplateStoreWriter
from mailcore.templates import builtin_templates_dir, load_builtin_templates
from mailcore.timestamps import rfc3339, rfc3339_from_iso
from mailcore.tokens import mint_token
from service.app import create_app
from service.openapi import ERROR_CODES, openapi_document

from .support import EMAIL_SERVICE, REPO, TEST_SECRET, RedisServer, app_settings

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='details')}"}

#: Fails on data its schema admits (x = 0): a template error, not a data error.
DIVIDER = TemplateSource(
    name="divider", subject="{{ 10 // x }}", html="<p>{{ x }}</p>",
    variables={"type": "object", "required": ["x"], "properties": {"x": {"type": "integer"}}},
    sample_data={"x": 1})


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    """An ingress whose template store holds a synced copy of password_reset (as `make dev`
    writes it) and `divider`, both in the `default` namespace."""
    prefix = f"details-{uuid.uuid4().hex[:8]}"
    writer = TemplateStoreWriter(redis_server.client(), prefix)
    builtin = load_builtin_templates(builtin_templates_dir(None))["password_reset"]
    origin = {"kind": "EmailTemplate", "namespace": "default"}
    writer.put("default/password_reset", builtin, {**origin, "name": "password_reset"})
    writer.put("default/divider", DIVIDER, {**origin, "name": "divider"})
    writer.close()
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix, QUEUE_NAME=prefix)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_data_that_misses_the_schema_is_invalid_data_when_sending_and_rendering(
    client: TestClient,
) -> None:
    bad = {"email": "a@example.com"}  # no code
    sent = client.post("/v1/messages", headers=AUTH,
                       json={"template": "password_reset", "to": "a@example.com", "data": bad})
    rendered = client.post("/v1/templates/password_reset/render", headers=AUTH,
                           json={"data": bad})
    assert sent.status_code == rendered.status_code == 422
    assert sent.json()["error"] == rendered.json()["error"] == "invalid_data"
    assert sent.json()["details"] == rendered.json()["details"]
    assert rendered.json()["details"][0]["field"] == "data"

    # A template that fails on admitted data is another problem, with its own code.
    broken = client.post("/v1/templates/divider/render", headers=AUTH, json={"data": {"x": 0}})
    assert broken.status_code == 422 and broken.json()["error"] == "render_error"


def test_error_codes_are_all_documented() -> None:
    sources = "\n".join(path.read_text() for folder in ("service", "mailcore")
                        for path in (REPO / folder).rglob("*.py"))
    used = set(re.findall(r'ApiError\(\d+, "([a-z_]+)"', sources))
    used |= set(re.findall(r'\bcode = "([a-z_]+)"', sources))
    used |= {"render_error", "headers_too_large"}  # built as variables / raw bytes
    assert used <= set(ERROR_CODES), used - set(ERROR_CODES)
    readme = (REPO / "README.md").read_text()
    missing = [code for code in ERROR_CODES if f"`{code}`" not in readme]
    assert missing == []


def test_each_template_is_listed_once_under_the_name_callers_use(client: TestClient) -> None:
    listed = client.get("/v1/templates", headers=AUTH).json()["templates"]
    names = [template["name"] for template in listed]
    assert len(names) == len(set(names)), names
    assert {"password_reset", "order_confirmation", "divider"} <= set(names)
    assert not any("/" in name for name in names), names
    by_name = {template["name"]: template for template in listed}
    assert by_name["password_reset"]["source"]["namespace"] == "default"
    assert RFC3339.fullmatch(by_name["divider"]["source"]["updated_at"])
    assert by_name["order_confirmation"]["source"] == {"kind": "builtin"}
    # The qualified name still works for sending and reading.
    assert client.get("/v1/templates/default/divider", headers=AUTH).status_code == 200


def test_timestamps_are_rfc3339_in_status_timeline_and_dead_letters(client: TestClient) -> None:
    answer = client.post("/v1/messages", headers=AUTH, json={
        "template": "password_reset", "to": "a@example.com",
        "data": {"email": "a@example.com", "code": "1"}})
    assert answer.status_code == 202
    status = client.get(f"/v1/messages/{answer.json()['id']}", headers=AUTH).json()
    stamps = [status["created_at"], status["updated_at"],
              *(event["at"] for event in status["timeline"])]
    assert stamps and all(RFC3339.fullmatch(stamp) for stamp in stamps), stamps

    letter = DeadLetter(id="x", redis_id="r", died_at=1_764_000_000.5, template=None,
                        recipients=[], status=None, attempts=1, last_error=None)
    assert letter.as_dict()["died_at"] == "2025-11-24T16:00:00.500Z"


def test_the_openapi_document_says_rfc3339() -> None:
    schemas = openapi_document()["components"]["schemas"]
    stamps = [schemas["MessageStatus"]["properties"][name] for name in ("created_at", "updated_at")]
    stamps += [schemas["TimelineEvent"]["properties"]["at"],
               schemas["DeadLetter"]["properties"]["died_at"]]
    assert all(s == {**s, "type": "string", "format": "date-time"} for s in stamps), stamps


def test_rfc3339_forms_agree() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_from_iso("2026-11-30T13:09:19.123456+00:00") == "2026-11-30T13:09:19.123Z"
    assert rfc3339_from_iso("2026-11-30T14:09:19+01:00") == "2026-11-30T13:09:19.000Z"
    assert rfc3339_from_iso("") is None


# --- the command line ------------------------------------------------------------------------

def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


def test_every_option_has_help_and_shows_its_default_in_plain_text() -> None:
    commands = list(_commands(_parser()))
    assert len(commands) > 10
    for path, parser in commands:
        text = parser.format_help()
        assert "``" not in text and ":class:" not in text, (path, text)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            where = (*path, action.dest)
            assert action.help and action.help != argparse.SUPPRESS, where
            if action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings:
                shown = parser._get_formatter()._format_action(action)
                assert "default" in shown, (where, shown)
    dev = dict(commands)[("dev",)].format_help()
    assert "(default: 8000)" in dev


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EMAIL_SERVICE, *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env=env, check=False)


def test_version_flag() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"email-service \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


def test_dlq_list_says_when_there_are_none(redis_server: RedisServer, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_server.url,
                           "QUEUE_NAME": f"empty-{uuid.uuid4().hex[:8]}",
                           "SECRETS_DIR": str(tmp_path), "HOME": str(tmp_path)}
    result = _run("dlq", "list", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no dead letters\n"
