"""Webhooks end to end: a real send through the ingress and worker processes, the lifecycle
stream, ``email-service webhooks`` (fan-out and delivery), to a local receiver that verifies
every signature with the reference ``standardwebhooks`` package and fails at first."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from mailcore.tokens import mint_token

from .support import (
    TEST_SECRET,
    RedisServer,
    ServiceProcess,
    ServiceStack,
    SMTPServer,
    base_env,
    free_port,
)

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='shop', scope='email:admin')}"}
SENDER = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='shop')}"}
OTHER = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='billing')}"}
#: The global endpoint of the chart's file, with a secret known in advance.
DECLARED_SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ=="
#: Attempts the receiver fails with 500 before it accepts a webhook-id.
FAILURES = 2


@dataclass
class Hit:
    path: str
    webhook_id: str
    verified_by: list[str]
    payload: dict[str, Any] | None
    answered: int


@dataclass
class Receiver:
    """What the receiver saw; ``secrets`` by name, each tried on every request."""

    port: int = 0
    secrets: dict[str, str] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    #: Paths answered 500 for now.
    down: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def delivered(self, path: str) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.hits if hit.path == path and hit.answered == 200]

    def attempts(self, webhook_id: str) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.hits if hit.webhook_id == webhook_id]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {key: value for key, value in self.headers.items()}
            verified_by, payload = [], None
            for name, secret in list(receiver.secrets.items()):
                try:
                    payload = Webhook(secret).verify(body, headers)
                    verified_by.append(name)
                except WebhookVerificationError:
                    pass
            webhook_id = self.headers.get("webhook-id", "")
            with receiver.lock:
                earlier = sum(1 for hit in receiver.hits if hit.webhook_id == webhook_id
                              and hit.path == self.path)
                fail = self.path in receiver.down or (self.path == "/flaky"
                                                      and earlier < FAILURES)
                answer = 500 if fail or not verified_by else 200
                receiver.hits.append(Hit(self.path, webhook_id, verified_by, payload, answer))
            self.send_response(answer)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    # http.server's backlog of 5 resets connections under a burst: an attempt that never
    # reaches the handler would be a retry the receiver did not see.
    request_queue_size = 128


@dataclass
class Live:
    stack: ServiceStack
    webhooks: ServiceProcess
    receiver: Receiver
    metrics_port: int
    redis: RedisServer
    queue: str

    def register(self, path: str, events: list[str], headers: dict[str, str] = ADMIN
                 ) -> dict[str, Any]:
        answer = httpx.post(f"{self.stack.base_url}/v1/webhooks", headers=headers,
                            json={"url": self.receiver.url(path), "events": events})
        assert answer.status_code == 201, answer.text
        created: dict[str, Any] = answer.json()
        self.receiver.secrets[path] = created["secret"]  # the receiver verifies with it
        return created

    def send(self, headers: dict[str, str] = SENDER) -> str:
        to = f"hook-{uuid.uuid4().hex[:8]}@example.org"
        answer = httpx.post(f"{self.stack.base_url}/v1/messages", headers=headers,
                            json={"template": "password_reset", "to": to,
                                  "data": {"email": to, "code": "4711"}})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, smtp_server: SMTPServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    receiver = Receiver(secrets={"declared": DECLARED_SECRET})
    server = _Server(("127.0.0.1", 0), _handler(receiver))
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    logs = tmp_path_factory.mktemp("webhook-logs")
    declared = logs / "endpoints.json"
    declared.write_text(json.dumps([{
        "id": "audit", "url": receiver.url("/declared"), "events": ["sent"],
        "secrets": [DECLARED_SECRET]}]))
    prefix = f"live-hooks-{uuid.uuid4().hex[:8]}"
    env = base_env(redis_server.url, smtp_server.port, KEY_PREFIX=prefix, QUEUE_NAME=prefix,
                   WEBHOOKS_ENABLED="true", WEBHOOKS_QUEUE=f"{prefix}-hooks",
                   WEBHOOKS_ALLOWED_HOSTS="127.0.0.1", WEBHOOKS_CLUSTER_HOSTS="127.0.0.1",
                   WEBHOOKS_ALLOWED_NETWORKS="127.0.0.1/32",
                   WEBHOOKS_MIN_BACKOFF_SECONDS="0.05", WEBHOOKS_MAX_BACKOFF_SECONDS="0.2",
                   WEBHOOKS_RETRY_FOR_SECONDS="2", WEBHOOKS_ENDPOINTS_FILE=str(declared))
    metrics_port = free_port()
    # Two processes: two fan-out consumers of one group, as two replicas would be.
    webhooks_env = {**env, "WORKER_METRICS_PORT": str(metrics_port),
                    # Its own heartbeat folder (each command clears its folder on start).
                    "WORKER_HEARTBEAT_DIR": str(logs / "heartbeat")}
    webhooks = ServiceProcess(["webhooks", "--processes", "2", "--threads", "2"], webhooks_env,
                              Path(logs / "webhooks.log"))
    with ServiceStack(env, logs) as stack:
        webhooks.start()
        try:
            webhooks.wait_until(lambda: ServiceStack.WORKER_READY in webhooks.output(),
                                timeout=60, message="the webhooks worker to start")
            yield Live(stack, webhooks, receiver, metrics_port, redis_server,
                       f"dramatiq:{prefix}-hooks")
        finally:
            webhooks.stop()
            server.shutdown()
            server.server_close()


def test_a_send_is_announced_signed_and_retried_until_accepted(live: Live) -> None:
    live.register("/flaky", ["queued", "sent"])
    message_id = live.send()

    def both() -> list[Hit] | None:
        hits = [h for h in live.receiver.delivered("/flaky")
                if h.payload and h.payload["data"]["message_id"] == message_id]
        return hits if len(hits) == 2 else None

    hits = live.webhooks.wait_until(both, timeout=60, message="queued and sent, delivered")
    assert hits is not None
    by_type = {hit.payload["type"]: hit for hit in hits if hit.payload}
    assert set(by_type) == {"message.queued", "message.sent"}
    sent = by_type["message.sent"]
    assert sent.payload is not None
    data = sent.payload["data"]
    assert data["owner"] == "jwt::shop" and data["template"] == "password_reset"
    assert data["id"] == sent.webhook_id and data["transport"] == "smtp"
    # Failed twice, then accepted: three attempts, all with the same webhook-id, all signed.
    attempts = [a for a in live.receiver.attempts(sent.webhook_id) if a.path == "/flaky"]
    assert [a.answered for a in attempts] == [500] * FAILURES + [200]
    assert all(a.verified_by == ["/flaky"] for a in attempts)
    # The chart's global endpoint got the sent event too (another secret, no owner scope).
    live.webhooks.wait_until(
        lambda: any(h.webhook_id == sent.webhook_id and h.verified_by == ["declared"]
                    for h in live.receiver.delivered("/declared")),
        timeout=30, message="the declared endpoint's delivery")


def test_other_owners_events_do_not_reach_an_endpoint(live: Live) -> None:
    live.register("/scoped", ["sent"])
    mine, theirs = live.send(), live.send(OTHER)

    def ids() -> set[str]:
        return {h.payload["data"]["message_id"] for h in live.receiver.delivered("/declared")
                if h.payload}

    live.webhooks.wait_until(lambda: {mine, theirs} <= ids(), timeout=60,
                             message="both sends at the global endpoint")
    live.webhooks.wait_until(lambda: any(h.payload and h.payload["data"]["message_id"] == mine
                                         for h in live.receiver.delivered("/scoped")),
                             timeout=30, message="the owner's send")
    scoped = {h.payload["data"]["message_id"] for h in live.receiver.delivered("/scoped")
              if h.payload}
    assert theirs not in scoped  # both were fanned out before the global one got them
    # Two consumers share the stream: each event was fanned out once (no crash, no duplicate).
    declared = [h.webhook_id for h in live.receiver.delivered("/declared")]
    assert len(declared) == len(set(declared))


def test_rotation_keeps_both_secrets_valid(live: Live) -> None:
    endpoint = live.register("/rotating", ["sent"])
    rotated = httpx.post(f"{live.stack.base_url}/v1/webhooks/{endpoint['id']}/rotate-secret",
                         headers=ADMIN)
    assert rotated.status_code == 200
    live.receiver.secrets["new"] = rotated.json()["secret"]
    message_id = live.send()
    hit = live.webhooks.wait_until(
        lambda: next((h for h in live.receiver.delivered("/rotating")
                      if h.payload and h.payload["data"]["message_id"] == message_id), None),
        timeout=60, message="the delivery after the rotation")
    assert hit is not None
    assert sorted(hit.verified_by) == ["/rotating", "new"]  # the old secret, and the new


def test_a_receiver_that_keeps_failing_ends_in_the_dead_letters(live: Live) -> None:
    live.receiver.down.add("/always-fail")
    endpoint = live.register("/always-fail", ["sent"])
    message_id = live.send()

    def dead() -> list[dict[str, Any]] | None:
        answer = httpx.get(f"{live.stack.base_url}/v1/webhooks/dead-letters", headers=ADMIN)
        letters = [d for d in answer.json()["dead_letters"]
                   if d["event"]["message_id"] == message_id]
        return letters or None

    letters = live.webhooks.wait_until(dead, timeout=60, message="the dead letter")
    assert letters is not None
    [letter] = letters
    assert letter["endpoint_id"] == endpoint["id"] and "500" in letter["last_error"]
    assert letter["attempts"] >= 3  # retried for WEBHOOKS_RETRY_FOR_SECONDS first
    attempts = live.receiver.attempts(letter["event"]["id"])
    assert len([a for a in attempts if a.path == "/always-fail"]) == letter["attempts"]
    # Visible to another caller? No.
    other_admin = {"Authorization": "Bearer " + mint_token(TEST_SECRET, subject="billing",
                                                           scope="email:admin")}
    others = httpx.get(f"{live.stack.base_url}/v1/webhooks/dead-letters", headers=other_admin)
    assert message_id not in others.text

    # And counted for Prometheus.
    def scraped() -> str:
        with urllib.request.urlopen(
                f"http://127.0.0.1:{live.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def counted() -> str | None:
        text = scraped()
        # At least this one (other tests of the module may have dead-lettered theirs).
        return text if re.search(r"^email_webhook_dead_letters_total [1-9]", text, re.M) \
            else None

    metrics = live.webhooks.wait_until(counted, timeout=30, message="the dead-letter metric")
    assert metrics is not None
    assert re.search(r"^email_webhook_dead_letter_size [1-9]", metrics, re.M)
    assert 'email_webhook_deliveries_total{outcome="retry"}' in metrics


@pytest.mark.parametrize("args", [["junk"], [{"event": {}}], [{"endpoint_id": 1, "event": None}],
                                  [], [1, 2], [{"endpoint_id": "ep_x", "attempt": "1",
                                        "event": {"id": "e", "type": "t", "timestamp": "x"}}]])
def test_a_malformed_delivery_message_is_dropped_not_retried_forever(
        live: Live, args: list[object]) -> None:
    client = live.redis.client()
    redis_id = str(uuid.uuid4())
    message = {"queue_name": live.queue.removeprefix("dramatiq:"), "actor_name": "deliver_webhook",
               "args": args, "kwargs": {}, "options": {"redis_message_id": redis_id},
               "message_id": str(uuid.uuid4()), "message_timestamp": 0}
    client.hset(f"{live.queue}.msgs", redis_id, json.dumps(message))
    client.rpush(live.queue, redis_id)
    live.webhooks.wait_until(lambda: not client.hexists(f"{live.queue}.msgs", redis_id)
                             and not client.lrange(live.queue, 0, -1), timeout=30,
                             message="the malformed message to be dropped")
    # Whatever it was, the worker is still delivering.
    message_id = live.send()
    live.webhooks.wait_until(
        lambda: any(h.payload and h.payload["data"]["message_id"] == message_id
                    for h in live.receiver.delivered("/declared")),
        timeout=30, message="a delivery after the malformed message")


def test_a_dead_letter_can_be_delivered_again(live: Live) -> None:
    live.receiver.down.add("/down-then-up")
    endpoint = live.register("/down-then-up", ["sent"])
    message_id = live.send()

    def dead() -> dict[str, Any] | None:
        answer = httpx.get(f"{live.stack.base_url}/v1/webhooks/dead-letters", headers=ADMIN)
        return next((d for d in answer.json()["dead_letters"]
                     if d["event"]["message_id"] == message_id
                     and d["endpoint_id"] == endpoint["id"]), None)

    letter = live.webhooks.wait_until(dead, timeout=60, message="the dead letter")
    assert letter is not None
    url = f"{live.stack.base_url}/v1/webhooks/dead-letters/{letter['id']}/retry"
    other_admin = {"Authorization": "Bearer " + mint_token(TEST_SECRET, subject="billing",
                                                           scope="email:admin")}
    assert httpx.post(url, headers=other_admin).status_code == 404
    assert httpx.post(url, headers=SENDER).status_code == 403
    live.receiver.down.discard("/down-then-up")  # the receiver is back
    answer = httpx.post(url, headers=ADMIN)
    assert answer.status_code == 202 and answer.json() == {"id": letter["id"], "status": "queued"}
    assert httpx.post(url, headers=ADMIN).status_code == 404  # queued once, no longer dead
    hit = live.webhooks.wait_until(
        lambda: next((h for h in live.receiver.delivered("/down-then-up")
                      if h.webhook_id == letter["event"]["id"]), None),
        timeout=30, message="the redelivery")
    assert hit is not None and hit.verified_by == ["/down-then-up"]
    assert dead() is None
    for bad in ("x", "evt_1:ep", letter["id"] + "x" * 70, "..%2F..%2Fv1"):
        assert httpx.post(f"{live.stack.base_url}/v1/webhooks/dead-letters/{bad}/retry",
                          headers=ADMIN).status_code == 404


def test_other_features_events_reach_their_subscribers(live: Live) -> None:
    # The suppression list's `suppressed` event (written by the door) goes the same way.
    live.register("/suppressed", ["suppressed"])
    to = f"blocked-{uuid.uuid4().hex[:8]}@example.org"
    added = httpx.post(f"{live.stack.base_url}/v1/suppressions", headers=ADMIN,
                       json={"address": to, "reason": "manual"})
    assert added.status_code == 201, added.text
    answer = httpx.post(f"{live.stack.base_url}/v1/messages", headers=SENDER,
                        json={"template": "password_reset", "to": to,
                              "data": {"email": to, "code": "1"}})
    assert answer.status_code == 202, answer.text
    message_id = answer.json()["id"]
    hit = live.webhooks.wait_until(
        lambda: next((h for h in live.receiver.delivered("/suppressed")
                      if h.payload and h.payload["data"]["message_id"] == message_id), None),
        timeout=30, message="the suppressed event")
    assert hit is not None and hit.payload is not None
    assert hit.payload["type"] == "message.suppressed"
    assert hit.payload["data"]["owner"] == "jwt::shop"


def test_the_worker_probe_judges_the_webhooks_processes(live: Live) -> None:
    # The chart probes the webhooks pods with `email-service probe worker`.
    def probe(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "email_service", "probe", "worker", *flags],
                              env=live.webhooks.env, capture_output=True, text=True, timeout=30,
                              check=False)

    ready = live.webhooks.wait_until(lambda: (r := probe("--ready")).returncode == 0 and r,
                                     timeout=30, message="a ready probe")
    assert ready
    assert probe().returncode == 0


def test_a_retried_dead_letter_is_announced_queued_again(live: Live,
                                                          smtp_server: SMTPServer) -> None:
    """Gap of the first delivery: a dead letter retried (the admin API) is queued again under
    its id; its ``queued`` event, written in the re-queue transaction, reaches the receiver
    like the accept's, then ``sent`` when the retry is delivered."""
    live.register("/retried", ["queued", "failed", "sent"])
    to = f"dead-{uuid.uuid4().hex[:8]}@example.org"
    smtp_server.handler.plan[to] = ["554 5.6.0 refused once, by plan"]  # permanent: failed
    answer = httpx.post(f"{live.stack.base_url}/v1/messages", headers=SENDER,
                        json={"template": "password_reset", "to": to,
                              "data": {"email": to, "code": "4711"}})
    assert answer.status_code == 202, answer.text
    message_id = answer.json()["id"]

    def seen(kinds: list[str]) -> list[dict[str, Any]] | None:
        found = [hit.payload["data"] for hit in live.receiver.delivered("/retried")
                 if hit.payload and hit.payload["data"]["message_id"] == message_id]
        return found if [event["type"] for event in found] == kinds else None

    first = ["message.queued", "message.failed"]
    live.webhooks.wait_until(lambda: seen(first) or seen(first[::-1]), timeout=60,
                             message="queued and failed, delivered")
    retried = httpx.post(f"{live.stack.base_url}/v1/dead-letters/{message_id}/retry",
                         headers=ADMIN)
    assert retried.status_code == 202, retried.text

    def announced() -> list[dict[str, Any]] | None:
        found = [hit.payload["data"] for hit in live.receiver.delivered("/retried")
                 if hit.payload and hit.payload["data"]["message_id"] == message_id]
        kinds = sorted(event["type"] for event in found)
        return found if kinds == sorted([*first, "message.queued", "message.sent"]) else None

    events = live.webhooks.wait_until(announced, timeout=60,
                                      message="queued again and sent, delivered")
    assert events is not None
    again = [event for event in events if event["type"] == "message.queued"
             and event.get("detail") == "retried from the dead-letter queue"]
    assert len(again) == 1 and again[0]["owner"] == "jwt::shop"
    assert again[0]["template"] == "password_reset" and again[0]["recipients"] == [to]
