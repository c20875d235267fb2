"""Real parts for tests: redis-server, a recording SMTP server, service processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import redis
from aiosmtpd.controller import Controller

# Ports for the servers tests start: one implementation, shared with the benchmark.
from bench.procs import free_port

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class ProcessExited(AssertionError):
    """A process under test stopped while we waited on it."""


def wait_for(
    condition: Callable[[], T], *, timeout: float = 15.0, interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except ProcessExited:
            raise
        except Exception as exc:  # the thing may not be up yet
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


class RedisServer:
    """A private redis-server on a free port, with AOF, that a test may stop and start again."""

    def __init__(self, workdir: Path, *, fsync_always: bool = False) -> None:
        self.workdir = workdir
        self.fsync_always = fsync_always
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make test installs it)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--save", "", "--protected-mode", "no",
             "--appendfsync", "always" if self.fsync_always else "everysec"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.client().ping(), message=f"redis-server on {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that records what arrives and can be told to refuse.

    ``plan[address]`` is a list of replies given to successive DATA attempts for a message whose
    recipients include ``address`` (e.g. ``["451 4.3.0 busy"]`` refuses once, then accepts).
    """

    received: list[Received] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    plan: dict[str, list[str]] = field(default_factory=dict)
    #: Client (host, port) of each accepted message: distinct values = distinct connections.
    peers: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Offer PIPELINING (RFC 2920) as production relays do; aiosmtpd reads pipelined commands
    #: in order but does not advertise the extension itself.
    pipelining: bool = True

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.attempts[rcpt] = self.attempts.get(rcpt, 0) + 1
            for rcpt in envelope.rcpt_tos:
                if self.plan.get(rcpt):
                    return self.plan[rcpt].pop(0)
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
            )
            self.peers.append(tuple(session.peer))
        return "250 2.0.0 Ok: queued"

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.received if address in m.rcpt_tos]


@dataclass
class DroppingHandler(RecordingHandler):
    """The recording relay, able to lose its reply to a message it has received.

    ``drop[address]`` lists what happens to successive messages for ``address``: ``close``
    (FIN), ``abort`` (RST) or ``silent`` (no reply until the client gives up). Each such message
    is read to its final ``.`` and kept in ``dropped`` — the relay has it — then not answered.
    """

    drop: dict[str, list[str]] = field(default_factory=dict)
    dropped: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            how = next((self.drop[rcpt].pop(0) for rcpt in envelope.rcpt_tos
                        if self.drop.get(rcpt)), None)
            if how is not None:
                self.dropped.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                             bytes(envelope.content)))
        if how is None:
            return await super().handle_DATA(server, session, envelope)
        if how == "abort":
            server.transport.abort()
        elif how == "close":
            server.transport.close()
        await asyncio.Event().wait()  # until aiosmtpd cancels us: the connection is gone
        raise AssertionError("unreachable")


class SMTPServer:
    def __init__(self, port: int | None = None) -> None:
        self.handler = RecordingHandler()
        self.port = port or free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


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
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(timeout=5)
        code = self.process.returncode
        self.process = None
        return code


def base_env(redis_url: str, smtp_port: int, **overrides: str) -> dict[str, str]:
    """Environment for service processes: test Redis and SMTP, fast retries, no stray secrets."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("REDIS_", "SMTP_", "JWT_", "SENDER_", "EMAIL_SERVICE_"))}
    env.update(
        REDIS_URL=redis_url,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        SMTP_SECURITY="none",
        SENDER_EMAIL="noreply@shop.example.com",
        SENDER_NAME="Shop",
        BRAND_NAME="Shop",
        JWT_SECRET=TEST_SECRET,
        SEND_MAX_RETRIES="3",
        RETRY_MIN_BACKOFF_MS="50",
        RETRY_MAX_BACKOFF_MS="300",
        SMTP_TIMEOUT="5",
        SECRETS_DIR="/nonexistent",
        PYTHONUNBUFFERED="1",
        WORKER_METRICS_PORT="0",  # tests that scrape workers pick a free port
        # Each worker command clears its heartbeat folder on start: one folder per test stack.
        WORKER_HEARTBEAT_DIR=tempfile.mkdtemp(prefix="email-service-heartbeat-"),
    )
    env.update(overrides)
    return env


TEST_SECRET = "test-secret-for-hs256-0123456789abcdef"


def queue_idle(client: redis.Redis, queue: str = "email") -> bool:
    """No message waiting, delayed or being processed on ``queue``."""
    if client.llen(f"dramatiq:{queue}") or client.llen(f"dramatiq:{queue}.DQ"):
        return False
    return not any(client.scard(key) for key in client.scan_iter("dramatiq:__acks__.*"))


def dead_letters(client: redis.Redis, queue: str = "email") -> list[bytes]:
    return list(client.hvals(f"dramatiq:{queue}.XQ.msgs"))


def iter_parts(message: EmailMessage) -> Iterator[EmailMessage]:
    for part in message.walk():
        if isinstance(part, EmailMessage) and not part.is_multipart():
            yield part
