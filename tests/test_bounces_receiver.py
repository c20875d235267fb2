"""``email-service bounces`` as a real process against a real Redis: reports sent by SMTP (and
LMTP) to VERP addresses update statuses; forged, foreign, oversized, unmatched and non-report
mail is refused or dropped and counted; the probes and metrics answer."""

from __future__ import annotations

import re
import smtplib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from mailcore.verp import envelope_sender

from .bounce_support import (
    BOUNCE_DOMAIN,
    BOUNCE_SECRET,
    events,
    sent_message,
    status_fields,
    suppression,
)
from .support import RedisServer, ServiceProcess, base_env, free_port, wait_for

REPORTS = Path(__file__).parent / "data" / "reports"


@dataclass
class Receiver:
    process: ServiceProcess
    port: int
    http: str
    prefix: str
    client: redis.Redis

    def verp(self, message_id: str) -> str:
        address = envelope_sender(BOUNCE_SECRET.encode(), BOUNCE_DOMAIN, message_id)
        assert address is not None
        return address

    def send(self, rcpts: list[str], data: bytes, *, lmtp: bool = False) -> None:
        smtp = smtplib.LMTP("127.0.0.1", self.port) if lmtp else smtplib.SMTP(
            "127.0.0.1", self.port, timeout=10)
        with smtp:
            smtp.sendmail("", rcpts, re.sub(rb"\r?\n", b"\r\n", data))  # as on the wire

    def counted(self, outcome: str) -> float:
        text = httpx.get(f"{self.http}/metrics").text
        found = re.search(rf'email_bounce_reports_total{{outcome="{outcome}"}} ([0-9.]+)', text)
        return float(found.group(1)) if found else 0.0


def start_receiver(redis_url: str, logs: Path, **env: str) -> tuple[ServiceProcess, int, str]:
    port, http_port = free_port(), free_port()
    process = ServiceProcess(["bounces"], base_env(
        redis_url, 1, BOUNCE_DOMAIN=BOUNCE_DOMAIN, BOUNCE_SECRET=BOUNCE_SECRET,
        WEBHOOKS_ENABLED="true", BOUNCES_HOST="127.0.0.1", BOUNCES_PORT=str(port),
        BOUNCES_HTTP_PORT=str(http_port),
        **env), logs / "bounces.log").start()
    return process, port, f"http://127.0.0.1:{http_port}"


@pytest.fixture(scope="module")
def receiver(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Receiver]:
    prefix = f"bounces-{uuid.uuid4().hex[:8]}"
    process, port, http = start_receiver(
        redis_server.url, tmp_path_factory.mktemp("bounces"), KEY_PREFIX=prefix,
        BOUNCES_MAX_MESSAGE_BYTES="65536", BOUNCES_MAX_RECIPIENTS="4")
    try:
        process.wait_until(lambda: httpx.get(f"{http}/ready").status_code == 200, timeout=30,
                           message="the bounce receiver to be ready")
        with redis_server.client() as client:
            yield Receiver(process, port, http, prefix, client)
    finally:
        process.stop()


def test_probes(receiver: Receiver) -> None:
    assert httpx.get(f"{receiver.http}/health").json() == {
        "status": "healthy", "service": "email-service-bounces"}
    assert httpx.get(f"{receiver.http}/ready").json()["status"] == "ready"


@pytest.mark.parametrize(("name", "recipient", "status", "kind"), [
    ("postfix-local-5.1.1.eml", "no-such-user@relay.example.net", "bounced", "hard"),
    ("postfix-deferred-4.4.1.eml", "someone@soft.example.net", "bounced", "soft"),
    ("gmail-two-recipients.eml", "ada.lovelace@example.org", "bounced", "hard"),
    ("exim.eml", "grace@example.org", "bounced", "hard"),
    ("qmail.eml", "mireille@example.org", "bounced", "hard"),
    ("sendmail-transcript.eml", "foo@rbd.spb.ru", "bounced", "hard"),
    ("arf-rfc5965.eml", "user@example.com", "complained", "complaint"),
])
def test_real_world_reports_update_the_status(receiver: Receiver, name: str, recipient: str,
                                              status: str, kind: str) -> None:
    message_id = sent_message(receiver.client, receiver.prefix,
                              [recipient, "someone-else@example.net"])
    receiver.send([receiver.verp(message_id)], (REPORTS / name).read_bytes())
    fields = status_fields(receiver.client, receiver.prefix, message_id)
    assert fields["status"] == status
    assert fields[f"bounce:{recipient.lower()}"] == kind
    assert any(e["message_id"] == message_id for e in events(receiver.client, receiver.prefix))
    entry = suppression(receiver.client, receiver.prefix, recipient)
    if kind == "soft":
        assert entry is None
    else:
        assert entry is not None and entry.source_message_id == message_id
        assert entry.reason == {"hard": "hard_bounce", "complaint": "complaint"}[kind]
    assert suppression(receiver.client, receiver.prefix, "someone-else@example.net") is None


def test_forged_and_foreign_addresses_are_refused_at_rcpt(receiver: Receiver) -> None:
    message_id = sent_message(receiver.client, receiver.prefix, ["no-such-user@relay.example.net"])
    genuine = receiver.verp(message_id)
    local, _, domain = genuine.partition("@")
    forged = local[:-3] + ("aaa" if not local.endswith("aaa") else "bbb") + "@" + domain
    other_key = envelope_sender(b"someone-elses-secret-0123", BOUNCE_DOMAIN, message_id)
    before = receiver.counted("forged"), receiver.counted("not_our_address")
    for address, code in [(forged, 550), (str(other_key), 550),
                          (f"bounces+{'a' * 42}@{BOUNCE_DOMAIN}", 550),
                          (f"postmaster@{BOUNCE_DOMAIN}", 550),
                          ("bounces+x@elsewhere.example", 550), ("ada@example.org", 550)]:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            receiver.send([address], (REPORTS / "postfix-local-5.1.1.eml").read_bytes())
        assert refused.value.recipients[address][0] == code
    assert receiver.counted("forged") == before[0] + 3
    assert receiver.counted("not_our_address") == before[1] + 3
    assert status_fields(receiver.client, receiver.prefix, message_id)["status"] == "sent"


def test_too_many_recipients_and_too_large(receiver: Receiver) -> None:
    ids = [sent_message(receiver.client, receiver.prefix, [f"u{i}@relay.example.net"])
           for i in range(5)]
    with smtplib.SMTP("127.0.0.1", receiver.port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("")
        codes = [smtp.rcpt(receiver.verp(i))[0] for i in ids]
        smtp.rset()
    assert codes == [250, 250, 250, 250, 452]
    huge = b"Subject: x\r\n\r\n" + b"y" * 70_000 + b"\r\n"
    with pytest.raises(smtplib.SMTPException) as too_large:
        receiver.send([receiver.verp(ids[0])], huge)
    assert "552" in str(too_large.value) or "message size" in str(too_large.value).lower()
    assert receiver.process.process is not None and receiver.process.process.poll() is None


@pytest.mark.parametrize(("data", "outcome"), [
    (b"From: friend@example.org\r\nSubject: hi\r\n\r\nnot a report\r\n", "not_a_report"),
    ((b"\x00\xff\xfe" * 50 + b"\r\n") * 100, "malformed"),
    (b"Content-Type: multipart/report; boundary=B\r\n\r\n--B\r\n"
     b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
     b"Final-Recipient: rfc822; ok@relay.example.net\r\nAction: delivered\r\nStatus: 2.0.0\r\n"
     b"\r\n--B--\r\n", "no_failures"),
])
def test_mail_that_is_no_usable_report_is_dropped(receiver: Receiver, data: bytes,
                                                  outcome: str) -> None:
    message_id = sent_message(receiver.client, receiver.prefix, ["ok@relay.example.net"])
    before = receiver.counted(outcome)
    receiver.send([receiver.verp(message_id)], data)  # 250: accepted, dropped
    assert receiver.counted(outcome) == before + 1
    assert status_fields(receiver.client, receiver.prefix, message_id)["status"] == "sent"


def test_unknown_message_and_stranger(receiver: Receiver) -> None:
    report = (REPORTS / "gmail-two-recipients.eml").read_bytes()
    before = receiver.counted("unknown_message"), receiver.counted("unmatched_recipient")
    receiver.send([receiver.verp(str(uuid.uuid4()))], report)  # expired or never stored
    message_id = sent_message(receiver.client, receiver.prefix,
                              ["carol@example.org", "dave@example.org"])
    receiver.send([receiver.verp(message_id)], report)  # names neither of them
    assert receiver.counted("unknown_message") == before[0] + 2  # two recipients reported
    assert receiver.counted("unmatched_recipient") == before[1] + 2
    assert status_fields(receiver.client, receiver.prefix, message_id)["status"] == "sent"


def test_a_report_delivered_twice_counts_once(receiver: Receiver) -> None:
    message_id = sent_message(receiver.client, receiver.prefix, ["no-such-user@relay.example.net"])
    before = receiver.counted("duplicate")
    for _ in range(2):
        receiver.send([receiver.verp(message_id)],
                      (REPORTS / "postfix-local-5.1.1.eml").read_bytes())
    assert receiver.counted("duplicate") == before + 1
    assert len([e for e in events(receiver.client, receiver.prefix)
                if e["message_id"] == message_id]) == 1


def test_lmtp_answers_per_recipient(redis_server: RedisServer, tmp_path: Path) -> None:
    prefix = f"lmtp-{uuid.uuid4().hex[:8]}"
    process, port, http = start_receiver(redis_server.url, tmp_path, KEY_PREFIX=prefix,
                                         BOUNCES_LMTP="true")
    try:
        process.wait_until(lambda: httpx.get(f"{http}/ready").status_code == 200, timeout=30,
                           message="the LMTP receiver")
        with redis_server.client() as client:
            first = sent_message(client, prefix, ["no-such-user@relay.example.net"])
            second = sent_message(client, prefix, ["no-such-user@relay.example.net"])
            receiver = Receiver(process, port, http, prefix, client)
            with smtplib.LMTP("127.0.0.1", port) as lmtp:
                lmtp.ehlo()  # smtplib's LMTP sends LHLO
                lmtp.mail("")
                for message_id in (first, second):
                    assert lmtp.rcpt(receiver.verp(message_id))[0] == 250
                # One reply per recipient after DATA (smtplib reads the first).
                assert lmtp.data((REPORTS / "postfix-local-5.1.1.eml").read_bytes())[0] == 250
                assert lmtp.getreply()[0] == 250
            for message_id in (first, second):
                assert status_fields(client, prefix, message_id)["status"] == "bounced"
    finally:
        process.stop()


def test_redis_away_answers_try_again_later(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    process, port, http = start_receiver(dead, tmp_path)
    try:
        process.wait_until(lambda: httpx.get(f"{http}/health").status_code == 200, timeout=30,
                           message="the receiver to start")
        assert httpx.get(f"{http}/ready").status_code == 503
        address = envelope_sender(BOUNCE_SECRET.encode(), BOUNCE_DOMAIN, str(uuid.uuid4()))
        with pytest.raises(smtplib.SMTPDataError) as deferred, \
                smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail("", [str(address)], (REPORTS / "postfix-local-5.1.1.eml").read_bytes())
        assert deferred.value.smtp_code == 451
    finally:
        process.stop()


def test_needs_a_bounce_domain(redis_server: RedisServer, tmp_path: Path) -> None:
    process = ServiceProcess(["bounces"], base_env(redis_server.url, 1),
                             tmp_path / "bounces.log").start()
    try:
        wait_for(lambda: process.process is not None and process.process.poll() is not None,
                 timeout=30, message="the receiver to refuse to start")
        assert process.process is not None and process.process.returncode == 2
        assert "BOUNCE_DOMAIN" in process.output()
    finally:
        process.stop()


def test_sessions_beyond_the_limit_are_told_to_come_back(redis_server: RedisServer,
                                                         tmp_path: Path) -> None:
    process, port, http = start_receiver(redis_server.url, tmp_path,
                                         KEY_PREFIX=f"conn-{uuid.uuid4().hex[:8]}",
                                         BOUNCES_MAX_CONNECTIONS="2")
    try:
        process.wait_until(lambda: httpx.get(f"{http}/ready").status_code == 200, timeout=30,
                           message="the receiver")
        first, second = (smtplib.SMTP("127.0.0.1", port, timeout=10) for _ in range(2))
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", port, timeout=10)
        assert refused.value.smtp_code == 421
        first.quit()
        third = wait_for(lambda: smtplib.SMTP("127.0.0.1", port, timeout=10), timeout=10,
                         message="a session once one closed")
        assert third.noop()[0] == 250 and second.noop()[0] == 250
        third.quit()
        second.quit()
        # At least the one refused above (waiting for a free session may meet more).
        found = re.search(r'email_bounce_reports_total\{outcome="too_busy"\} ([0-9.]+)',
                          httpx.get(f"{http}/metrics").text)
        assert found is not None and float(found.group(1)) >= 1
    finally:
        process.stop()
