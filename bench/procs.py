"""The processes a benchmark run starts, and what it reads off them (readiness, counts, RSS).

Every process is started in its own session and stopped through its own process group, so a run
ends exactly what it started and nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import redis

import harness.env
import harness.redis
from harness.ports import free_port
from harness.processes import REPO, stop_group
from harness.redis import queue_idle
from harness.waiting import ProcessExited, WaitTimeout, wait_for

__all__ = ["REPO", "ProcessExited", "WaitTimeout", "free_port", "queue_idle", "wait_for"]


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
        stop_group(self.process, timeout)
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
        wait_for(self._connectable, timeout=10, message="smtp-sink")

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


class RedisServer(harness.redis.RedisServer):
    """The harness' redis-server, started at once, with one client for the run's many polls;
    with ``aof_dir``, durable as the chart runs it (``appendfsync always``)."""

    def __init__(self, log: Path | None = None, *, aof_dir: Path | None = None) -> None:
        workdir = aof_dir or (log.parent if log else REPO)
        super().__init__(workdir, fsync_always=True, persistent=aof_dir is not None, log=log)
        self.start()
        self.conn = redis.Redis.from_url(self.url, socket_timeout=10)

    def stop(self) -> None:
        self.conn.close()
        super().stop()


def service_env(redis_url: str, smtp_port: int, secret: str, **extra: str) -> dict[str, str]:
    return harness.env.service_env(
        redis_url, smtp_port, secret, LOG_LEVEL="WARNING", SMTP_TIMEOUT="30",
        # The bench measures capacity, not policy: limits stay in the request path (their Redis
        # round trips are paid as in production) but set far above anything offered here.
        RATE_LIMIT="100000000/second", RESET_LIMIT_PER_RECIPIENT="100000000/second",
        MAX_QUEUE_DEPTH="10000000", **extra,
    )


def email_service(*args: str) -> list[str]:
    return [sys.executable, "-m", "email_service", *args]


def drop_queue(client: redis.Redis, queue: str = "email") -> None:
    client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.msgs")
