"""Bounces end to end with a real Postfix: the ingress accepts a message, a worker hands it to
Postfix with its VERP envelope sender, Postfix accepts it and later fails to deliver it, and its
genuine RFC 3464 report goes to ``email-service bounces``, which records ``bounced`` (hard for a
local unknown user and a remote 550, soft for a relay that cannot be reached) with the lifecycle
event; a multi-recipient message records each failed recipient and not the delivered one."""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from harness.postfix import LOCAL_DOMAIN, PostfixRelay, unavailable
from mailcore.tokens import mint_token
from mailcore.verp import envelope_sender, read_token, token_of

from .bounce_support import (
    BOUNCE_DOMAIN,
    BOUNCE_SECRET,
    events,
    sent_message,
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

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None,
                                                   reason=str(unavailable()))]
AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='bounces')}"}
SOFT_DOMAIN, REMOTE_DOMAIN = "soft.example.net", "remote.example.net"


@dataclass
class Rig:
    stack: ServiceStack
    remote: SMTPServer
    postfix: PostfixRelay
    client: redis.Redis
    prefix: str


@pytest.fixture(scope="module")
def rig(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    prefix = f"pfx-{uuid.uuid4().hex[:8]}"
    receiver_port, receiver_http = free_port(), free_port()
    remote = SMTPServer()  # a remote MX: refuses gone@, accepts the rest
    remote.handler.plan = {}
    refusing = _RefusingRemote(remote)
    postfix = PostfixRelay({
        BOUNCE_DOMAIN: f"smtp:[127.0.0.1]:{receiver_port}",
        SOFT_DOMAIN: f"smtp:[127.0.0.1]:{free_port()}",  # nobody listens: deferred, bounced
        REMOTE_DOMAIN: f"smtp:[127.0.0.1]:{remote.port}",
    })
    env = base_env(redis_server.url, postfix.port, KEY_PREFIX=prefix, QUEUE_NAME=prefix,
                   WEBHOOKS_ENABLED="true",
                   BOUNCE_DOMAIN=BOUNCE_DOMAIN, BOUNCE_SECRET=BOUNCE_SECRET,
                   BOUNCES_HOST="127.0.0.1", BOUNCES_PORT=str(receiver_port),
                   BOUNCES_HTTP_PORT=str(receiver_http), EVENTS_ENABLED="false",
                   RESET_LIMIT_PER_RECIPIENT="off")
    logs = tmp_path_factory.mktemp("bounce-logs")
    receiver = ServiceProcess(["bounces"], env, logs / "bounces.log")
    with ServiceStack(env, logs, parts=[refusing, postfix, receiver]) as stack, \
            redis_server.client() as client:
        receiver.wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{receiver_http}/ready").status_code == 200,
            timeout=30, message="the bounce receiver")
        yield Rig(stack, remote, postfix, client, prefix)


class _RefusingRemote:
    """The remote MX: 550 5.1.1 at RCPT for ``gone@``; a part of the stack (start/stop)."""

    def __init__(self, server: SMTPServer) -> None:
        self.server = server

        async def handle_RCPT(server: Any, session: Any, envelope: Any, address: str,
                              options: list[str]) -> str:
            if address.startswith("gone@"):
                return "550 5.1.1 <" + address + ">: Recipient address rejected: User unknown"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        server.handler.handle_RCPT = handle_RCPT  # type: ignore[attr-defined]

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


def send(rig: Rig, *recipients: str) -> str:
    response = httpx.post(f"{rig.stack.base_url}/v1/messages", headers=AUTH, json={
        "to": list(recipients), "subject": "Your code", "text": "Your code is 123456."})
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def bounced(rig: Rig, message_id: str, *recipients: str) -> dict[str, str]:
    def recorded() -> dict[str, str] | None:
        fields = status_fields(rig.client, rig.prefix, message_id)
        return fields if all(f"bounce:{r}" in fields for r in recipients) else None

    return wait_for(recorded, timeout=60, message=f"the bounce of {message_id} "
                    f"(postfix log: {rig.postfix.log()[-2000:]})")


def test_local_unknown_user_is_a_hard_bounce(rig: Rig) -> None:
    recipient = f"no-such-user@{LOCAL_DOMAIN}"
    message_id = send(rig, recipient)
    fields = bounced(rig, message_id, recipient)
    assert fields["status"] == "bounced" and fields["bounce_type"] == "hard"
    # Its lifecycle: queued, sent (the relay accepted it), then the bounce.
    mine = [e for e in events(rig.client, rig.prefix) if e["message_id"] == message_id]
    assert [e["type"] for e in mine] == ["message.queued", "message.sent", "message.bounced"]
    assert mine[-1]["dsn_status"] == "5.1.1" and mine[-1]["bounce_type"] == "hard"
    status = httpx.get(f"{rig.stack.base_url}/v1/messages/{message_id}", headers=AUTH).json()
    assert status["status"] == "bounced"
    assert status["timeline"][-1]["recipient"] == recipient
    assert status["bounce_type"] == "hard" and status["bounces"] == {recipient: "hard"}
    entry = suppression(rig.client, rig.prefix, recipient)
    assert entry is not None and entry.reason == "hard_bounce"
    assert entry.source_message_id == message_id


def test_unreachable_relay_is_a_soft_bounce(rig: Rig) -> None:
    recipient = f"someone@{SOFT_DOMAIN}"
    message_id = send(rig, recipient)
    fields = bounced(rig, message_id, recipient)
    assert fields["bounce_type"] == "soft" and fields[f"bounce:{recipient}"] == "soft"
    assert suppression(rig.client, rig.prefix, recipient) is None


def test_remote_refusal_after_acceptance(rig: Rig) -> None:
    gone, local_gone, fine = (f"gone@{REMOTE_DOMAIN}", f"nobody-here@{LOCAL_DOMAIN}",
                              f"fine@{REMOTE_DOMAIN}")
    message_id = send(rig, gone, local_gone, fine)
    fields = bounced(rig, message_id, gone, local_gone)
    assert fields["status"] == "bounced" and f"bounce:{fine}" not in fields
    assert suppression(rig.client, rig.prefix, gone) is not None
    assert suppression(rig.client, rig.prefix, fine) is None
    # The copy that was delivered carried the message's own signed envelope sender.
    [delivered] = wait_for(lambda: rig.remote.handler.to(fine), timeout=30,
                           message="the delivered copy")
    token = token_of(delivered.mail_from, BOUNCE_DOMAIN)
    assert token is not None and read_token(BOUNCE_SECRET.encode(), token) == message_id


def test_postfix_report_names_the_verp_address(rig: Rig, tmp_path: Path) -> None:
    # What Postfix logged: the report went to the receiver and was accepted (250). Postfix
    # writes that line after the receiver's reply, so the status may be recorded first: wait.
    wait_for(lambda: "to=<bounces+" in rig.postfix.log()
             and "status=sent (250 2.0.0 OK)" in rig.postfix.log(), timeout=30,
             message="postfix to log the report's delivery to the receiver")


def test_postfix_hands_reports_over_by_lmtp(redis_server: RedisServer, tmp_path: Path) -> None:
    """The receiver behind an MTA speaking LMTP (``BOUNCES_LMTP=true``), as when an inbound
    Postfix relays the bounce domain to it (``lmtp:inet:[host]:port``)."""
    prefix = f"lmtp-{uuid.uuid4().hex[:8]}"
    port, http_port = free_port(), free_port()
    env = base_env(redis_server.url, 1, KEY_PREFIX=prefix, BOUNCE_DOMAIN=BOUNCE_DOMAIN,
                   BOUNCE_SECRET=BOUNCE_SECRET, BOUNCES_HOST="127.0.0.1",
                   BOUNCES_PORT=str(port), BOUNCES_HTTP_PORT=str(http_port), BOUNCES_LMTP="true")
    receiver = ServiceProcess(["bounces"], env, tmp_path / "bounces.log").start()
    postfix = PostfixRelay({BOUNCE_DOMAIN: f"lmtp:inet:[127.0.0.1]:{port}"})
    try:
        receiver.wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{http_port}/ready").status_code == 200,
            timeout=30, message="the LMTP receiver")
        postfix.start()
        recipient = f"no-such-user@{LOCAL_DOMAIN}"
        with redis_server.client() as client:
            message_id = sent_message(client, prefix, [recipient])
            sender = envelope_sender(BOUNCE_SECRET.encode(), BOUNCE_DOMAIN, message_id)
            assert sender is not None
            with smtplib.SMTP("127.0.0.1", postfix.port, timeout=10) as smtp:
                smtp.sendmail(sender, [recipient],
                              b"From: shop@example.com\r\nTo: " + recipient.encode() +
                              b"\r\nSubject: Your order\r\n\r\nThanks.\r\n")
            wait_for(lambda: status_fields(client, prefix, message_id).get(
                f"bounce:{recipient}"), timeout=60,
                message=f"the report by LMTP (postfix log: {postfix.log()[-1500:]})")
            assert status_fields(client, prefix, message_id)["status"] == "bounced"
        # Postfix logs the delivery once the receiver's reply is in, after the status was
        # recorded (during the LMTP transaction): wait for the line, do not race it.
        wait_for(lambda: "relay=127.0.0.1[127.0.0.1]:" in postfix.log(), timeout=30,
                 message=f"postfix to log the LMTP delivery ({postfix.log()[-1500:]})")
    finally:
        postfix.stop()
        receiver.stop()
