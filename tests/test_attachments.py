"""Attachments at the door (the real ingress app on a real Redis): hostile names, spoofed and
executable types, bad base64, limits — each refused naming the field, nothing queued."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from mailcore.config import ConfigError, Settings
from mailcore.tokens import mint_token
from service.app import create_app

from .support import TEST_SECRET, RedisServer

AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='files')}"}
PDF = base64.b64encode(b"%PDF-1.4\n" + bytes(range(256))).decode()
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    settings = Settings.from_env({
        "REDIS_URL": redis_server.url, "JWT_SECRET": TEST_SECRET,
        "QUEUE_NAME": f"files-{uuid.uuid4().hex[:8]}",
        "KEY_PREFIX": f"files-{uuid.uuid4().hex[:8]}",
        "EVENTS_ENABLED": "false", "SECRETS_DIR": "/nonexistent", "RATE_LIMIT": "off",
        "RESET_LIMIT_PER_RECIPIENT": "off", "ATTACHMENTS_MAX_COUNT": "3",
        "ATTACHMENT_MAX_BYTES": "1000", "ATTACHMENTS_MAX_TOTAL_BYTES": "1500"})
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def message(*files: Any) -> dict[str, Any]:
    return {"template": "password_reset", "to": "ada@example.com",
            "data": {"email": "ada@example.com", "code": "123456"}, "attachments": list(files)}


def pdf(**changes: Any) -> dict[str, Any]:
    return {"filename": "terms.pdf", "content": PDF, "content_type": "application/pdf",
            **changes}


def refused(client: TestClient, body: dict[str, Any], status: int = 422) -> dict[str, Any]:
    response = client.post("/v1/messages", json=body, headers=AUTH)
    assert response.status_code == status, response.text
    return dict(response.json())


def test_files_and_inline_images_are_accepted(client: TestClient) -> None:
    body = message(pdf(filename="Résumé  2024.pdf"),
                   {"filename": "logo.png", "content": PNG, "content_type": "IMAGE/PNG",
                    "content_id": "logo@shop", "disposition": "inline"})
    response = client.post("/v1/messages", json=body, headers=AUTH)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("name", [
    "../etc/passwd", "..\\boot.ini", "a/b.pdf", "..", "..hidden.pdf", "ok\x00.pdf", "ok\r\n.pdf",
    "ok\x1b.pdf", "invoice\u202efdp.exe", "invoice\u2066.pdf", "zero\u200bwidth.pdf",
    "a" * 201 + ".pdf", " leading.pdf", "trailing.pdf ", "dot.pdf.", "   ", "",
])
def test_hostile_file_names_are_refused(client: TestClient, name: str) -> None:
    answer = refused(client, message(pdf(filename=name)))
    assert answer["details"][0]["field"] == "attachments.0.filename", answer


@pytest.mark.parametrize(("changes", "field"), [
    ({"filename": "invoice.pdf.exe"}, "filename"),  # double extension
    ({"filename": "run.JS"}, "filename"),
    ({"filename": "setup.msi", "content_type": "application/pdf"}, "filename"),  # spoofed type
    ({"filename": "macro.docm"}, "filename"),
    ({"content_type": "application/x-msdownload"}, "content_type"),
    ({"content_type": "application/java-archive"}, "content_type"),
    ({"content_type": "text/javascript"}, "content_type"),
    ({"content_type": "application/pdf; name=x.exe"}, "content_type"),
    ({"content_type": "application/pdf\r\nX-Evil: 1"}, "content_type"),
    ({"content_type": "pdf"}, "content_type"),
])
def test_executables_by_type_or_name_are_refused(
        client: TestClient, changes: dict[str, str], field: str) -> None:
    answer = refused(client, message(pdf(**changes)))
    assert answer["details"][0]["field"] == f"attachments.0.{field}", answer


@pytest.mark.parametrize("payload", [
    b"MZ\x90\x00" + b"\0" * 60, b"\x7fELF\x02\x01\x01", b"\xcf\xfa\xed\xfe\x07\x00",
    b"\xca\xfe\xba\xbe\x00\x00", b"#!/bin/sh\nrm -rf /\n"])
def test_executable_content_under_a_harmless_name_is_refused(
        client: TestClient, payload: bytes) -> None:
    answer = refused(client, message(pdf(content=base64.b64encode(payload).decode())))
    assert answer["details"][0]["field"] == "attachments.0.content", answer
    assert "executable" in answer["details"][0]["message"]


@pytest.mark.parametrize("content", [
    "not base64!", "QUJDRA", "QUJD RA==", "QUJD\nRA==", "QUJDRA==QQ==", "QUJD-_8=", 42,
    "é" * 8])
def test_bad_base64_is_refused(client: TestClient, content: Any) -> None:
    answer = refused(client, message(pdf(content=content)))
    assert answer["details"][0]["field"].startswith("attachments.0"), answer


@pytest.mark.parametrize(("file", "field"), [
    ({"disposition": "inline"}, "attachments.0"),  # no content_id
    ({"disposition": "inline", "content_id": "x"}, "attachments.0"),  # not an image
    ({"content_id": "<bad id>"}, "attachments.0.content_id"),
    ({"disposition": "hidden"}, "attachments.0.disposition"),
    ({"size": 3}, "attachments.0.size"),  # unknown field
])
def test_malformed_file_entries_are_refused(
        client: TestClient, file: dict[str, Any], field: str) -> None:
    answer = refused(client, message(pdf(**file)))
    assert answer["details"][0]["field"] == field, answer


def test_a_content_id_may_be_used_once(client: TestClient) -> None:
    image = {"filename": "a.png", "content": PNG, "content_type": "image/png",
             "content_id": "same", "disposition": "inline"}
    answer = refused(client, message(image, {**image, "filename": "b.png"}))
    assert answer["details"][0]["field"] == "attachments"


def test_limits_on_count_size_and_total(client: TestClient) -> None:
    answer = refused(client, message(pdf(), pdf(), pdf(), pdf()))
    assert answer["error"] == "invalid_request"
    assert answer["details"] == [{"field": "attachments", "message": "at most 3 files"}]
    big = base64.b64encode(b"%PDF" + b"x" * 997).decode()  # 1001 bytes
    answer = refused(client, message(pdf(), pdf(content=big)), 413)
    assert answer["error"] == "attachment_too_large"
    assert answer["details"][0]["field"] == "attachments.1.content"
    assert "ATTACHMENT_MAX_BYTES" in answer["details"][0]["message"]
    fits = base64.b64encode(b"%PDF" + b"x" * 796).decode()  # 800 bytes each
    answer = refused(client, message(pdf(content=fits), pdf(content=fits)), 413)
    assert answer["details"][0]["field"] == "attachments"
    assert "ATTACHMENTS_MAX_TOTAL_BYTES" in answer["details"][0]["message"]
    assert refused(client, message(pdf(), [1]))["details"][0]["field"].startswith(
        "attachments.1")


def test_the_limits_must_fit_the_body_limit() -> None:
    base = {"SECRETS_DIR": "/nonexistent"}
    limits = Settings.from_env(base).limits
    assert limits.attachments_max_total_bytes == (1024 * 1024 - 32768) * 3 // 4 == 761856
    assert limits.attachment_max_bytes == 524288
    small = Settings.from_env({**base, "MAX_BODY_BYTES": "65536"}).limits
    assert small.attachments_max_total_bytes == small.attachment_max_bytes == 24576
    with pytest.raises(ConfigError, match=r"ATTACHMENTS_MAX_TOTAL_BYTES: .* raise MAX_BODY_BYTES"):
        Settings.from_env({**base, "ATTACHMENTS_MAX_TOTAL_BYTES": "1000000"})
    with pytest.raises(ConfigError, match="ATTACHMENTS_MAX_COUNT"):
        Settings.from_env({**base, "ATTACHMENTS_MAX_COUNT": "21"})


# --- Messages with their own content (no stored template) --------------------------------------

def content(**fields: Any) -> dict[str, Any]:
    return {"to": "ada@example.com", **fields}


@pytest.mark.parametrize(("body", "field", "words"), [
    (content(), "template", "required, unless"),
    (content(html="<p>x</p>"), "subject", "required for a message without a template"),
    (content(subject="s", html="<p>x</p>", mjml="<mjml></mjml>"), "mjml", "not both"),
    (content(template="password_reset", subject="s", html="<p>x</p>"), "html", "not allowed"),
    (content(subject="s", text="x", data={"a": 1}), "data", "only for templates"),
    (content(subject="s", text="x", locale="de"), "locale", "only for templates"),
    (content(subject="s", html=""), "html", "at least 1 character"),
    (content(subject="s", mjml="<p>not mjml</p>"), "mjml", "<mjml> root"),
    (content(subject="s", mjml="<mjml><mj-body>" + "<mj-wrapper>" * 70 + "</mj-body></mjml>"),
     "mjml", "nest more than"),
    (content(subject="s", html=7), "html", "string"),
    (content(subject="a\r\nBcc: x@example.com", text="x"), "subject", "CR or LF"),
])
def test_content_without_a_template_is_checked_at_the_door(
        client: TestClient, body: dict[str, Any], field: str, words: str) -> None:
    answer = refused(client, body)
    assert answer["details"][0]["field"] == field, answer
    assert words in answer["details"][0]["message"], answer


def test_content_longer_than_a_rendered_part_may_be_is_refused(redis_server: RedisServer) -> None:
    settings = Settings.from_env({
        "REDIS_URL": redis_server.url, "JWT_SECRET": TEST_SECRET, "EVENTS_ENABLED": "false",
        "KEY_PREFIX": f"files-{uuid.uuid4().hex[:8]}", "SECRETS_DIR": "/nonexistent",
        "RENDER_MAX_BYTES": "2048"})
    with TestClient(create_app(settings)) as small:
        answer = refused(small, content(subject="s", text="x" * 2049))
    assert answer["details"] == [{"field": "text", "message": "at most 2048 characters"}]


# --- metadata ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("metadata", "field"), [
    ({"order": {"id": 1}}, "metadata.order"),  # nested
    ({"order": 7}, "metadata.order"),  # not a string
    ({"order": ["a"]}, "metadata.order"),
    ({"order": None}, "metadata.order"),
    ({f"k{i}": "v" for i in range(21)}, "metadata"),  # too many
    ({"k" * 41: "v"}, "metadata.kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk.[key]"),
    ({"bad key": "v"}, "metadata.bad key.[key]"),
    ({"order": "x" * 501}, "metadata.order"),  # too long
    ({"order": "a\r\nb"}, "metadata.order"),
    ({"email_service_id": "forged"}, "metadata"),  # ours
    ("order=1", "metadata"),
])
def test_bad_metadata_is_refused_naming_the_field(
        client: TestClient, metadata: Any, field: str) -> None:
    answer = refused(client, {**message(), "metadata": metadata})
    assert answer["details"][0]["field"] == field, answer


def test_metadata_is_kept_with_the_message_and_shown_in_its_status(client: TestClient) -> None:
    metadata = {"order_id": "A-1", "customer.tier": "gold", "note": "ünïcode ok"}
    response = client.post("/v1/messages", json={**message(), "metadata": metadata},
                           headers=AUTH)
    assert response.status_code == 202, response.text
    status = client.get(f"/v1/messages/{response.json()['id']}", headers=AUTH).json()
    assert status["metadata"] == metadata
    plain = client.post("/v1/messages", json=message(), headers=AUTH).json()["id"]
    assert client.get(f"/v1/messages/{plain}", headers=AUTH).json()["metadata"] == {}


# --- Staging: redirect-all (the allow-list and sandbox run end to end in test_mailtrap_delivery) --

def test_redirect_all_sends_to_one_address_and_the_status_says_whom_it_replaced(
        redis_server: RedisServer) -> None:
    settings = Settings.from_env({
        "REDIS_URL": redis_server.url, "JWT_SECRET": TEST_SECRET, "EVENTS_ENABLED": "false",
        "KEY_PREFIX": f"files-{uuid.uuid4().hex[:8]}", "SECRETS_DIR": "/nonexistent",
        "QUEUE_NAME": f"files-{uuid.uuid4().hex[:8]}", "REDIRECT_ALL_TO": "QA@Staging.Example.com",
        "RESET_LIMIT_PER_RECIPIENT": "off"})
    with TestClient(create_app(settings)) as staging:
        body = {**message(), "cc": "b@example.com", "bcc": "c@example.com"}
        accepted = staging.post("/v1/messages", json=body, headers=AUTH)
        assert accepted.status_code == 202, accepted.text
        status = staging.get(f"/v1/messages/{accepted.json()['id']}", headers=AUTH).json()
    assert status["recipients"] == ["QA@staging.example.com"]
    assert status["redirected_from"] == ["ada@example.com", "b@example.com", "c@example.com"]


@pytest.mark.parametrize(("env", "message"), [
    ({"RECIPIENT_ALLOWLIST": "not an address@"}, "RECIPIENT_ALLOWLIST"),
    ({"REDIRECT_ALL_TO": "nobody"}, "REDIRECT_ALL_TO"),
])
def test_bad_safeguard_settings_stop_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"SECRETS_DIR": "/nonexistent", **env})
