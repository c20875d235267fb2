"""``password_reset_events``: several replicas send each event once; Redis restarts are survived."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import (
    RedisServer,
    ServiceProcess,
    SMTPServer,
    base_env,
    free_port,
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


def start_api(env: dict[str, str], log: Path) -> tuple[ServiceProcess, str]:
    port = free_port()
    api = ServiceProcess(["api", "--host", "127.0.0.1", "--port", str(port)], env, log).start()
    url = f"http://127.0.0.1:{port}"
    api.wait_until(lambda: httpx.get(f"{url}/ready").status_code == 200, message="ingress ready")
    return api, url


def test_two_replicas_send_each_event_once(
    private_redis: RedisServer, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    env = base_env(private_redis.url, smtp_server.port)
    replicas = [start_api(env, tmp_path / f"api{i}.log")[0] for i in range(2)]
    worker = ServiceProcess(["worker", "--processes", "1", "--threads", "2"], env,
                            tmp_path / "worker.log").start()
    client = private_redis.client()
    try:
        wait_for(lambda: client.pubsub_numsub(CHANNEL)[0][1] == 2,
                 message="both replicas to subscribe")
        addresses = [f"twice-{uuid.uuid4().hex[:6]}-{i}@example.org" for i in range(5)]
        for address in addresses:
            event = json.dumps({"email": address, "code": "246810", "timestamp": 1763900000})
            assert client.publish(CHANNEL, event) == 2
        for address in addresses:
            wait_for(lambda a=address: smtp_server.handler.to(a), message=f"mail to {address}")
        # Both replicas have handled every event: one queued it, the other skipped it.
        wait_for(lambda: sum(r.output().count("duplicate event skipped") for r in replicas) == 5,
                 message="the other replica to skip each duplicate")
        wait_for(lambda: queue_idle(client), message="the queue to drain")
        for address in addresses:
            assert len(smtp_server.handler.to(address)) == 1
    finally:
        for process in [*replicas, worker]:
            process.stop()


def test_listener_survives_a_redis_restart(
    private_redis: RedisServer, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    env = base_env(private_redis.url, smtp_server.port)
    api, url = start_api(env, tmp_path / "api.log")
    worker = ServiceProcess(["worker", "--processes", "1", "--threads", "2"], env,
                            tmp_path / "worker.log").start()
    try:
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
    finally:
        api.stop()
        worker.stop()
