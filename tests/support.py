"""Real parts for tests: redis-server, a recording SMTP server, service processes.

The parts the benchmark shares live in the ``harness`` package; this module is the tests' one
entry to them, plus what only tests need.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any, TypeVar, cast

import redis

from harness.env import service_env
from harness.ports import free_port
from harness.processes import EMAIL_SERVICE, REPO, ServiceProcess
from harness.redis import RedisServer, dead_letters, queue_idle
from harness.smtp import DroppingHandler, Received, RecordingHandler, SMTPServer
from harness.stack import ServiceStack
from harness.waiting import ProcessExited, wait_for
from mailcore.config import Settings
from mailcore.status import decode_status, status_key, timeline_key

__all__ = [
    "EMAIL_SERVICE", "REPO", "TEST_SECRET", "DroppingHandler", "ProcessExited", "Received",
    "RecordingHandler", "RedisServer", "SMTPServer", "ServiceProcess", "ServiceStack",
    "app_settings", "base_env", "dead_letters", "free_port", "iter_parts", "make_settings",
    "queue_idle", "read_status", "wait_for", "wait_settled",
]

T = TypeVar("T")

TEST_SECRET = "test-secret-for-hs256-0123456789abcdef"


def base_env(redis_url: str, smtp_port: int, **overrides: str) -> dict[str, str]:
    """Environment for service processes: test Redis and SMTP, fast retries, no stray secrets."""
    env = service_env(
        redis_url, smtp_port, TEST_SECRET,
        BRAND_NAME="Shop",
        SEND_MAX_RETRIES="3",
        RETRY_MIN_BACKOFF_MS="50",
        RETRY_MAX_BACKOFF_MS="300",
        SMTP_TIMEOUT="5",
        WORKER_METRICS_PORT="0",  # tests that scrape workers pick a free port
        # Each worker command clears its heartbeat folder on start: one folder per test stack.
        WORKER_HEARTBEAT_DIR=tempfile.mkdtemp(prefix="email-service-heartbeat-"),
    )
    env.update(overrides)
    return env


def iter_parts(message: EmailMessage) -> Iterator[EmailMessage]:
    for part in message.walk():
        if isinstance(part, EmailMessage) and not part.is_multipart():
            yield part


def make_settings(**env: str) -> Settings:
    """Settings as a service process would read them from ``env`` alone (no secret files of
    this machine)."""
    return Settings.from_env({"SECRETS_DIR": "/nonexistent", **env})


def app_settings(redis_url: str, **env: str) -> Settings:
    """Settings of an ingress run in the test process (Starlette's TestClient) against
    ``redis_url``: the test secret, and no Redis event listener unless ``env`` asks."""
    return make_settings(**{"REDIS_URL": redis_url, "JWT_SECRET": TEST_SECRET,
                            "EVENTS_ENABLED": "false", **env})


def read_status(client: redis.Redis, prefix: str, message_id: str) -> dict[str, Any]:
    """A message's status as the API shows it, read straight from Redis."""
    fields = cast(dict[bytes, bytes], client.hgetall(status_key(prefix, message_id)))
    timeline = cast(list[bytes], client.lrange(timeline_key(prefix, message_id), 0, -1))
    return decode_status(fields, timeline)


def wait_settled(client: redis.Redis, prefix: str, message_id: str, expected: str,
                 *, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until the message is finished (sent, failed or dead); it must have ``expected``."""
    def done() -> dict[str, Any] | None:
        current = read_status(client, prefix, message_id)
        return current if current["status"] in {"sent", "failed", "dead"} else None

    final = wait_for(done, timeout=timeout, message=f"message {message_id} to settle")
    assert final["status"] == expected, final
    return final
