"""Worker liveness and readiness: a heartbeat file per worker process that a probe reads.

Dramatiq has no probe of its own. Each worker process runs a small thread that, every
``interval`` seconds, writes ``<directory>/<pid>.json`` with:

- ``updated``: when the thread last ran — a frozen or dead process stops updating;
- ``redis``: whether Redis answered a PING just now — a lost Redis makes the worker unready;
- ``last_dispatch``: when the broker last completed a command in Redis. An idle consumer polls
  about once a second and every ack is a command, so with Redis up a stale value means the
  consumer or every worker thread is wedged — which is also when Dramatiq's own heartbeat stops
  and other workers take this one's messages over;
- ``consumers`` / ``threads``: whether Dramatiq's consumer and worker threads are still alive.

``email-service probe worker`` (liveness) and ``email-service probe worker --ready`` judge these
files with :func:`problems`; a probe costs no Redis round trip.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dramatiq import Broker
from dramatiq.middleware import Middleware

log = logging.getLogger("email_service.worker.heartbeat")

@dataclass(frozen=True)
class Report:
    pid: int
    updated: float
    redis: bool
    last_dispatch: float
    consumers: bool
    threads: bool


def prepare_directory(directory: Path) -> None:
    """Start the worker command with no reports left by an earlier run."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.json"):
        stale.unlink(missing_ok=True)


def write_report(directory: Path, report: Report) -> None:
    """Replace this process's report atomically, so a probe never reads half a file."""
    target = directory / f"{report.pid}.json"
    scratch = directory / f".{report.pid}.tmp"
    scratch.write_text(json.dumps(asdict(report)), encoding="utf-8")
    os.replace(scratch, target)


def read_reports(directory: Path) -> list[Report]:
    reports = []
    for path in sorted(directory.glob("*.json")):
        try:
            report = Report(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue  # removed or replaced while we looked: the next probe sees it whole
        if _well_formed(report):
            reports.append(report)
    return reports


def _well_formed(report: Report) -> bool:
    """Only files this module wrote count (a stray or tampered file is ignored)."""
    numbers = (report.updated, report.last_dispatch)
    flags = (report.redis, report.consumers, report.threads)
    return (isinstance(report.pid, int) and not isinstance(report.pid, bool)
            and all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers)
            and all(isinstance(flag, bool) for flag in flags))


def problems(reports: Iterable[Report], *, now: float, ready: bool, max_age: float,
             stall_after: float) -> list[str]:
    """Why the workers are not live (or, with ``ready``, not ready); empty when they are."""
    reports = list(reports)
    if not reports:
        return ["no worker process has written a heartbeat yet"]
    found = []
    for report in reports:
        who = f"worker process {report.pid}"
        age = now - report.updated
        if age > max_age:
            found.append(f"{who}: no heartbeat for {age:.0f}s (frozen or dead)")
            continue
        if not report.consumers:
            found.append(f"{who}: its Dramatiq consumer thread has stopped")
        if not report.threads:
            found.append(f"{who}: a Dramatiq worker thread has stopped")
        silent = now - report.last_dispatch
        if report.redis and silent > stall_after:
            found.append(f"{who}: Redis answers but the consumer has not polled or acked for "
                         f"{silent:.0f}s (wedged)")
        if ready and not report.redis:
            found.append(f"{who}: Redis does not answer")
    return found


class Heartbeat(Middleware):
    """Dramatiq middleware running the heartbeat thread in each worker process.

    Parameters:
      directory: where the reports go (shared by the processes of one ``email-service worker``).
      interval: seconds between reports.
    """

    def __init__(self, directory: Path, interval: float) -> None:
        self.directory = directory
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._booted = time.time()

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self._booted = time.time()  # "no command yet" counts from boot, not from 1970
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, args=(broker, worker),
                                        name="heartbeat", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._stop.set()
        (self.directory / f"{os.getpid()}.json").unlink(missing_ok=True)

    def _run(self, broker: Any, worker: Any) -> None:
        while not self._stop.is_set():
            try:
                write_report(self.directory, self._report(broker, worker))
            except OSError as exc:  # a full or missing scratch volume: the probe will say so
                log.warning("cannot write the worker heartbeat: %s", exc)
            self._stop.wait(self.interval)

    def _report(self, broker: Any, worker: Any) -> Report:
        try:
            redis_ok = bool(broker.client.ping())
        except Exception:  # any failure to answer counts as Redis being away
            redis_ok = False
        consumers = list(getattr(worker, "consumers", {}).values())
        threads = list(getattr(worker, "workers", []))
        return Report(
            pid=os.getpid(),
            updated=time.time(),
            redis=redis_ok,
            last_dispatch=max(getattr(broker, "last_dispatch", 0.0), self._booted),
            consumers=all(thread.is_alive() for thread in consumers),
            threads=all(thread.is_alive() for thread in threads),
        )
