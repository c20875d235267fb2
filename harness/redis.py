"""A private redis-server on a free port, and what tests and the benchmark read off Dramatiq's
keys in it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from .ports import free_port
from .processes import stop_group
from .waiting import ProcessExited, wait_for


class RedisServer:
    """A redis-server on a free port that may be stopped and started again.

    Parameters:
      workdir: where its append-only file goes.
      fsync_always: ``appendfsync always`` (durable as the chart runs it) instead of ``everysec``.
      persistent: ``False`` runs it in memory only (no append-only file).
      log: where its output goes (default: nowhere).
      password: ``requirepass`` (and ``masterauth``, for a replica of a node with the same).
      extra: more ``--option value`` arguments (e.g. ``--replicaof``).
    """

    def __init__(self, workdir: Path, *, fsync_always: bool = False, persistent: bool = True,
                 log: Path | None = None, password: str | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.fsync_always = fsync_always
        self.persistent = persistent
        self.log = log
        self.password = password
        self.extra = extra
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None, "redis-server is not running"
        return self.process.pid

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, password=self.password)

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make install installs it)"
        if self.persistent:
            fsync = "always" if self.fsync_always else "everysec"
            persistence = ["--appendonly", "yes", "--appendfsync", fsync, "--dir",
                           str(self.workdir)]
        else:
            persistence = ["--appendonly", "no"]
        auth = ["--requirepass", self.password, "--masterauth", self.password] \
            if self.password else []
        return [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--protected-mode", "no", *persistence, *auth, *self.extra]

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        output = self.log.open("ab") if self.log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(self.command(), stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if self.log and not isinstance(output, int):
                output.close()
        client = self.client()

        def answers() -> bool:
            self.check()
            return bool(client.ping())

        try:
            wait_for(answers, timeout=10, message=f"redis-server on {self.port}")
        finally:
            client.close()
        return self

    def check(self) -> None:
        """Raise :class:`ProcessExited` if the server has stopped on its own."""
        if self.process is not None and self.process.poll() is not None:
            raise ProcessExited(f"redis-server on {self.port} exited with "
                                f"{self.process.returncode}")

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, timeout=10)
            self.process = None


def queue_idle(client: redis.Redis, queue: str = "email") -> bool:
    """No message waiting, delayed or being processed on Dramatiq's ``queue``."""
    if client.llen(f"dramatiq:{queue}") or client.llen(f"dramatiq:{queue}.DQ"):
        return False
    return not any(client.scard(key) for key in client.scan_iter("dramatiq:__acks__.*"))


def dead_letters(client: redis.Redis, queue: str = "email") -> list[bytes]:
    """The dead-lettered messages of Dramatiq's ``queue`` (the client must not decode)."""
    values = client.hvals(f"dramatiq:{queue}.XQ.msgs")
    return [value if isinstance(value, bytes) else value.encode() for value in values]
