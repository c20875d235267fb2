"""The processes a benchmark run starts, and what it reads off them (readiness, counts, RSS).

Every process is started in its own session and stopped through its own process group, so a run
ends exactly what it started and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import redis

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range: one handed out for binding to port 0 may
    be reused by an outgoing connection before the server we start binds it."""
    try:
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) - 1
    except (OSError, ValueError, IndexError):
        high = 32767
    for _ in range(200):
        port = random.randint(max(1024, high - 12000), high)  # noqa: S311 - not a secret
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port below the ephemeral range")


class ProcessExited(RuntimeError):
    """A process the run depends on stopped; waiting on it any longer is pointless."""


def wait_for(condition: Callable[[], T], *, timeout: float, what: str,
             interval: float = 0.01) -> T:
    """Poll until ``condition`` is truthy; raise at the deadline."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except ProcessExited:
            raise
        except Exception as exc:  # not up yet
            last = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                       + (f" (last error: {last!r})" if last else ""))


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has used (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent not idle since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


class Proc:
    """A subprocess in its own process group, its output kept in a log (or read by a thread)."""

    def __init__(self, name: str, args: list[str], *, env: Mapping[str, str] | None = None,
                 log: Path | None = None, pipe: bool = False, cwd: Path = REPO) -> None:
        self.name = name
        self.args = args
        stdout: Any = subprocess.PIPE if pipe else (log.open("ab") if log else subprocess.DEVNULL)
        self.log = log
        self.process = subprocess.Popen(
            args, env=dict(env) if env is not None else None, cwd=cwd, stdout=stdout,
            stderr=subprocess.STDOUT if not pipe else (log.open("ab") if log else None),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def check(self) -> None:
        if not self.alive():
            tail = self.log.read_text(errors="replace")[-2000:] if self.log else ""
            raise ProcessExited(f"{self.name} exited with {self.process.returncode}\n{tail}")

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        # Children (e.g. Dramatiq's worker processes) share the group: make sure none linger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.stdout is not None:
            self.process.stdout.close()


class LineProc(Proc):
    """A process that prints ``READY <port>`` then lines that ``on_line`` consumes."""

    def __init__(self, name: str, args: list[str], *, log: Path | None = None,
                 on_line: Callable[[bytes], None] | None = None, timeout: float = 20) -> None:
        super().__init__(name, args, pipe=True, log=log)
        self.port = 0
        self._ready = threading.Event()
        self._on_line = on_line
        threading.Thread(target=self._read, name=f"{name}-reader", daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"{name} did not become ready in {timeout}s")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not self._ready.is_set():
                if line.startswith(b"READY"):
                    parts = line.split()
                    self.port = int(parts[1]) if len(parts) > 1 else 0
                    self._ready.set()
                continue
            if self._on_line is not None:
                self._on_line(line)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class RecordingSink(LineProc):
    """:mod:`bench.sink`: arrival time (monotonic) of every message, by X-Email-Service-Id."""

    #: Text the sink looks for in every message (see :attr:`marked`).
    MARKER = "BENCH-NEW-VERSION"

    def __init__(self, log: Path | None = None) -> None:
        self.arrivals: dict[str, float] = {}
        #: Arrival times of messages that contained :attr:`MARKER`.
        self.marked: list[float] = []
        self.count = 0
        self.lock = threading.Lock()
        super().__init__("sink", python_module("bench.sink", "--marker", self.MARKER), log=log,
                         on_line=self._record)

    def _record(self, line: bytes) -> None:
        ident, stamp, *flag = line.decode().split()
        with self.lock:
            self.count += 1
            self.arrivals.setdefault(ident, float(stamp))
            if flag:
                self.marked.append(float(stamp))


class PostfixSink(Proc):
    """Postfix's ``smtp-sink`` (C) with its running counter read from stdout."""

    def __init__(self, log: Path | None = None) -> None:
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not os.access(binary, os.X_OK):
            raise FileNotFoundError("smtp-sink is not installed (scripts/install-bench-tools.sh)")
        self.port = free_port()
        args = [binary, "-c"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += [f"127.0.0.1:{self.port}", "1024"]
        self.count = 0
        self.changed_at = 0.0
        super().__init__("smtp-sink", args, pipe=True, log=log)
        threading.Thread(target=self._read, name="smtp-sink-reader", daemon=True).start()
        wait_for(self._connectable, timeout=10, what="smtp-sink")

    def _connectable(self) -> bool:
        self.check()
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def _read(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        tail = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            tail = (tail + chunk)[-256:]
            counts = re.findall(rb"mesg=(\d+)", tail)
            if counts:
                value = int(counts[-1])
                if value != self.count:
                    self.count = value
                    self.changed_at = now


class RedisServer(Proc):
    """A private redis-server; with ``aof_dir``, durable as the chart runs it (an append-only
    file in that folder, fsynced on every write: ``appendfsync always``)."""

    def __init__(self, log: Path | None = None, *, aof_dir: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (make install)")
        self.port = free_port()
        persistence = (["--appendonly", "yes", "--appendfsync", "always", "--dir", str(aof_dir)]
                       if aof_dir is not None else ["--appendonly", "no"])
        super().__init__("redis", [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--save", "", *persistence, "--protected-mode", "no"],
                         log=log)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url, socket_timeout=10)
        wait_for(self._ping, timeout=10, what="redis-server")

    def _ping(self) -> bool:
        self.check()
        return bool(self.client.ping())


def service_env(redis_url: str, smtp_port: int, secret: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "SMTP_", "JWT_", "SENDER_", "EMAIL_SERVICE_"))}
    env.update(
        REDIS_URL=redis_url, SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp_port),
        SMTP_SECURITY="none", SENDER_EMAIL="noreply@shop.example.com", SENDER_NAME="Shop",
        JWT_SECRET=secret, LOG_LEVEL="WARNING", SECRETS_DIR="/nonexistent", SMTP_TIMEOUT="30",
        PYTHONUNBUFFERED="1",
        # The bench measures capacity, not policy: limits stay in the request path (their Redis
        # round trips are paid as in production) but set far above anything offered here.
        RATE_LIMIT="100000000/second", RESET_LIMIT_PER_RECIPIENT="100000000/second",
        MAX_QUEUE_DEPTH="10000000",
    )
    env.update(extra)
    return env


def email_service(*args: str) -> list[str]:
    return [sys.executable, "-m", "email_service", *args]


def queue_idle(client: redis.Redis, queue: str = "email") -> bool:
    if client.llen(f"dramatiq:{queue}") or client.llen(f"dramatiq:{queue}.DQ"):
        return False
    return not any(client.scard(key) for key in client.scan_iter("dramatiq:__acks__.*"))


def drop_queue(client: redis.Redis, queue: str = "email") -> None:
    client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.msgs")
