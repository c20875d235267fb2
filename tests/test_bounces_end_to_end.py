"""Bounces end to end with real processes and no Postfix (test_bounces_postfix has that):

- SMTP: a worker delivers to a relay (aiosmtpd) with the message's signed VERP envelope sender;
  a report in Postfix's exact format, about that recipient, sent to that envelope sender at a
  real ``email-service bounces``, turns the message ``bounced`` with its event and suppression.
- Mailtrap: a worker sends through the Mailtrap stand-in; the webhook event Mailtrap would send
  for that message (its ``custom_variables`` as we sent them), signed, posted to the real
  ingress, does the same.
"""

from __future__ import annotations

import re
import smtplib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from harness.mailtrap import MailtrapStandIn
from mailcore.mailtrap_events import sign
from mailcore.tokens import mint_token

from .bounce_support import (
    BOUNCE_DOMAIN,
    BOUNCE_SECRET,
    events,
    status_fields,
    suppression,
)
from .support import (
    TEST_SECRET,
    RedisServer,
    ServiceProcess,
    ServiceStack,
    SMTPServer,
    base_env,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='bounces')}"}
POSTFIX_SAMPLE = Path(__file__).parent / "data" / "reports" / "postfix-local-5.1.1.eml"
WEBHOOK_SECRET = "mailtrap-webhook-secret-0123456789"


def send(base_url: str, recipient: str) -> str:
    response = httpx.post(f"{base_url}/v1/messages", headers=AUTH, json={
        "to": recipient, "subject": "Your code", "text": "Your code is 123456."})
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


#: The stack, its relay, the receiver's SMTP port, the key prefix.
SmtpRig = tuple[ServiceStack, SMTPServer, int, str]


@pytest.fixture
def smtp_rig(redis_server: RedisServer, tmp_path: Path) -> Iterator[SmtpRig]:
    prefix = f"e2eb-{uuid.uuid4().hex[:8]}"
    relay = SMTPServer()
    port, http_port = free_port(), free_port()
    env = base_env(redis_server.url, relay.port, KEY_PREFIX=prefix, QUEUE_NAME=prefix,
                   WEBHOOKS_ENABLED="true",
                   BOUNCE_DOMAIN=BOUNCE_DOMAIN, BOUNCE_SECRET=BOUNCE_SECRET,
                   BOUNCES_HOST="127.0.0.1", BOUNCES_PORT=str(port),
                   BOUNCES_HTTP_PORT=str(http_port), EVENTS_ENABLED="false",
                   RESET_LIMIT_PER_RECIPIENT="off")
    receiver = ServiceProcess(["bounces"], env, tmp_path / "bounces.log")
    with ServiceStack(env, tmp_path, parts=[relay, receiver]) as stack:
        receiver.wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{http_port}/ready").status_code == 200,
            timeout=30, message="the bounce receiver")
        yield stack, relay, port, prefix


def test_smtp_bounce_through_the_verp_address(smtp_rig: SmtpRig,
                                              redis_server: RedisServer) -> None:
    stack, relay, port, prefix = smtp_rig
    recipient = "grace@example.org"
    message_id = send(stack.base_url, recipient)
    [delivered] = wait_for(lambda: relay.handler.to(recipient), timeout=30,
                           message="the delivery")
    assert re.fullmatch(rf"bounces\+[a-z2-7]{{42}}@{re.escape(BOUNCE_DOMAIN)}",
                        delivered.mail_from)
    assert delivered.message["From"] == "Shop <noreply@shop.example.com>"  # unchanged
    with redis_server.client() as client:
        wait_for(lambda: status_fields(client, prefix, message_id)["status"] == "sent",
                 message="sent")
        # The relay's later report, in Postfix's format, about this recipient.
        report = POSTFIX_SAMPLE.read_bytes().replace(b"no-such-user@relay.example.net",
                                                     recipient.encode())
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("", [delivered.mail_from], report)
        fields = status_fields(client, prefix, message_id)
        assert fields["status"] == "bounced" and fields[f"bounce:{recipient}"] == "hard"
        [evt] = [e for e in events(client, prefix) if e["type"] == "message.bounced"]
        assert evt["message_id"] == message_id and evt["recipient"] == recipient
        entry = suppression(client, prefix, recipient)
        assert entry is not None and entry.source_message_id == message_id


@pytest.fixture
def mailtrap_rig(redis_server: RedisServer, tmp_path: Path
                 ) -> Iterator[tuple[ServiceStack, MailtrapStandIn, str]]:
    prefix = f"e2em-{uuid.uuid4().hex[:8]}"
    stand_in = MailtrapStandIn().start()
    env = base_env(redis_server.url, free_port(), KEY_PREFIX=prefix, QUEUE_NAME=prefix,
                   WEBHOOKS_ENABLED="true",
                   TRANSPORT="mailtrap", MAILTRAP_API_TOKEN=stand_in.token,
                   MAILTRAP_BASE_URL=stand_in.url, MAILTRAP_WEBHOOK_SECRET=WEBHOOK_SECRET,
                   EVENTS_ENABLED="false", RESET_LIMIT_PER_RECIPIENT="off")
    try:
        with ServiceStack(env, tmp_path) as stack:
            yield stack, stand_in, prefix
    finally:
        stand_in.stop()
        assert not stand_in.violations, stand_in.violations


def test_mailtrap_webhook_for_a_message_sent_through_mailtrap(
        mailtrap_rig: tuple[ServiceStack, MailtrapStandIn, str],
        redis_server: RedisServer) -> None:
    stack, stand_in, prefix = mailtrap_rig
    recipient = "henry@example.org"
    message_id = send(stack.base_url, recipient)
    [sent] = wait_for(lambda: stand_in.delivered(recipient), timeout=30,
                      message="the Mailtrap request")
    # What Mailtrap posts when that message bounces: our custom variables come back.
    body = orjson.dumps({"events": [{
        "event": "bounce", "message_id": str(uuid.uuid4()), "sending_stream": "transactional",
        "email": recipient, "timestamp": 1732970000, "event_id": str(uuid.uuid4()),
        "custom_variables": sent.body["custom_variables"], "response_code": 550,
        "response": "550 5.1.1 <henry@example.org>: user unknown", "bounce_category": "hard"}]})
    with redis_server.client() as client:
        wait_for(lambda: status_fields(client, prefix, message_id)["status"] == "sent",
                 message="sent")
        response = httpx.post(f"{stack.base_url}/v1/webhooks/mailtrap", content=body, headers={
            "Content-Type": "application/json", "Mailtrap-Signature": sign(WEBHOOK_SECRET, body)})
        assert response.json() == {"received": 1, "recorded": 1}
        forged = httpx.post(f"{stack.base_url}/v1/webhooks/mailtrap", content=body,
                            headers={"Mailtrap-Signature": sign("guess", body)})
        assert forged.status_code == 401
        status = httpx.get(f"{stack.base_url}/v1/messages/{message_id}", headers=AUTH).json()
        assert status["status"] == "bounced" and status["bounces"] == {recipient: "hard"}
        assert status["timeline"][-1]["source"] == "mailtrap"
        entry = suppression(client, prefix, recipient)
        assert entry is not None and entry.reason == "hard_bounce"
