"""The real thing: ingress and Dramatiq worker processes, redis-server, an SMTP server."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from mailcore.tokens import mint_token

from .conftest import Stack
from .support import (
    RedisServer,
    SMTPServer,
    dead_letters,
    iter_parts,
    queue_idle,
    wait_for,
)

pytestmark = pytest.mark.slow


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.org"


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(secret, subject='checkout')}"}


def test_send_reset_code_delivers_rendered_multipart_email(
    stack: Stack, smtp_server: SMTPServer, secret: str
) -> None:
    to = unique("reset")
    response = httpx.post(f"{stack.base_url}/email-service/send-reset-code",
                          json={"email": to, "code": "739201"}, headers=auth(secret))
    assert response.status_code == 200
    assert response.json() == {"message": "Password reset code sent successfully"}

    received = wait_for(lambda: smtp_server.handler.to(to), message="the reset email")
    assert len(received) == 1
    mail = received[0].message
    assert mail["To"] == to
    assert mail["From"] == "Shop <noreply@shop.example.com>"
    assert mail["Subject"] == "Your Shop password reset code"
    assert mail["Message-ID"].endswith("@shop.example.com>")
    assert mail["Date"]
    assert mail.get_content_type() == "multipart/alternative"
    types = [part.get_content_type() for part in iter_parts(mail)]
    assert types == ["text/plain", "text/html"]
    text = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert "739201" in text and "<" not in text
    assert "739201" in html and "@media" in html  # responsive MJML output
    assert to in html


def test_v1_messages_order_with_hostile_name_is_escaped(
    stack: Stack, smtp_server: SMTPServer, secret: str
) -> None:
    to = unique("order")
    order = {
        "order_id": "A-77",
        "customer": {"name": "<script>alert(1)</script> Eve", "email": to},
        "items": [{"product_id": "p1", "name": "Tea & <b>Biscuits</b>", "quantity": 2,
                   "price": 3.25}],
        "total": 6.5,
    }
    response = httpx.post(
        f"{stack.base_url}/v1/messages",
        json={"template": "order_confirmation", "to": {"email": to, "name": "Eve"},
              "data": order, "cc": [unique("cc")], "bcc": unique("bcc"),
              "reply_to": "support@shop.example.com", "headers": {"X-Campaign": "autumn"},
              "tags": ["orders"]},
        headers=auth(secret),
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    uuid.UUID(body["id"])

    mail = wait_for(lambda: smtp_server.handler.to(to), message="the order email")[0]
    message = mail.message
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Eve" in html
    assert "Tea &amp; &lt;b&gt;Biscuits&lt;/b&gt;" in html
    assert "6.50" in html and "A-77" in html
    assert message["X-Campaign"] == "autumn"
    assert message["Reply-To"] == "support@shop.example.com"
    assert message["X-Email-Service-Id"] == body["id"]
    assert "Bcc" not in message
    assert len(mail.rcpt_tos) == 3  # to, cc and the envelope-only bcc


def test_batch_delivers_each_message_once(stack: Stack, smtp_server: SMTPServer,
                                         secret: str) -> None:
    recipients = [unique(f"batch{i}") for i in range(20)]
    messages = [{"template": "password_reset", "to": to,
                 "data": {"email": to, "code": str(731000 + i)}}
                for i, to in enumerate(recipients)]
    response = httpx.post(f"{stack.base_url}/v1/messages/batch", json={"messages": messages},
                          headers=auth(secret))
    assert response.status_code == 202, response.text
    ids = [answer["id"] for answer in response.json()["messages"]]
    wait_for(lambda: all(smtp_server.handler.to(to) for to in recipients),
             message="every message of the batch")
    for i, (to, message_id) in enumerate(zip(recipients, ids, strict=True)):
        [mail] = smtp_server.handler.to(to)
        assert mail.message["X-Email-Service-Id"] == message_id
        body = mail.message.get_body(preferencelist=("plain",))
        assert body is not None and str(731000 + i) in body.get_content()
    wait_for(lambda: httpx.get(f"{stack.base_url}/v1/messages/{ids[-1]}",
                               headers=auth(secret)).json()["status"] == "sent",
             message="the sent status")


def test_legacy_order_confirmation_contract(
    stack: Stack, smtp_server: SMTPServer, secret: str
) -> None:
    to = unique("legacy-order")
    order = {
        "order_id": "12345",
        "customer": {"name": "Grace", "email": to, "address": "1 Navy Rd", "phone": "555"},
        "items": [{"product_id": "x", "name": "Compiler", "quantity": 1, "price": 10}],
        "total": 10,
        "shipping_method": "Ground",
        "notes": "fragile",
    }
    response = httpx.post(f"{stack.base_url}/api/order-confirmation", json=order,
                          headers=auth(secret))
    assert response.status_code == 200
    assert response.json() == {"status": "success", "message": "Order confirmation email sent"}
    message = wait_for(lambda: smtp_server.handler.to(to), message="the order email")[0].message
    assert message["To"] == f"Grace <{to}>"
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Ground" in text and "fragile" in text and "1 Navy Rd" in text


def test_smtp_4xx_is_retried_and_delivered_exactly_once(
    stack: Stack, smtp_server: SMTPServer, redis_server: RedisServer, secret: str
) -> None:
    to = unique("greylisted")
    smtp_server.handler.plan[to] = ["451 4.7.1 Greylisted, try again", "421 4.3.2 busy"]
    response = httpx.post(f"{stack.base_url}/email-service/send-reset-code",
                          json={"email": to, "code": "1"}, headers=auth(secret))
    assert response.status_code == 200
    wait_for(lambda: smtp_server.handler.to(to), message="delivery after two 4xx replies")
    client = redis_server.client()
    wait_for(lambda: queue_idle(client), message="the queue to drain")
    assert smtp_server.handler.attempts[to] == 3
    assert len(smtp_server.handler.to(to)) == 1


def test_smtp_5xx_is_not_retried_and_is_dead_lettered(
    stack: Stack, smtp_server: SMTPServer, redis_server: RedisServer, secret: str
) -> None:
    to = unique("rejected")
    smtp_server.handler.plan[to] = ["550 5.1.1 No such user"]
    response = httpx.post(f"{stack.base_url}/v1/messages",
                          json={"template": "password_reset", "to": to,
                                "data": {"email": to, "code": "9"}},
                          headers=auth(secret))
    assert response.status_code == 202
    message_id = response.json()["id"]
    client = redis_server.client()

    def dead() -> bool:
        return any(message_id in raw.decode() for raw in dead_letters(client))

    wait_for(dead, message="the message in the dead-letter queue")
    wait_for(lambda: queue_idle(client), message="the queue to drain")
    assert smtp_server.handler.attempts[to] == 1
    assert smtp_server.handler.to(to) == []
    wait_for(lambda: "dead-lettered: permanent failure: 550 5.1.1 No such user" in
             stack.worker.output(), message="the dead-letter reason in the worker log")
    assert message_id in stack.worker.output()


def test_exhausted_retries_are_dead_lettered_with_the_last_reply(
    stack: Stack, smtp_server: SMTPServer, redis_server: RedisServer, secret: str
) -> None:
    to = unique("always-busy")
    smtp_server.handler.plan[to] = ["421 4.4.5 Too busy"] * 10  # more than the 3 retries
    response = httpx.post(f"{stack.base_url}/v1/messages",
                          json={"template": "password_reset", "to": to,
                                "data": {"email": to, "code": "9"}},
                          headers=auth(secret))
    message_id = response.json()["id"]
    client = redis_server.client()
    wait_for(lambda: any(message_id in raw.decode() for raw in dead_letters(client)),
             message="the message in the dead-letter queue")
    assert smtp_server.handler.attempts[to] == 4  # first attempt + SEND_MAX_RETRIES=3
    assert smtp_server.handler.to(to) == []
    wait_for(lambda: "dead-lettered after 4 attempts: 421 4.4.5 Too busy" in stack.worker.output(),
             message="the reason in the worker log")


def test_redis_event_becomes_an_email(
    stack: Stack, smtp_server: SMTPServer, redis_server: RedisServer
) -> None:
    to = unique("event")
    client = redis_server.client()
    wait_for(lambda: client.pubsub_numsub("password_reset_events")[0][1] >= 1,
             message="the listener to subscribe")
    client.publish("password_reset_events", "{not json")
    client.publish("password_reset_events", json.dumps({"email": "not-an-address", "code": "1"}))
    client.publish("password_reset_events",
                   json.dumps({"email": to, "code": "555000", "timestamp": "2026-11-23T10:00:00Z"}))
    mail = wait_for(lambda: smtp_server.handler.to(to), message="the event's email")[0]
    assert "555000" in mail.message.get_body(  # type: ignore[union-attr]
        preferencelist=("plain",)).get_content()
    output = stack.api.output()
    assert "malformed event skipped: not JSON" in output
    assert "invalid event skipped" in output


def test_readiness_and_health(stack: Stack) -> None:
    assert httpx.get(f"{stack.base_url}/health").json() == {
        "status": "healthy", "service": "email-service"}
    assert httpx.get(f"{stack.base_url}/ready").status_code == 200
