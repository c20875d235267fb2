"""``POST /v1/webhooks/mailtrap`` against a real Redis: signed events of Mailtrap's documented
shapes (``{"events": [...]}`` and JSON Lines) record bounces and complaints like DSNs; bad or
missing signatures, malformed bodies, unknown ids, strangers and other events record nothing."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis
from starlette.testclient import TestClient

from mailcore.mailtrap_events import MAX_EVENTS, parse_events, sign, verify_signature
from mailcore.message import Recipient
from mailcore.mime import Content
from mailcore.transports.mailtrap import request_body
from service.app import create_app

from .bounce_support import events, sent_message, status_fields, suppression
from .support import RedisServer, app_settings

SECRET = "mailtrap-signing-secret-0123456789abcdef"
PATH = "/v1/webhooks/mailtrap"


@dataclass
class Hook:
    http: TestClient
    redis: redis.Redis
    prefix: str

    def post(self, body: bytes, *, signature: str | None = None,
             content_type: str = "application/json") -> Any:
        """POST ``body`` signed (or with ``signature`` as the header, whatever it is)."""
        value = sign(SECRET, body) if signature is None else signature
        headers = {b"Content-Type": content_type.encode(),
                   b"Mailtrap-Signature": value.encode("utf-8")}  # raw bytes: any header
        return self.http.post(PATH, content=body, headers=headers)


@pytest.fixture
def hook(redis_server: RedisServer) -> Iterator[Hook]:
    prefix = f"mtwh-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix, QUEUE_NAME=prefix,
                            MAILTRAP_WEBHOOK_SECRET=SECRET, WEBHOOKS_ENABLED="true")
    with TestClient(create_app(settings)) as http, redis_server.client() as client:
        yield Hook(http, client, prefix)


def mailtrap_event(kind: str, email: str, message_id: str, **extra: Any) -> dict[str, Any]:
    """An event as Mailtrap's documentation shows it."""
    return {"event": kind, "message_id": str(uuid.uuid4()), "sending_stream": "transactional",
            "email": email, "timestamp": 1732970000, "event_id": str(uuid.uuid4()),
            "category": "order", "custom_variables": {"email_service_id": message_id,
                                                      "order": "A-1"},
            "sending_domain_name": "example.com", **extra}


def test_bounce_soft_bounce_and_spam(hook: Hook) -> None:
    hard = sent_message(hook.redis, hook.prefix, ["ada@example.org"])
    soft = sent_message(hook.redis, hook.prefix, ["bob@example.org"])
    spam = sent_message(hook.redis, hook.prefix, ["carol@example.org"])
    body = orjson.dumps({"events": [
        mailtrap_event("bounce", "ada@example.org", hard, response_code=550,
                       response="550 5.1.1 The email account does not exist",
                       bounce_category="hard"),
        mailtrap_event("soft bounce", "bob@example.org", soft, response_code=452,
                       response="452 4.2.2 Mailbox full", bounce_category="soft"),
        mailtrap_event("spam", "carol@example.org", spam),
        mailtrap_event("delivery", "ada@example.org", hard),
        mailtrap_event("open", "ada@example.org", hard),
    ]})
    response = hook.post(body)
    assert response.status_code == 200 and response.json() == {"received": 5, "recorded": 3}
    assert status_fields(hook.redis, hook.prefix, hard)["bounce:ada@example.org"] == "hard"
    assert status_fields(hook.redis, hook.prefix, soft)["bounce_type"] == "soft"
    assert status_fields(hook.redis, hook.prefix, spam)["status"] == "complained"
    kinds = {(e["message_id"], e["type"], e["source"]) for e in events(hook.redis, hook.prefix)}
    assert kinds == {(hard, "message.bounced", "mailtrap"), (soft, "message.bounced", "mailtrap"),
                     (spam, "message.complained", "mailtrap")}
    [last] = [e for e in events(hook.redis, hook.prefix) if e["message_id"] == hard]
    assert last["dsn_status"] == "5.1.1"
    reasons = {a: getattr(suppression(hook.redis, hook.prefix, a), "reason", None)
               for a in ("ada@example.org", "bob@example.org", "carol@example.org")}
    assert reasons == {"ada@example.org": "hard_bounce", "bob@example.org": None,
                       "carol@example.org": "complaint"}
    # Mailtrap retries a delivery: the same events again record nothing more.
    assert hook.post(body).json() == {"received": 5, "recorded": 0}
    metrics = hook.http.get("/metrics").text
    assert re.search(r'email_mailtrap_events_total\{event="bounce",outcome="recorded"\} 1', metrics)
    assert re.search(r'email_mailtrap_events_total\{event="bounce",outcome="duplicate"\} 1',
                     metrics)


def test_json_lines_and_spelling_variants(hook: Hook) -> None:
    ids = [sent_message(hook.redis, hook.prefix, [f"u{i}@example.org"]) for i in range(3)]
    lines = [mailtrap_event("Bounce", "U0@Example.org", ids[0]),
             mailtrap_event("soft_bounce", "u1@example.org", ids[1]),
             mailtrap_event("SPAM-COMPLAINT", "u2@example.org", ids[2])]
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    response = hook.post(body, content_type="application/jsonl")
    assert response.json() == {"received": 3, "recorded": 3}
    single = sent_message(hook.redis, hook.prefix, ["solo@example.org"])
    assert hook.post(orjson.dumps(mailtrap_event("bounce", "solo@example.org", single))
                     ).json() == {"received": 1, "recorded": 1}


def test_signature_is_required(hook: Hook) -> None:
    message_id = sent_message(hook.redis, hook.prefix, ["ada@example.org"])
    body = orjson.dumps({"events": [mailtrap_event("bounce", "ada@example.org", message_id)]})
    for signature in ["", "0" * 64, sign("another-secret", body), sign(SECRET, body + b" "),
                      sign(SECRET, body).upper() + "0", "é" * 64, "z" * 10_000]:
        response = hook.post(body, signature=signature)
        assert response.status_code == 401, signature
    assert hook.http.post(PATH, content=body).status_code == 401  # no header at all
    assert status_fields(hook.redis, hook.prefix, message_id)["status"] == "sent"
    assert events(hook.redis, hook.prefix) == []


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[1, 2, 3]", b'{"events": "nope"}', b'{"other": []}', b"\xff\xfe\x00",
    b'{"events": [' * 10_000, b"null",
])
def test_malformed_bodies(hook: Hook, body: bytes) -> None:
    assert hook.post(body).status_code == 400


def test_events_that_record_nothing(hook: Hook) -> None:
    message_id = sent_message(hook.redis, hook.prefix, ["ada@example.org", "bob@example.org"])
    body = orjson.dumps({"events": [
        1, "x", None, [], {}, {"event": 5}, {"event": "bounce"},
        mailtrap_event("bounce", "mallory@example.org", message_id),  # not a recipient
        mailtrap_event("bounce", "ada@example.org", str(uuid.uuid4())),  # unknown message
        mailtrap_event("bounce", "ada@example.org", "not-a-uuid"),
        mailtrap_event("bounce", "ada@example.org", message_id.upper()),
        mailtrap_event("bounce", "x" * 300, message_id),
        mailtrap_event("bounce", 42, message_id),  # type: ignore[arg-type]
        {**mailtrap_event("bounce", "ada@example.org", message_id), "custom_variables": []},
        mailtrap_event("suspension", "ada@example.org", message_id),
        mailtrap_event("x" * 10_000, "ada@example.org", message_id),
    ]})
    response = hook.post(body)
    assert response.status_code == 200 and response.json()["recorded"] == 0
    assert status_fields(hook.redis, hook.prefix, message_id)["status"] == "sent"
    assert events(hook.redis, hook.prefix) == []


def test_event_count_is_bounded(hook: Hook) -> None:
    body = orjson.dumps({"events": [{"event": "open"}] * (MAX_EVENTS + 500)})
    assert hook.post(body).json()["received"] == MAX_EVENTS


def test_disabled_without_a_secret(redis_server: RedisServer) -> None:
    settings = app_settings(redis_server.url, KEY_PREFIX=f"mtoff-{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(settings)) as http:
        assert http.post(PATH, content=b"{}").status_code == 404


def test_the_id_the_transport_sends_is_the_one_read_back() -> None:
    """Contract: what the Mailtrap transport puts in custom_variables is what an event of that
    message carries back and names the message."""
    message_id = str(uuid.uuid4())
    content = Content(sender=Recipient(email="shop@example.com"),
                      to=[Recipient(email="ada@example.org")], cc=[], bcc=[], reply_to=None,
                      subject="s", html="", text="t", metadata={"email_service_id": "forged"})
    sent = request_body(message_id, content)
    event = {"event": "bounce", "email": "ada@example.org",
             "custom_variables": sent["custom_variables"]}
    [parsed] = parse_events(orjson.dumps({"events": [event]}))
    assert parsed.message_id == message_id  # a caller's metadata cannot name another message


def test_signature_helper_never_raises() -> None:
    for signature in [None, "", "g" * 64, "\x00" * 64, "é" * 32]:
        assert not verify_signature(SECRET, b"{}", signature)
    assert not verify_signature("", b"{}", sign("", b"{}"))
