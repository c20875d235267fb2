"""Hostile input, by class (types, sizes, encodings, nesting), on the lifecycle's input paths
that had only a few shapes tested: ``stream`` and ``send_at`` on batch items, the suppression
list's query (``limit``, ``cursor``, ``reason``, ``scope``), the dead-letter lists' ``limit`` and
a ``Content-Length`` too long to be a number. Each is refused with its 4xx and writes nothing;
none may become a 500 (``?limit=`` of 5000 digits and ``?limit=²`` did)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from mailcore.lifecycle import stream_key
from mailcore.mailtrap_events import sign
from mailcore.schedule import schedule_key
from mailcore.tokens import mint_token
from mailcore.unsubscribe import make_token, verify_token
from service.app import create_app
from service.query import bounded_int, declared_length

from .support import TEST_SECRET, RedisServer, app_settings

MAILTRAP_SECRET = "mailtrap-signing-secret-0123456789abcdef"
UNSUBSCRIBE_SECRET = "unsubscribe-secret-0123456789abcdef0123"
ADMIN = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='ops', scope='email:admin')}"}


class Door:
    def __init__(self, client: TestClient, redis: Any, prefix: str, queue: str) -> None:
        self.client, self.redis, self.prefix, self.queue = client, redis, prefix, queue

    def events(self) -> int:
        return int(self.redis.xlen(stream_key(self.prefix)))

    def nothing_written(self) -> bool:
        return bool(self.redis.zcard(schedule_key(self.prefix)) == 0
                and self.redis.llen(f"dramatiq:{self.queue}") == 0
                and self.redis.llen(f"dramatiq:{self.queue}-bulk") == 0)


@pytest.fixture(scope="module")
def door(redis_server: RedisServer) -> Iterator[Door]:
    queue, prefix = f"hl-{uuid.uuid4().hex[:8]}", f"hl-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix, QUEUE_NAME=queue,
                            BULK_QUEUE_NAME=f"{queue}-bulk", RESET_LIMIT_PER_RECIPIENT="off",
                            WEBHOOKS_ENABLED="true", MAILTRAP_WEBHOOK_SECRET=MAILTRAP_SECRET,
                            PUBLIC_BASE_URL="https://mail.example.com",
                            UNSUBSCRIBE_SECRETS=UNSUBSCRIBE_SECRET,
                            WEBHOOKS_ALLOWED_HOSTS="hooks.example.com")
    redis = redis_server.client()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Door(client, redis, prefix, queue)
    redis.close()


def _message(**extra: Any) -> dict[str, Any]:
    return {"template": "password_reset", "to": "h@example.org",
            "data": {"email": "h@example.org", "code": "1"}, **extra}


def _nested(depth: int) -> bytes:
    return b"[" * depth + b'"bulk"' + b"]" * depth


# --- stream and send_at on a batch's items ------------------------------------------------------

#: JSON text of hostile values, by class.
HOSTILE = {
    # Types.
    "number": b"1", "float": b"1e308", "true": b"true", "object": b'{"name": "bulk"}',
    "list": b'["bulk"]',
    # Sizes.
    "empty": b'""', "huge": b'"' + b"b" * 200_000 + b'"',
    # Encodings.
    "nul": b'"bulk\\u0000"', "fullwidth": b'"\\uff42\\uff55\\uff4c\\uff4b"',
    "zero-width": b'"bulk\\u200b"',
    "lone-surrogate": b'"\\ud800"', "latin-1": b'"bulk\xe9"',
    "arabic-digits": '"\u0662\u0660\u0663\u0660-01-31T09:00:00Z"'.encode(),
    # Nesting.
    "nested": _nested(20), "deep": _nested(5000),
}


@pytest.mark.parametrize("field", ["stream", "send_at"])
@pytest.mark.parametrize("shape", list(HOSTILE))
def test_hostile_stream_and_send_at_on_a_batch_item(door: Door, field: str, shape: str) -> None:
    good = orjson.dumps(_message())
    bad = orjson.dumps(_message())[:-1] + b', "' + field.encode() + b'": ' + HOSTILE[shape] + b"}"
    body = b'{"messages": [' + good + b", " + bad + b"]}"
    answer = door.client.post("/v1/messages/batch", content=body,
                              headers={**ADMIN, "Content-Type": "application/json"})
    assert answer.status_code in (400, 413, 422), answer.text
    refused = answer.json()
    if answer.status_code == 422:
        assert refused["details"][0]["field"] in (f"messages.1.{field}", "messages.1"), refused
    else:
        assert refused["error"] in ("malformed_json", "payload_too_large"), refused
    assert door.nothing_written()  # all or nothing: the good item is not accepted either


@pytest.mark.parametrize("shape", ["nested", "deep", "lone-surrogate", "latin-1", "zero-width"])
@pytest.mark.parametrize("field", ["stream", "send_at"])
def test_hostile_stream_and_send_at_on_a_single_send(door: Door, field: str, shape: str) -> None:
    body = orjson.dumps(_message())[:-1] + b', "' + field.encode() + b'": ' + HOSTILE[shape] + b"}"
    answer = door.client.post("/v1/messages", content=body,
                              headers={**ADMIN, "Content-Type": "application/json"})
    assert answer.status_code in (400, 422), answer.text
    assert door.nothing_written()


# --- the suppression list's query ----------------------------------------------------------------

def _cursor(member: bytes) -> str:
    return base64.urlsafe_b64encode(member).decode().rstrip("=")


@pytest.mark.parametrize("query", [
    # limit: types, sizes, encodings.
    "limit=-1", "limit=1.5", "limit=1e3", "limit=0x10", "limit=%20100", "limit=100%00",
    "limit=" + "9" * 5000, "limit=" + "9" * 20, "limit=%C2%B2", "limit=%D9%A1",
    "limit=%EF%BC%91",
    # cursor: tampered (valid base64 of no member, of bytes that are no UTF-8, another scope's),
    # sizes, encodings.
    "cursor=" + _cursor(b"no-colon-here"), "cursor=" + _cursor(b"global:\xff\xfe"),
    "scope=bulk&cursor=" + _cursor(b"global:a@example.com"),
    "scope=global&cursor=" + _cursor(b"bulk:a@example.com"),
    "cursor=" + _cursor(b"global:a@example.com") + "%3D%3D", "cursor=" + "A" * 801,
    "cursor=" + "A" * 50_000, "cursor=%F0%9F%98%80", "cursor=Z2xv%00YmFs",
    "cursor=Z2xvYmFsOmFAZXhhbXBsZS5jb20%0A",
    # reason and scope: values, sizes, encodings.
    "reason=HARD_BOUNCE", "reason=hard_bounce%00", "reason=" + "x" * 50_000,
    "reason=%EF%BD%8D%EF%BD%81%EF%BD%8E%EF%BD%95%EF%BD%81%EF%BD%8C", "reason=manual%E2%80%8B",
    "scope=Global", "scope=bulk:x", "scope=%C4%B1", "scope=" + "b" * 50_000, "scope=bulk%0A",
    "scope=%FF",
])
def test_hostile_suppression_list_queries_are_422(door: Door, query: str) -> None:
    answer = door.client.get(f"/v1/suppressions?{query}", headers=ADMIN)
    assert answer.status_code == 422, (query[:80], answer.text)
    assert answer.json()["error"] == "invalid_request"
    assert answer.json()["details"][0]["field"] in ("limit", "cursor", "reason", "scope")


@pytest.mark.parametrize("query", [
    "reason=HARD_BOUNCE", "reason=hard_bounce%00", "reason=" + "x" * 50_000, "reason=",
    "reason=manual%E2%80%8B", "scope=Global", "scope=bulk:x", "scope=%C4%B1", "scope=bulk%0A",
    "scope=" + "b" * 50_000, "scope=%FF", "scope=",
])
def test_hostile_suppression_export_queries_are_422(door: Door, query: str) -> None:
    answer = door.client.get(f"/v1/suppressions/export?{query}", headers=ADMIN)
    assert answer.status_code == 422, (query[:80], answer.text)
    assert answer.json()["details"][0]["field"] in ("reason", "scope")


def test_a_forged_but_well_formed_cursor_only_moves_the_page(door: Door) -> None:
    """A cursor is an index position, not a secret: any member-shaped one pages from there."""
    for member in (b"global:", b"global:\x00", b"global:" + "é".encode() * 100, b"zzz:zzz"):
        answer = door.client.get(f"/v1/suppressions?cursor={_cursor(member)}", headers=ADMIN)
        assert answer.status_code == 200, answer.text
        assert answer.json()["suppressions"] == []


@pytest.mark.parametrize("path", ["/v1/dead-letters", "/v1/webhooks/dead-letters"])
@pytest.mark.parametrize("limit", ["9" * 5000, "%C2%B2", "%D9%A1", "%EF%BC%91", "-1", "0", "1001",
                                   "1e3", ""])
def test_hostile_dead_letter_limits_are_422(door: Door, path: str, limit: str) -> None:
    answer = door.client.get(f"{path}?limit={limit}", headers=ADMIN)
    assert answer.status_code == 422, (limit[:40], answer.text)
    assert answer.json()["details"][0]["field"] == "limit"


@pytest.mark.parametrize("path", ["/v1/suppressions", "/v1/suppressions/import", "/v1/webhooks"])
@pytest.mark.parametrize(("length", "status"), [("9" * 5000, 413), ("%C2%B2", 400),
                                                ("1" + "0" * 30, 413)])
def test_content_lengths_that_are_no_size(door: Door, path: str, length: str,
                                          status: int) -> None:
    request = door.client.build_request("POST", path, content=b"{}", headers=ADMIN)
    request.headers["Content-Length"] = httpx.URL(f"/?v={length}").params["v"]
    answer = door.client.send(request)
    assert answer.status_code == status, answer.text


def test_bounded_int_and_declared_length() -> None:
    assert bounded_int("0005", 1, 1000) == 5 and bounded_int("1000", 1, 1000) == 1000
    for bad in ("", "0", "1001", "\u00b2", "\u0661", "\uff11", "-1", "+1", " 1", "1 ", "9" * 5000):
        assert bounded_int(bad, 1, 1000) is None, bad
    assert declared_length("0") == 0 and declared_length("00012") == 12
    assert declared_length("9" * 5000) == 10 ** 16 and declared_length("²") is None
    assert declared_length("-1") is None and declared_length("") is None


# --- a trailing newline: ``$`` matched before it, so "bulk\n" passed as a scope ------------------

@pytest.mark.parametrize("entry", [
    {"address": "nl@example.com", "reason": "manual", "scope": "bulk\n"},
    {"address": "nl@example.com", "reason": "manual", "expires_at": "2999-01-01T00:00:00Z\n"},
    {"address": "nl@example.com", "reason": "manual", "scope": "global\n"},
])
def test_a_trailing_newline_is_no_scope_or_time(door: Door, entry: dict[str, str]) -> None:
    answer = door.client.post("/v1/suppressions", json=entry, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert door.client.get("/v1/suppressions", headers=ADMIN).json()["suppressions"] == []
    imported = door.client.post("/v1/suppressions/import", headers=ADMIN,
                                content=orjson.dumps(entry) + b"\n")
    assert imported.status_code == 422, imported.text
    assert door.client.get("/v1/suppressions/nl@example.com?scope=bulk%0A",
                           headers=ADMIN).status_code == 422


def test_a_trailing_newline_is_no_unsubscribe_token_scope_or_message_id() -> None:
    secret = "unsubscribe-secret-0123456789abcdef"
    token = make_token(secret, "ada@example.com", "bulk", "m-1")
    assert verify_token([secret], token) is not None
    assert verify_token([secret], token + "\n") is None
    assert verify_token([secret], make_token(secret, "ada@example.com", "bulk", "m-1")) is not None
    with pytest.raises(ValueError):
        make_token(secret, "ada@example.com", "bulk\n", "m-1")
    with pytest.raises(ValueError):
        make_token(secret, "ada@example.com", "bulk", "m-1\n")


# --- unsubscribe tokens, webhook registrations and Mailtrap bodies over HTTP ---------------------

@pytest.mark.parametrize("token", ["%FF", "%00", "%0A", "\u00e9" * 30, "A" * 30_000, "a.b.c",
                                   "%F0%9F%98%80.AAAAAAAAAAAAAAAAAAAAAA"])
def test_hostile_unsubscribe_tokens_get_the_one_invalid_page(door: Door, token: str) -> None:
    before = door.events()
    valid = make_token(UNSUBSCRIBE_SECRET, "ada@example.com", "bulk", "m-1")
    for path in (f"/u/{token}", f"/u/{valid}{token}" if len(token) < 100 else f"/u/{token}"):
        for method in ("GET", "POST"):
            answer = door.client.request(method, path, content=b"List-Unsubscribe=One-Click")
            assert answer.status_code == 404 and "not valid" in answer.text, (path[:60], method)
    assert door.events() == before


@pytest.mark.parametrize(("body", "status"), [
    # Encodings.
    (b'{"url": "https://hooks.example.com/", "events": ["sent"], "description": "\\ud800"}',
     400),
    (b'{"url": "https://hooks.example.com/\\u0000", "events": ["sent"]}', 422),
    ('{"url": "https://hooks.example.com/\u00e9", "events": ["sent"]}'.encode(), 422),
    (b"\xef\xbb\xbf{}", 400),
    # Values a URL parser chokes on.
    (b'{"url": "https://hooks.example.com:99999/", "events": ["sent"]}', 422),
    (b'{"url": "https://hooks.example.com:-1/", "events": ["sent"]}', 422),
    (b'{"url": "https://[hooks.example.com/", "events": ["sent"]}', 422),
    # Nesting.
    (b'{"url": "https://hooks.example.com/", "events": ' + _nested(5000) + b"}", 400),
    (b'{"url": "https://hooks.example.com/", "events": ' + _nested(20) + b"}", 422),
])
def test_hostile_webhook_registrations(door: Door, body: bytes, status: int) -> None:
    answer = door.client.post("/v1/webhooks", content=body,
                              headers={**ADMIN, "Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert door.client.get("/v1/webhooks", headers=ADMIN).json()["endpoints"] == []


def _mailtrap_event(**fields: Any) -> dict[str, Any]:
    return {"event": "bounce", "email": "ada@example.org",
            "custom_variables": {"email_service_id": str(uuid.uuid4())}, **fields}


@pytest.mark.parametrize(("body", "status"), [
    (b'{"events": [{"event": "bounce", "custom_variables": {"email_service_id": '
     + _nested(5000) + b"}}]}", 400),
    (b"\xef\xbb\xbf" + orjson.dumps({"events": []}), 400),
    (b'{"events": [], "events": 5}', 400),
    (orjson.dumps({"events": []}) + b" " * 2_000_000, 413),
    (orjson.dumps({"events": [_mailtrap_event(email="ada\x00@example.org")]}), 200),
    (orjson.dumps({"events": [_mailtrap_event(email="ada@\u00c9XAMPLE.org")]}), 200),
    (orjson.dumps({"events": [_mailtrap_event(response="5.1.1 " + "x" * 900_000)]}), 200),
    (b'{"events": [{"event": "bounce", "response_code": ' + b"5" * 5000 + b"}]}", 400),
    (orjson.dumps({"events": [_mailtrap_event(response_code=1e308)]}), 200),
    (orjson.dumps({"events": [_mailtrap_event(custom_variables={"email_service_id": [1]})]}),
     200),
])
def test_hostile_mailtrap_bodies_record_nothing(door: Door, body: bytes, status: int) -> None:
    before = door.events()
    answer = door.client.post("/v1/webhooks/mailtrap", content=body, headers={
        "Content-Type": "application/json", "Mailtrap-Signature": sign(MAILTRAP_SECRET, body)})
    assert answer.status_code == status, answer.text[:300]
    if status == 200:
        assert answer.json()["recorded"] == 0
    assert door.events() == before
