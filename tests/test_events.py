"""``password_reset_events``: several replicas send each event once; Redis restarts are survived."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from .support import (
    TEST_SECRET,
    RedisServer,
    ServiceStack,
    SMTPServer,
    base_env,
    make_settings,
    queue_idle,
    wait_for,
)

pytestmark = pytest.mark.slow
CHANNEL = "password_reset_events"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_two_replicas_send_each_event_once(
    private_redis: RedisServer, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    env = base_env(private_redis.url, smtp_server.port)
    with ServiceStack(env, tmp_path, apis=2, threads=2) as stack:
        replicas = stack.apis
        client = private_redis.client()
        wait_for(lambda: client.pubsub_numsub(CHANNEL)[0][1] == 2,
                 message="both replicas to subscribe")
        addresses = [f"twice-{uuid.uuid4().hex[:6]}-{i}@example.org" for i in range(5)]
        for address in addresses:
            event = json.dumps({"email": address, "code": "246810", "timestamp": 1763900000})
            assert client.publish(CHANNEL, event) == 2
        for address in addresses:
            wait_for(partial(smtp_server.handler.to, address), message=f"mail to {address}")
        # Both replicas have handled every event: one queued it, the other skipped it.
        wait_for(lambda: sum(r.output().count("duplicate event skipped") for r in replicas) == 5,
                 message="the other replica to skip each duplicate")
        wait_for(lambda: queue_idle(client), message="the queue to drain")
        for address in addresses:
            assert len(smtp_server.handler.to(address)) == 1


def test_listener_survives_a_redis_restart(
    private_redis: RedisServer, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    env = base_env(private_redis.url, smtp_server.port)
    with ServiceStack(env, tmp_path, threads=2) as stack:
        api, url, worker = stack.api, stack.base_url, stack.worker
        private_redis.stop()
        api.wait_until(lambda: httpx.get(f"{url}/ready").status_code == 503,
                       message="readiness to turn false")
        private_redis.start()
        client = private_redis.client()
        api.wait_until(lambda: client.pubsub_numsub(CHANNEL)[0][1] == 1, timeout=30,
                       message="the listener to resubscribe")
        assert "reconnecting" in api.output()
        address = f"after-restart-{uuid.uuid4().hex[:6]}@example.org"
        client.publish(CHANNEL, json.dumps({"email": address, "code": "1"}))
        worker.wait_until(lambda: smtp_server.handler.to(address), timeout=30,
                          message="the event's mail after the restart")
        assert httpx.get(f"{url}/ready").status_code == 200


# --- no event, whatever its shape, stops the listener -----------------------------------------

SECRET_CODE = "SECRET-CODE-4711"
#: JSON texts of every type and awkward size or encoding, put raw into each field in turn.
HOSTILE_VALUES = [
    "null", "true", "false", "0", "-1", "18446744073709551616", "1" + "0" * 400, "1.5", "-0.0",
    "1e308", "1e999", '""', '"' + "x" * 20_000 + '"', '"Zo\\u00eb \\u2713 \\u8acb"',
    '"\\ud800"', '"x\\udc00"', '"\\u0000"', '"a\\r\\nBcc: x@example.org"', "[]",
    '[1, "a", null, {}]', "{}", '{"a": {"b": [1]}}', "[" * 40 + "]" * 40,
    '{"x": ' * 40 + "1" + "}" * 40, '"00-' + "0" * 32 + "-" + "0" * 16 + '-01"',
    '"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"',
]
FIELDS = ["email", "code", "timestamp", "traceparent", "tracestate", "unknown"]


def hostile_events() -> list[bytes]:
    events: list[bytes] = []
    for index, raw in enumerate(HOSTILE_VALUES):
        for field in FIELDS:
            parts = {"email": f'"hostile-{index}-{field}@example.org"',
                     "code": f'"{SECRET_CODE}"', "timestamp": "1763900000"}
            parts[field] = raw
            events.append(("{" + ", ".join(f'"{k}": {v}' for k, v in parts.items())
                           + "}").encode())
    events += [b"[]", b'"just a string"', b"1", b"null", b"true", b"not json", b"", b"{",
               b"\xff\xfe\x00\x01binary", b'{"email": "a@example.org"' + b" " * 70_000 + b"}",
               ("{" + '"a": {' * 300 + "}" * 300 + "}").encode(),
               b'{"email": "dup@example.org", "email": ["x"], "code": "1"}']
    return events


def test_no_event_can_stop_the_listener(
    private_redis: RedisServer, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    env = base_env(private_redis.url, smtp_server.port, RESET_LIMIT_PER_RECIPIENT="off")
    with ServiceStack(env, tmp_path, threads=4) as stack:
        api, url, worker = stack.api, stack.base_url, stack.worker
        client = private_redis.client()
        wait_for(lambda: client.pubsub_numsub(CHANNEL)[0][1] == 1, message="the subscription")
        events = hostile_events()
        for raw in events:
            client.publish(CHANNEL, raw)
        address = f"after-hostile-{uuid.uuid4().hex[:6]}@example.org"
        client.publish(CHANNEL, json.dumps({"email": address, "code": "1"}))
        worker.wait_until(lambda: smtp_server.handler.to(address), timeout=60,
                          message="the valid event's mail after the hostile ones")
        assert client.pubsub_numsub(CHANNEL)[0][1] == 1
        assert httpx.get(f"{url}/ready").status_code == 200
        output = api.output()
        assert "stopped unexpectedly" not in output and "Traceback" not in output
        # Every event was handled: queued (valid ones, e.g. odd tracing fields), or refused
        # with one log line each.
        lines = output.splitlines()
        queued = sum('"message":"queued"' in line for line in lines)
        skipped = sum("event skipped" in line for line in lines)
        assert queued + skipped == len(events) + 1, (queued, skipped)
        assert skipped > 60
        assert SECRET_CODE not in output  # ... without the code they carried


def test_a_stopped_listener_fails_readiness_and_is_restarted(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from service.app import create_app
    from service.events import EventListener

    healthy = threading.Event()
    real_run = EventListener.run

    async def dying_run(self: EventListener) -> None:
        if not healthy.is_set():
            raise RuntimeError("the listener died")  # as an unforeseen bug would end it
        await real_run(self)

    monkeypatch.setattr(EventListener, "run", dying_run)
    settings = make_settings(REDIS_URL=redis_server.url, JWT_SECRET=TEST_SECRET,
                             EVENTS_CHANNEL=f"events-{uuid.uuid4().hex[:8]}",
                             QUEUE_NAME="events-supervised")
    with TestClient(create_app(settings)) as client:
        listener = client.app.state.event_listener  # type: ignore[attr-defined]
        wait_for(lambda: listener.restarts >= 1, message="the listener to be restarted")
        refused = client.get("/ready")
        assert refused.status_code == 503 and "listener" in refused.json()["reason"]
        healthy.set()
        wait_for(lambda: client.get("/ready").status_code == 200, timeout=20,
                 message="readiness once the restarted listener subscribed")
        channel = settings.events.channel
        assert redis_server.client().pubsub_numsub(channel)[0][1] == 1
