"""Real parts for tests: redis-server, a recording SMTP server, service processes.

The parts the benchmark shares live in the ``harness`` package; this module is the tests' one
entry to them, plus what only tests need.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

from harness.env import service_env
from harness.ports import free_port
from harness.processes import REPO, stop_group
from harness.redis import RedisServer, dead_letters, queue_idle
from harness.smtp import DroppingHandler, Received, RecordingHandler, SMTPServer
from harness.waiting import ProcessExited, wait_for
from mailcore.config import Settings

__all__ = [
    "EMAIL_SERVICE", "REPO", "TEST_SECRET", "DroppingHandler", "ProcessExited", "Received",
    "RecordingHandler",
    "RedisServer", "SMTPServer", "ServiceProcess", "app_settings", "base_env", "dead_letters",
    "free_port", "iter_parts", "make_settings", "queue_idle", "wait_for",
]

T = TypeVar("T")

#: How service processes are started by default: this checkout's ``email-service``.
EMAIL_SERVICE = (sys.executable, "-m", "email_service")


class ServiceProcess:
    """``email-service <args>`` (or ``program`` + ``args``, e.g. a command run inside the built
    image) as a subprocess in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path, *,
                 program: Sequence[str] = EMAIL_SERVICE) -> None:
        self.args = args
        self.env = dict(env)
        self.log_path = log_path
        self.program = tuple(program)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.program, *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True,
        )
        log.close()
        return self

    def wait_until(self, condition: Callable[[], T], *, timeout: float = 30,
                   message: str = "the process") -> T:
        """Wait for ``condition`` and return its value; fail at once with the log if the
        process exits first."""

        def check() -> T:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ProcessExited(f"{message}: {self.args[0]} exited with "
                                    f"{self.process.returncode}:\n{self.output()[-3000:]}")
            return condition()

        return wait_for(check, timeout=timeout, message=message)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int, *, group: bool = True) -> None:
        """Signal the process group, or (``group=False``) only the main process, as
        Kubernetes does with a container's PID 1."""
        assert self.process is not None
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        code = stop_group(self.process, timeout)
        self.process = None
        return code


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
