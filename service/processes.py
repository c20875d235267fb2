"""Several ingress processes on one port (``email-service api --processes N``).

One Python process serves HTTP on one core. With ``N > 1`` the ``api`` command becomes a small
supervisor: it starts ``N`` copies of itself, each listening on the same address with
``SO_REUSEPORT`` (the kernel gives each its own accept queue and spreads new connections over
them), restarts any that exits, and on SIGTERM/SIGINT passes SIGTERM on, so each finishes its
requests in flight, and waits for them.

Per-process state stays correct: rate limits and idempotency are decided in Redis (a process's
cache of empty buckets only ever refuses what Redis refused it, as another replica's would), and
the metrics use prometheus_client's multiprocess mode: every process writes its samples under
``PROMETHEUS_MULTIPROC_DIR`` (emptied here first) and ``/metrics`` on any of them answers the
sum over all, including processes that have since exited (counters never go back).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger("email_service.ingress")

#: Marks a child of the supervisor (it binds with SO_REUSEPORT and does not supervise).
CHILD_FLAG = "--reuse-port"
#: Restart delays after a child exits: doubling from the first up to the last; a child that
#: ran this long before exiting restarts after the first again.
_BACKOFF = (0.5, 5.0)
_STEADY_SECONDS = 10.0
_POLL_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT, listening: other processes
    bind the same address the same way and the kernel balances connections between them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the supervisor dies, however it dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _orphans(known: set[int]) -> list[int]:
    """Exited processes this one may reap that it did not start: the orphaned children of a
    process that died (in a container the supervisor is PID 1, and here a subreaper)."""
    me = os.getpid()
    try:
        children = Path(f"/proc/{me}/task/{me}/children").read_text().split()
    except OSError:
        return []
    found = []
    for pid in map(int, children):
        if pid in known:
            continue
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state == "Z":
            found.append(pid)
    return found


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    started: float
    backoff: float = _BACKOFF[0]


class Supervisor:
    """Runs ``count`` copies of ``command`` and keeps them running until told to stop.

    Parameters:
      command: the child's command line (``python -m email_service api ... --reuse-port``).
      count: how many.
      grace_seconds: after SIGTERM, how long children have before SIGKILL.
    """

    def __init__(self, command: Sequence[str], count: int, grace_seconds: float) -> None:
        self.command = list(command)
        self.count = count
        self.grace_seconds = grace_seconds
        self.children: list[_Child | None] = [None] * count
        self._stop = threading.Event()
        self._restart_at: dict[int, tuple[float, float]] = {}

    def run(self) -> int:
        # Orphans of a dead child (e.g. its template sandbox) come to this process, which
        # reaps them, as PID 1 of a container must.
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.count):
                self._start(index, _BACKOFF[0])
            log.info("ingress: %d processes serving", self.count,
                     extra={"processes": self.count})
            while not self._stop.wait(_POLL_SECONDS):
                self._reap()
            return self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _start(self, index: int, backoff: float) -> None:
        process = subprocess.Popen(self.command, preexec_fn=_die_with_parent,
                                   stdin=subprocess.DEVNULL)
        self.children[index] = _Child(index, process, time.monotonic(), backoff)

    def _reap(self) -> None:
        now = time.monotonic()
        for index, child in enumerate(self.children):
            if child is None:
                due, backoff = self._restart_at[index]
                if now >= due:
                    del self._restart_at[index]
                    self._start(index, backoff)
                continue
            code = child.process.poll()
            if code is None:
                continue
            _forget_process(child.process.pid)
            lived = now - child.started
            delay = _BACKOFF[0] if lived >= _STEADY_SECONDS else child.backoff
            log.warning("ingress: process %d (pid %d) exited with %s after %.1f s; restarting "
                        "it in %.1f s", index, child.process.pid, code, lived, delay,
                        extra={"pid": child.process.pid, "exit_code": code})
            self.children[index] = None
            self._restart_at[index] = (now + delay, min(delay * 2, _BACKOFF[1]))
        known = {child.process.pid for child in self.children if child is not None}
        for pid in _orphans(known):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def _shutdown(self) -> int:
        running = [child.process for child in self.children if child is not None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return 0


def _forget_process(pid: int) -> None:
    """Tell prometheus_client a process is gone (its live gauges stop counting)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def child_command(host: str, port: int) -> list[str]:
    """The command line of one child: this ``email-service api`` on the same address."""
    return [sys.executable, "-m", "email_service", "api", "--host", host, "--port", str(port),
            CHILD_FLAG]
