"""Mailtrap delivery end to end: a real ingress and real worker processes, the Mailtrap stand-in
(a real HTTP server speaking the documented API), a real relay for failover.

Each answer's mapping (status, retries, Retry-After, unconfirmed), failover from a dead relay
to the HTTP API and back through the circuit's probe, no second copy on the ambiguous outcome,
and the replaced order-confirmation service's environment alone delivering an order.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from harness.mailtrap import MailtrapStandIn
from mailcore.tokens import mint_token

from .support import (
    TEST_SECRET,
    DroppingHandler,
    RedisServer,
    ServiceProcess,
    base_env,
    free_port,
    read_status,
    wait_for,
    wait_settled,
)

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='mailtrap')}"}


@dataclass
class Rig:
    stand_in: MailtrapStandIn
    redis: redis.Redis
    base_url: str
    metrics_url: str
    prefix: str
    worker: ServiceProcess


@contextlib.contextmanager
def running(redis_server: RedisServer, stand_in: MailtrapStandIn, logs: Path,
            env: dict[str, str]) -> Iterator[Rig]:
    api_port, metrics_port = free_port(), free_port()
    prefix = f"mt-{uuid.uuid4().hex[:6]}"
    env = {**env, "QUEUE_NAME": prefix, "KEY_PREFIX": prefix,
           "WORKER_METRICS_PORT": str(metrics_port), "EVENTS_ENABLED": "false",
           "RESET_LIMIT_PER_RECIPIENT": "off"}
    api = ServiceProcess(["api", "--host", "127.0.0.1", "--port", str(api_port)], env,
                         logs / "api.log").start()
    worker = ServiceProcess(["worker", "--processes", "1", "--threads", "2"], env,
                            logs / "worker.log").start()
    base_url, metrics_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}/"
    try:
        api.wait_until(lambda: httpx.get(f"{base_url}/ready").status_code == 200,
                       message="the ingress to be ready")
        worker.wait_until(lambda: "ready for action" in worker.output(),
                          message="the worker to consume")
        yield Rig(stand_in, redis_server.client(), base_url, metrics_url, prefix, worker)
    finally:
        api.stop()
        worker.stop()
        assert not stand_in.violations, stand_in.violations


@pytest.fixture(scope="module")
def stand_in() -> Iterator[MailtrapStandIn]:
    server = MailtrapStandIn(slow_seconds=3).start()
    yield server
    server.stop()


def mailtrap_env(redis_server: RedisServer, stand_in: MailtrapStandIn,
                 **extra: str) -> dict[str, str]:
    return base_env(redis_server.url, free_port(), MAILTRAP_API_TOKEN=stand_in.token,
                    MAILTRAP_BASE_URL=stand_in.url, MAILTRAP_TIMEOUT="1", **extra)


@pytest.fixture(scope="module")
def rig(redis_server: RedisServer, stand_in: MailtrapStandIn,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    env = mailtrap_env(redis_server, stand_in, TRANSPORT="mailtrap",
                       RECIPIENT_ALLOWLIST="example.com,vip@elsewhere.example.org",
                       SANDBOX_SUBJECTS="sandboxed-caller")
    with running(redis_server, stand_in, tmp_path_factory.mktemp("mailtrap"), env) as started:
        yield started


def status(rig: Rig, message_id: str) -> dict[str, Any]:
    return read_status(rig.redis, rig.prefix, message_id)


def settled(rig: Rig, message_id: str, expected: str) -> dict[str, Any]:
    return wait_settled(rig.redis, rig.prefix, message_id, expected)


def send(rig: Rig, to: str | list[str], **extra: Any) -> str:
    body = {"template": "password_reset", "to": to,
            "data": {"email": to if isinstance(to, str) else to[0], "code": "424242"},
            **extra}
    response = httpx.post(f"{rig.base_url}/v1/messages", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def address(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"


def metric(rig: Rig, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(httpx.get(rig.metrics_url).text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def steps(final: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(e["status"], e.get("outcome")) for e in final["timeline"]]


# --- Each answer's mapping, through a real worker ------------------------------------------------

def test_a_message_is_delivered_with_its_id_tags_and_token(rig: Rig) -> None:
    to = address("ok")
    message_id = send(rig, to, tags=["orders"], cc="copy@example.com",
                      metadata={"order_id": "A-1", "tier": "gold"})
    final = settled(rig, message_id, "sent")
    assert final["metadata"] == {"order_id": "A-1", "tier": "gold"}
    assert final["transport"] == "mailtrap" and final["response"].startswith("200 message_ids=")
    [request] = rig.stand_in.delivered(to)
    assert request.headers["authorization"] == f"Bearer {rig.stand_in.token}"
    assert request.body["from"] == {"email": "noreply@shop.example.com", "name": "Shop"}
    assert request.body["cc"] == [{"email": "copy@example.com"}]
    assert request.body["category"] == "orders"
    assert request.body["custom_variables"] == {"order_id": "A-1", "tier": "gold",
                                                "email_service_id": message_id}
    assert request.body["headers"]["X-Email-Service-Id"] == message_id
    assert "424242" in request.body["html"] and "424242" in request.body["text"]


@pytest.mark.parametrize(("answer", "text"), [("400", "'to' address is invalid"),
                                              ("422", "subject is too long")])
def test_a_refused_message_fails_at_once_with_the_providers_words(
        rig: Rig, answer: str, text: str) -> None:
    to = address(f"refused{answer}")
    rig.stand_in.plan[to] = [answer]
    final = settled(rig, send(rig, to), "failed")
    assert final["attempts"] == 1
    assert final["last_error"]["code"] == int(answer) and text in final["last_error"]["message"]


def test_a_refused_token_fails_loudly(rig: Rig) -> None:
    to = address("token")
    rig.stand_in.plan[to] = ["401"]
    before = metric(rig, "email_transport_misconfigured_total", {"transport": "mailtrap"})
    final = settled(rig, send(rig, to), "failed")
    assert final["attempts"] == 1 and final["last_error"]["code"] == 401
    assert "MAILTRAP_API_TOKEN" in final["last_error"]["message"]
    rig.worker.wait_until(lambda: "transport mailtrap is misconfigured" in rig.worker.output(),
                          message="the misconfiguration in the worker's log")
    wait_for(lambda: metric(rig, "email_transport_misconfigured_total",
                            {"transport": "mailtrap"}) == before + 1,
             message="email_transport_misconfigured_total")


@pytest.mark.parametrize("answer", ["429", "500"])
def test_throttling_and_server_errors_are_retried(rig: Rig, answer: str) -> None:
    to = address(f"busy{answer}")
    rig.stand_in.plan[to] = [answer]
    final = settled(rig, send(rig, to), "sent")
    assert steps(final) == [("queued", None), ("sending", None), ("retrying", None),
                            ("sending", None), ("sent", None)]
    assert final["attempts"] == 2 and len(rig.stand_in.delivered(to)) == 1
    at = [datetime.fromisoformat(e["at"]).timestamp() for e in final["timeline"]]
    waited = at[3] - at[2]
    if answer == "429":
        # Retry-After: 1 is honoured (the configured backoff is 50-300 ms).
        assert waited >= 0.95, final["timeline"]
    else:
        assert waited < 0.95, final["timeline"]


@pytest.mark.parametrize("answer", ["drop", "slow"])
def test_a_lost_answer_is_retried_as_unconfirmed_with_the_same_id(rig: Rig, answer: str) -> None:
    to = address(answer)
    rig.stand_in.plan[to] = [answer]
    message_id = send(rig, to)
    final = settled(rig, message_id, "sent")
    assert steps(final) == [("queued", None), ("sending", None), ("retrying", "unconfirmed"),
                            ("sending", None), ("sent", None)]
    seen = rig.stand_in.seen(to)
    assert [r.answer for r in seen] == [answer, "200"]
    assert {r.body["headers"]["X-Email-Service-Id"] for r in seen} == {message_id}


# --- Failover: a dead relay, the HTTP API, and back ---------------------------------------------

@dataclass
class FailoverRig:
    rig: Rig
    relay: DroppingHandler
    relay_port: int
    controller: Controller | None = None

    def relay_up(self) -> None:
        if self.controller is None:
            self.controller = Controller(self.relay, hostname="127.0.0.1", port=self.relay_port)
            self.controller.start()


@pytest.fixture(scope="module")
def failover(redis_server: RedisServer, stand_in: MailtrapStandIn,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailoverRig]:
    relay_port = free_port()  # nothing listens there yet: a dead relay
    env = {**mailtrap_env(redis_server, stand_in, TRANSPORTS="smtp,mailtrap",
                          FAILOVER_COOLDOWN_SECONDS="1", SMTP_TIMEOUT="1"),
           "SMTP_PORT": str(relay_port)}
    with running(redis_server, stand_in, tmp_path_factory.mktemp("failover"), env) as started:
        chain = FailoverRig(started, DroppingHandler(), relay_port)
        try:
            yield chain
        finally:
            if chain.controller is not None:
                chain.controller.stop()


def test_a_dead_relay_fails_over_to_mailtrap_and_the_probe_brings_it_back(
        failover: FailoverRig) -> None:
    rig = failover.rig
    to = address("failover")
    final = settled(rig, send(rig, to), "sent")
    assert final["transport"] == "mailtrap" and final["attempts"] == 1
    assert "smtp failed before accepting" in final["timeline"][-1]["detail"]
    assert final["timeline"][-1]["transport"] == "mailtrap"
    assert len(rig.stand_in.delivered(to)) == 1
    wait_for(lambda: metric(rig, "email_failovers_total",
                            {"failed": "smtp", "delivered": "mailtrap"}) >= 1,
             message="email_failovers_total")

    failover.relay_up()

    def back_on_smtp() -> str | None:
        # Each try is a new message: one of them is the probe once the cooldown has passed.
        probe = address("probe")
        result = settled(rig, send(rig, probe), "sent")
        return probe if result["transport"] == "smtp" else None

    probe = wait_for(back_on_smtp, timeout=20, interval=0.3, message="the relay to be probed back")
    assert len(failover.relay.to(probe)) == 1 and not rig.stand_in.seen(probe)
    after = address("after")
    assert settled(rig, send(rig, after), "sent")["transport"] == "smtp"


def test_no_failover_and_no_second_copy_on_the_ambiguous_outcome(
        failover: FailoverRig) -> None:
    failover.relay_up()
    rig = failover.rig
    wait_for(lambda: settled(rig, send(rig, address("warm")), "sent")["transport"] == "smtp",
             timeout=20, interval=0.3, message="the relay in use")
    to = address("ambiguous")
    failover.relay.drop[to] = ["close"]
    message_id = send(rig, to)
    final = settled(rig, message_id, "sent")
    assert steps(final) == [("queued", None), ("sending", None), ("retrying", "unconfirmed"),
                            ("sending", None), ("sent", None)]
    # Retried on the relay that may have it (same Message-ID), never through Mailtrap.
    assert final["transport"] == "smtp"
    assert not rig.stand_in.seen(to)
    [dropped] = [m for m in failover.relay.dropped if to in m.rcpt_tos]
    [kept] = failover.relay.to(to)
    assert dropped.message["Message-ID"] == kept.message["Message-ID"]


# --- The replaced order-confirmation service's environment, unchanged ---------------------------

def test_seed_two_variables_alone_deliver_an_order_confirmation(
        redis_server: RedisServer, stand_in: MailtrapStandIn,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    env = base_env(redis_server.url, free_port())
    for native in ("SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY", "SENDER_EMAIL", "SENDER_NAME",
                   "BRAND_NAME", "TRANSPORT", "TRANSPORTS"):
        env.pop(native, None)
    env.update(MAILTRAP_API_TOKEN=stand_in.token, EMAIL_SENDER="orders@shop.example.com",
               COMPANY_NAME="Tea & Co", SUPPORT_EMAIL="help@shop.example.com",
               # Not a seed-2 name: points the default host at the stand-in.
               MAILTRAP_BASE_URL=stand_in.url)
    with running(redis_server, stand_in, tmp_path_factory.mktemp("seed2"), env) as rig:
        to = address("customer")
        order = {"order_id": "A-1", "customer": {"name": "Ada", "email": to},
                 "items": [{"product_id": "p1", "name": "Tea", "quantity": 2, "price": 3.5}],
                 "total": 7.0}
        response = httpx.post(f"{rig.base_url}/api/order-confirmation", json=order,
                              headers=AUTH)
        assert response.json() == {"status": "success",
                                   "message": "Order confirmation email sent"}
        [request] = wait_for(lambda: stand_in.delivered(to), timeout=30,
                             message="the order confirmation at the stand-in")
    body = request.body
    assert body["from"] == {"email": "orders@shop.example.com", "name": "Tea & Co"}
    assert "A-1" in body["subject"] + body["html"]
    assert "Tea &amp; Co" in body["html"] and "help@shop.example.com" in body["html"]


# --- Attachments arrive intact through both transports -----------------------------------------

def files() -> tuple[list[dict[str, str]], dict[str, str]]:
    """A PDF-looking 200 KB file, a non-ASCII name and an inline image; their sha256 by name."""
    document = b"%PDF-1.7\n" + os.urandom(200_000)
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(2_000)
    entries = [
        {"filename": "Größe & Maß.pdf", "content_type": "application/pdf",
         "content": base64.b64encode(document).decode()},
        {"filename": "logo.png", "content_type": "image/png", "disposition": "inline",
         "content_id": "logo@shop", "content": base64.b64encode(image).decode()},
    ]
    sums = {"Größe & Maß.pdf": hashlib.sha256(document).hexdigest(),
            "logo.png": hashlib.sha256(image).hexdigest()}
    return entries, sums


def test_attachments_arrive_intact_in_mailtraps_json(rig: Rig) -> None:
    entries, sums = files()
    to = address("files")
    settled(rig, send(rig, to, attachments=entries), "sent")
    [request] = rig.stand_in.delivered(to)
    got = {a["filename"]: a for a in request.body["attachments"]}
    assert {name: hashlib.sha256(base64.b64decode(a["content"])).hexdigest()
            for name, a in got.items()} == sums
    assert got["logo.png"]["disposition"] == "inline"
    assert got["logo.png"]["content_id"] == "logo@shop"
    assert got["Größe & Maß.pdf"]["type"] == "application/pdf"


def test_attachments_arrive_intact_at_the_relay(failover: FailoverRig) -> None:
    failover.relay_up()
    rig = failover.rig
    wait_for(lambda: settled(rig, send(rig, address("warm")), "sent")["transport"] == "smtp",
             timeout=20, interval=0.3, message="the relay in use")
    entries, sums = files()
    to = address("files-smtp")
    assert settled(rig, send(rig, to, attachments=entries), "sent")["transport"] == "smtp"
    [mail] = failover.relay.to(to)
    message = mail.message
    assert message.get_content_type() == "multipart/mixed"
    got = {part.get_filename(): part for part in message.walk()
           if part.get_filename()}
    assert {name: hashlib.sha256(part.get_content()).hexdigest()
            for name, part in got.items()} == sums
    assert got["logo.png"]["Content-ID"] == "<logo@shop>"
    assert got["logo.png"].get_content_disposition() == "inline"
    related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
    assert any(p.get_content_type() == "text/html" for p in related.walk())


# --- Messages with their own content: never a template ------------------------------------------

def own(rig: Rig, to: str, **fields: Any) -> str:
    response = httpx.post(f"{rig.base_url}/v1/messages", headers=AUTH,
                          json={"to": to, "subject": "Hello {{ name }}", **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_own_html_is_sent_as_written_with_text_derived(rig: Rig) -> None:
    to = address("own-html")
    html = "<p>Total {{ 6 * 7 }} {% for x in y %}loop{% endfor %} &amp; <b>more</b></p>"
    final = settled(rig, own(rig, to, html=html), "sent")
    assert final["template"] == "(content)"
    [request] = rig.stand_in.delivered(to)
    assert request.body["subject"] == "Hello {{ name }}"
    assert request.body["html"] == html
    assert "Total {{ 6 * 7 }} {% for x in y %}loop{% endfor %} & more" in request.body["text"]
    assert "42" not in request.body["text"]


def test_own_mjml_is_compiled_and_text_alone_has_no_html(rig: Rig) -> None:
    to = address("own-mjml")
    mjml = ("<mjml><mj-body><mj-section><mj-column><mj-text>Hi {{ x }}</mj-text>"
            "</mj-column></mj-section></mj-body></mjml>")
    settled(rig, own(rig, to, mjml=mjml), "sent")
    [request] = rig.stand_in.delivered(to)
    assert "<mj-" not in request.body["html"] and "<table" in request.body["html"]
    assert "Hi {{ x }}" in request.body["html"] and "Hi {{ x }}" in request.body["text"]
    plain = address("own-text")
    settled(rig, own(rig, plain, text="Just {{ text }}"), "sent")
    [request] = rig.stand_in.delivered(plain)
    assert request.body["text"] == "Just {{ text }}" and "html" not in request.body


def test_own_content_over_smtp(failover: FailoverRig) -> None:
    failover.relay_up()
    rig = failover.rig
    wait_for(lambda: settled(rig, send(rig, address("warm")), "sent")["transport"] == "smtp",
             timeout=20, interval=0.3, message="the relay in use")
    to = address("own-smtp")
    assert settled(rig, own(rig, to, text="Only text"), "sent")["transport"] == "smtp"
    message = failover.relay.to(to)[0].message
    assert [p.get_content_type() for p in message.walk()] == ["multipart/alternative",
                                                              "text/plain"]
    assert message["Subject"] == "Hello {{ name }}"


# --- Sandbox and the staging allow-list ----------------------------------------------------------

def content_of(rig: Rig, message_id: str, auth: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.get(f"{rig.base_url}/v1/messages/{message_id}/content", headers=auth)


@pytest.mark.parametrize("how", ["request", "subject", "claim"])
def test_a_sandboxed_message_is_rendered_and_recorded_never_delivered(
        rig: Rig, how: str) -> None:
    to = address(f"sandbox-{how}")
    token = {"request": mint_token(TEST_SECRET, subject="mailtrap"),
             "subject": mint_token(TEST_SECRET, subject="sandboxed-caller"),
             "claim": mint_token(TEST_SECRET, subject="tester",
                                 email_sandbox=True)}[how]
    auth = {"Authorization": f"Bearer {token}"}
    body = {"template": "password_reset", "to": to, "data": {"email": to, "code": "777111"},
            **({"sandbox": True} if how == "request" else {})}
    response = httpx.post(f"{rig.base_url}/v1/messages", json=body, headers=auth)
    assert response.status_code == 202, response.text
    message_id = response.json()["id"]

    def finished() -> dict[str, Any] | None:
        current = status(rig, message_id)
        return current if current["status"] == "sandboxed" else None

    final = wait_for(finished, timeout=30, message="the message to be sandboxed")
    assert final["sandbox"] is True and final["transport"] == "sandbox"
    shown = content_of(rig, message_id, auth)
    assert shown.status_code == 200, shown.text
    assert "777111" in shown.json()["html"] and "777111" in shown.json()["text"]
    assert shown.json()["subject"]
    assert not rig.stand_in.seen(to)
    # Only its caller sees it.
    assert content_of(rig, message_id, {"Authorization": "Bearer " + mint_token(
        TEST_SECRET, subject="someone-else")}).status_code == 404


def test_content_is_shown_for_sandboxed_messages_only(rig: Rig) -> None:
    to = address("not-sandboxed")
    message_id = send(rig, to)
    settled(rig, message_id, "sent")
    answer = content_of(rig, message_id)
    assert answer.status_code == 404 and "sandboxed messages only" in answer.json()["message"]


def test_recipients_off_the_allow_list_are_withheld_and_shown(rig: Rig) -> None:
    to = address("allowed")
    message_id = send(rig, [to, "stranger@blocked.example.net"], cc="vip@elsewhere.example.org",
                      bcc="other@elsewhere.example.org")
    final = settled(rig, message_id, "sent")
    assert final["withheld_recipients"] == ["stranger@blocked.example.net",
                                            "other@elsewhere.example.org"]
    assert final["recipients"] == [to, "vip@elsewhere.example.org"]
    [request] = rig.stand_in.delivered(to)
    assert request.recipients() == [to, "vip@elsewhere.example.org"]
    refused = httpx.post(f"{rig.base_url}/v1/messages", headers=AUTH, json={
        "template": "password_reset", "to": "stranger@blocked.example.net",
        "data": {"email": "x@example.com", "code": "1"}})
    assert refused.status_code == 422 and refused.json()["error"] == "recipient_not_allowed"
