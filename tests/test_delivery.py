"""Delivery end to end through a real ingress and worker, to a relay that records what arrives:
addresses and headers arrive exactly as validated, a reply lost after the message went out is
retried as ``unconfirmed`` with the same Message-ID, and a job that cannot be sent fails at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from mailcore.queue import encode_message, queue_key
from mailcore.store import TemplateStoreWriter
from mailcore.template_resources import source_from_spec
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

#: "example" in fullwidth letters.
FULLWIDTH = "".join(chr(ord(char) + 0xFEE0) for char in "example")
AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='delivery')}"}


@dataclass
class Rig:
    relay: DroppingHandler
    redis: redis.Redis
    base_url: str
    metrics_url: str
    queue: str
    prefix: str
    worker: ServiceProcess


@pytest.fixture(scope="module")
def rig(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    logs: Path = tmp_path_factory.mktemp("delivery")
    relay = DroppingHandler()
    smtp_port, api_port, metrics_port = free_port(), free_port(), free_port()
    controller = Controller(relay, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    queue, prefix = f"delivery-{uuid.uuid4().hex[:6]}", f"delivery-{uuid.uuid4().hex[:6]}"
    env = base_env(redis_server.url, smtp_port, QUEUE_NAME=queue, KEY_PREFIX=prefix,
                   WORKER_METRICS_PORT=str(metrics_port), EVENTS_ENABLED="false",
                   RESET_LIMIT_PER_RECIPIENT="off", SMTP_TIMEOUT="2",
                   ALLOWED_SENDER_DOMAINS="straße.de")
    api = ServiceProcess(["api", "--host", "127.0.0.1", "--port", str(api_port)], env,
                         logs / "api.log").start()
    worker = ServiceProcess(["worker", "--processes", "1", "--threads", "2"], env,
                            logs / "worker.log").start()
    base_url = f"http://127.0.0.1:{api_port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/"
    try:
        api.wait_until(lambda: httpx.get(f"{base_url}/ready").status_code == 200,
                       message="the ingress to be ready")
        worker.wait_until(lambda: httpx.get(metrics_url).status_code == 200,
                          message="the worker's metrics")
        worker.wait_until(lambda: "ready for action" in worker.output(),
                          message="the worker to consume")
        yield Rig(relay, redis_server.client(), base_url, metrics_url, queue, prefix, worker)
    finally:
        api.stop()
        worker.stop()
        controller.stop()


def status(rig: Rig, message_id: str) -> dict[str, Any]:
    return read_status(rig.redis, rig.prefix, message_id)


def settled(rig: Rig, message_id: str, expected: str) -> dict[str, Any]:
    return wait_settled(rig.redis, rig.prefix, message_id, expected)


def send(rig: Rig, body: dict[str, Any]) -> str:
    response = httpx.post(f"{rig.base_url}/v1/messages", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def reset(to: Any, **extra: Any) -> dict[str, Any]:
    return {"template": "password_reset", "to": to,
            "data": {"email": "someone@example.com", "code": "424242"}, **extra}


def unconfirmed_count(rig: Rig) -> float:
    for family in text_string_to_metric_families(httpx.get(rig.metrics_url).text):
        for sample in family.samples:
            if sample.name == "email_unconfirmed_total" and sample.labels == {"transport": "smtp"}:
                return sample.value
    return 0.0


# --- Addresses and headers arrive as validated ---------------------------------------------------

def test_internationalised_domains_are_delivered_to_the_domain_named(rig: Rig) -> None:
    user = f"ada{uuid.uuid4().hex[:6]}"
    spoof = "=?utf-8?b?UGF5UGFsIFNlY3VyaXR5?="
    message_id = send(rig, reset(
        [{"email": f"{user}@straße.de", "name": spoof}, f"{user}@ΣΟΦΊΑ.gr",
         f"{user}@xn--kxae4blv.gr"],
        cc=[f"{user}@{FULLWIDTH}.com"], bcc=f"{user}@Bücher.example",
        reply_to={"email": "help@straße.de", "name": spoof},
        **{"from": {"email": "shop@STRAßE.de", "name": spoof}},
        subject=spoof,
        headers={"X-Campaign": spoof, "list-unsubscribe": "<https://shop.example.com/u/1>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}))
    settled(rig, message_id, "sent")
    [mail] = [m for m in rig.relay.received if f"{user}@xn--strae-oqa.de" in m.rcpt_tos]
    assert mail.mail_from == "shop@xn--strae-oqa.de"
    assert mail.rcpt_tos == [f"{user}@xn--strae-oqa.de", f"{user}@xn--kxae4bpq.gr",
                             f"{user}@xn--kxae4blv.gr", f"{user}@example.com",
                             f"{user}@xn--bcher-kva.example"]
    assert not [m for m in rig.relay.received if any("strasse" in r for r in m.rcpt_tos)]
    message = mail.message
    for field in ("From", "To", "Reply-To"):
        assert message[field].addresses[0].display_name == spoof, field
        assert message[field].addresses[0].domain == "xn--strae-oqa.de", field
    assert message["Subject"] == spoof and message["X-Campaign"] == spoof
    assert message["List-Unsubscribe"] == "<https://shop.example.com/u/1>"
    assert message["X-Email-Service-Id"] == message_id
    assert message["Message-ID"] == f"<{message_id}@xn--strae-oqa.de>"
    assert status(rig, message_id)["recipients"][0] == f"{user}@xn--strae-oqa.de"


def test_own_and_filter_headers_cannot_be_sent(rig: Rig) -> None:
    for name in ("X-Email-Service-Id", "x-email-service-id", "Disposition-Notification-To",
                 "Resent-From", "ARC-Seal", "Content-Disposition", "X-Spam-Status"):
        response = httpx.post(f"{rig.base_url}/v1/messages",
                              json=reset("a@example.com", headers={name: "x"}), headers=AUTH)
        assert response.status_code == 422, name
        assert response.json()["details"][0]["field"] == "headers"


# --- The ambiguous outcome -----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["close", "abort"])
def test_a_lost_reply_after_the_message_went_out_is_retried_as_unconfirmed(
        rig: Rig, how: str) -> None:
    to = f"lost-{how}-{uuid.uuid4().hex[:6]}@example.com"
    rig.relay.drop[to] = [how]
    before = unconfirmed_count(rig)
    message_id = send(rig, reset(to))
    final = settled(rig, message_id, "sent")
    assert final["attempts"] == 2
    assert [(e["status"], e.get("outcome")) for e in final["timeline"]] == [
        ("queued", None), ("sending", None), ("retrying", "unconfirmed"), ("sending", None),
        ("sent", None)]
    assert "may have been accepted" in final["timeline"][2]["detail"]
    # The relay has two copies; both carry the one Message-ID, so a receiver can drop one.
    [dropped] = [m for m in rig.relay.dropped if to in m.rcpt_tos]
    [delivered] = [m for m in rig.relay.received if to in m.rcpt_tos]
    assert dropped.message["Message-ID"] == delivered.message["Message-ID"] == \
        f"<{message_id}@shop.example.com>"
    wait_for(lambda: unconfirmed_count(rig) == before + 1, message="email_unconfirmed_total")


# --- Jobs that cannot be sent fail at once ------------------------------------------------------

def forge(rig: Rig, job: Any, message_id: str) -> None:
    """Put ``job`` on the queue as the ingress would (a job it would never have written)."""
    redis_id, body = encode_message({"id": message_id}, rig.queue)
    message = orjson.loads(body)
    message["args"] = [job]
    rig.redis.hset(f"{queue_key(rig.queue)}.msgs", redis_id, orjson.dumps(message))
    rig.redis.rpush(queue_key(rig.queue), redis_id)


def dead_letter(rig: Rig, message_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for raw in rig.redis.hvals(f"{queue_key(rig.queue)}.XQ.msgs"):
            message = orjson.loads(raw)
            if message["message_id"] == message_id:
                return dict(message)
        return None

    return wait_for(find, timeout=30, message=f"{message_id} in the dead-letter queue")


GOOD_REQUEST = reset("ok@example.com")


@pytest.mark.parametrize(("request_body", "reason"), [
    ({k: v for k, v in GOOD_REQUEST.items() if k != "to"}, "to: Field required"),
    ({**GOOD_REQUEST, "to": 42}, "to"),
    ({**GOOD_REQUEST, "to": "zoë@example.com"}, "must be ASCII"),
    ({**GOOD_REQUEST, "to": "a@example.com\r\nBcc: victim@example.org"}, "CR or LF"),
    ({**GOOD_REQUEST, "headers": {"X-Email-Service-Id": "forged"}}, "set by the service"),
    ({**GOOD_REQUEST, "unexpected": True}, "unexpected"),
    ({**GOOD_REQUEST, "template": "../../etc/passwd"}, "template"),
    (None, "request"),
    ([1, 2], "request"),
])
def test_an_invalid_job_fails_at_once_saying_why(
        rig: Rig, request_body: Any, reason: str) -> None:
    message_id = str(uuid.uuid4())
    forge(rig, {"id": message_id, "request": request_body, "source": "api"}, message_id)
    final = settled(rig, message_id, "failed")
    assert final["attempts"] == 1
    assert final["last_error"]["message"].startswith("invalid job: request")
    assert reason in final["last_error"]["message"]
    assert dead_letter(rig, message_id)["options"].get("retries", 0) == 0


@pytest.mark.parametrize("job", [{"request": GOOD_REQUEST}, {"id": "", "request": GOOD_REQUEST},
                                 {"id": 7, "request": GOOD_REQUEST}, "not-a-job"])
def test_a_job_without_a_usable_id_is_not_retried(rig: Rig, job: Any) -> None:
    message_id = str(uuid.uuid4())
    forge(rig, job, message_id)
    assert dead_letter(rig, message_id)["options"].get("retries", 0) == 0
    assert not [m for m in rig.relay.received if "ok@example.com" in m.rcpt_tos]


@pytest.mark.parametrize("sender", ["not an address", "Shop <zoë@example.com>",
                                    "a@example.com, b@example.com", "Grp: a@example.com;"])
def test_an_unusable_template_sender_fails_the_message_at_once(rig: Rig, sender: str) -> None:
    """The operator refuses such a template; one in the store anyway (written before the rule,
    or by hand) fails each message at once, naming the template's field."""
    name = f"sender-{uuid.uuid4().hex[:6]}"
    source = source_from_spec(f"default/{name}", {
        "subject": "Hi", "html": "<p>Hi</p>", "text": "Hi", "from": sender})
    writer = TemplateStoreWriter(rig.redis, rig.prefix)
    writer.put(f"default/{name}", source, {"kind": "test"})
    wait_for(lambda: httpx.get(f"{rig.base_url}/v1/templates/{name}", headers=AUTH)
             .status_code == 200, message="the ingress to see the template")
    to = f"override-{uuid.uuid4().hex[:6]}@example.com"
    message_id = send(rig, {"template": name, "to": to})
    final = settled(rig, message_id, "failed")
    assert final["attempts"] == 1
    assert final["last_error"]["message"].startswith("the template's from")
    assert dead_letter(rig, message_id)["options"].get("retries", 0) == 0
    assert not rig.relay.to(to)
