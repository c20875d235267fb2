"""A locale from each entry point to the delivered email: the native API, batches, previews,
both legacy endpoints (body field or Accept-Language) and Redis events. Real ingress and worker
processes, redis-server and an SMTP server; the built-in templates ship a German locale."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from mailcore.tokens import mint_token

from .conftest import Stack
from .support import RedisServer, SMTPServer, wait_for

pytestmark = pytest.mark.slow

GERMAN_RESET = "Ihr Code zum Zurücksetzen des Passworts bei Shop"
ENGLISH_RESET = "Your Shop password reset code"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.org"


def auth(secret: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(secret, subject='locales')}", **headers}


def subject(smtp: SMTPServer, to: str) -> str:
    received = wait_for(lambda: smtp.handler.to(to), message=f"the email to {to}")
    return str(received[0].message["Subject"])


def reset(to: str, **extra: Any) -> dict[str, Any]:
    return {"template": "password_reset", "to": to, "data": {"email": to, "code": "4711"},
            **extra}


def test_native_api_and_batch(stack: Stack, smtp_server: SMTPServer, secret: str) -> None:
    one = unique("native")
    answer = httpx.post(f"{stack.base_url}/v1/messages", json=reset(one, locale="de-AT"),
                        headers=auth(secret))
    assert answer.status_code == 202, answer.text
    german, english, fallback = unique("batch-de"), unique("batch-en"), unique("batch-fr")
    answer = httpx.post(f"{stack.base_url}/v1/messages/batch", headers=auth(secret), json={
        "messages": [reset(german, locale="de"), reset(english), reset(fallback, locale="fr")]})
    assert answer.status_code == 202, answer.text
    assert subject(smtp_server, one) == GERMAN_RESET
    assert subject(smtp_server, german) == GERMAN_RESET
    assert subject(smtp_server, english) == ENGLISH_RESET
    assert subject(smtp_server, fallback) == ENGLISH_RESET  # no French: the default
    body = smtp_server.handler.to(one)[0].message.get_body(preferencelist=("plain",))
    assert body is not None and "Passwort" in body.get_content()


def test_preview(stack: Stack, secret: str) -> None:
    answer = httpx.post(f"{stack.base_url}/v1/templates/password_reset/render",
                        json={"locale": "de-CH"}, headers=auth(secret))
    assert answer.status_code == 200, answer.text
    assert answer.json()["subject"] == GERMAN_RESET


def test_legacy_reset_code(stack: Stack, smtp_server: SMTPServer, secret: str) -> None:
    by_field, by_header, preferred, none = (unique(p) for p in ("field", "header", "pref", "no"))
    url = f"{stack.base_url}/email-service/send-reset-code"
    for to, body_locale, header in (
        (by_field, "de", None),
        (by_header, None, "de-DE,de;q=0.9,en;q=0.5"),
        # French is preferred but the template has none: the next one it has.
        (preferred, None, "fr-FR, fr;q=0.9, de;q=0.8, *;q=0.1"),
        (none, None, None),
    ):
        body: dict[str, Any] = {"email": to, "code": "4711"}
        if body_locale:
            body["locale"] = body_locale
        headers = auth(secret, **({"Accept-Language": header} if header else {}))
        answer = httpx.post(url, json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"message": "Password reset code sent successfully"}
    assert subject(smtp_server, by_field) == GERMAN_RESET
    assert subject(smtp_server, by_header) == GERMAN_RESET
    assert subject(smtp_server, preferred) == GERMAN_RESET
    assert subject(smtp_server, none) == ENGLISH_RESET


def test_legacy_order_confirmation(stack: Stack, smtp_server: SMTPServer, secret: str) -> None:
    by_field, by_header = unique("order-field"), unique("order-header")
    for to, extra, headers in ((by_field, {"locale": "de"}, {}),
                               (by_header, {}, {"Accept-Language": "de-AT"})):
        order = {"order_id": "A-1", "customer": {"name": "Ada", "email": to},
                 "items": [{"product_id": "p", "name": "Tea", "quantity": 1, "price": 3.5}],
                 "total": 3.5, **extra}
        answer = httpx.post(f"{stack.base_url}/api/order-confirmation", json=order,
                            headers=auth(secret, **headers))
        assert answer.status_code == 200, answer.text
    assert subject(smtp_server, by_field) == "Bestellung A-1 bestätigt — danke, Ada"
    assert subject(smtp_server, by_header) == "Bestellung A-1 bestätigt — danke, Ada"


def test_redis_event(stack: Stack, smtp_server: SMTPServer, redis_server: RedisServer) -> None:
    client = redis_server.client()
    wait_for(lambda: client.pubsub_numsub("password_reset_events")[0][1] >= 1,
             message="the listener to subscribe")
    german, english, hostile = unique("event-de"), unique("event-en"), unique("event-bad")
    client.publish("password_reset_events", json.dumps(
        {"email": hostile, "code": "1", "locale": "../../etc/passwd"}))
    client.publish("password_reset_events", json.dumps(
        {"email": german, "code": "4711", "timestamp": "2026-11-30T10:00:00Z", "locale": "de"}))
    client.publish("password_reset_events", json.dumps({"email": english, "code": "4711"}))
    assert subject(smtp_server, german) == GERMAN_RESET
    assert subject(smtp_server, english) == ENGLISH_RESET
    assert "invalid event skipped" in stack.api.output()
    assert not smtp_server.handler.to(hostile)  # skipped: its later neighbours arrived
