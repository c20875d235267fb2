"""The service under test (ingress and worker processes) and the CPU it uses."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from harness.processes import ServiceProcess
from harness.stack import answers_ready

from . import httpload
from .procs import (
    REPO,
    Proc,
    RedisServer,
    children,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    peak_rss_mb,
    queue_idle,
    service_env,
    wait_for,
)
from .run import BATCH_BODY, SECRET, SEND_BODY, Run, token


class Service:
    """Ingress and worker processes against one Redis and a given SMTP port."""

    def __init__(self, run: Run, redis: RedisServer) -> None:
        self.run = run
        self.redis = redis
        self.api: ServiceProcess | None = None
        self.worker: ServiceProcess | None = None
        self.port = 0
        self.token = token()

    def env(self, smtp_port: int, **extra: str) -> dict[str, str]:
        env = service_env(self.redis.url, smtp_port, SECRET, **extra)
        root = self.run.args.service_root
        if root is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root),
                                                              env.get("PYTHONPATH")]))
        return env

    @property
    def cwd(self) -> Path:
        return self.run.args.service_root or REPO

    def start_api(self, smtp_port: int, *, events: bool = True) -> None:
        processes = self.run.args.ingress_processes
        self.port = free_port()
        api = self.api = ServiceProcess(
            ["api", "--host", "127.0.0.1", "--port", str(self.port),
             *(["--processes", str(processes)] if processes > 1 else [])],
            self.env(smtp_port, EVENTS_ENABLED="true" if events else "false"),
            self.run.workdir / "api.log", cwd=self.cwd).start()
        api.wait_until(partial(answers_ready, f"http://127.0.0.1:{self.port}"), timeout=30,
                       message="the ingress")
        if events:
            wait_for(lambda: self.redis.conn.pubsub_numsub("password_reset_events")[0][1] > 0,
                     timeout=10, message="the event listener to subscribe")

    def start_worker(self, smtp_port: int) -> None:
        before = self._heartbeats()
        worker = self.worker = ServiceProcess(
            ["worker", "--processes", str(self.run.args.processes), "--threads",
             str(self.run.args.threads)],
            self.env(smtp_port), self.run.workdir / "worker.log", cwd=self.cwd).start()
        # Ready when every worker process has talked to the broker, not at the first one.
        worker.wait_until(
            lambda: len(self._heartbeats() - before) >= int(self.run.args.processes),
            timeout=60, message="the worker processes")

    def _heartbeats(self) -> set[str]:
        """Dramatiq broker ids that have talked to Redis (one per worker process; the ingress
        has one too)."""
        members = self.redis.conn.zrange("dramatiq:__heartbeats__", 0, -1)
        return {str(m) for m in members}

    def worker_pids(self) -> list[int]:
        if self.worker is None:
            return []
        return children(self.worker.pid)

    def record_rss(self) -> None:
        if self.api is not None:
            self.run.note_rss("ingress_mb", peak_rss_mb(self.api.pid))
        if self.worker is not None:
            self.run.note_rss("worker_parent_mb", peak_rss_mb(self.worker.pid))
            for pid in self.worker_pids():
                peak = peak_rss_mb(pid)
                if peak is not None:
                    self.run.worker_peaks[pid] = max(self.run.worker_peaks.get(pid, 0.0), peak)
                    self.run.note_rss("worker_process_max_mb", peak)
        self.run.note_rss("redis_mb", peak_rss_mb(self.redis.pid))

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.record_rss()
            self.worker.stop()
            self.worker = None

    def stop_api(self) -> None:
        if self.api is not None:
            self.record_rss()
            self.api.stop()
            self.api = None

    def stop(self) -> None:
        self.stop_worker()
        self.stop_api()

    def request(self) -> bytes:
        return httpload.post_request("127.0.0.1", self.port, "/v1/messages", SEND_BODY,
                                     self.token)

    def batch_request(self) -> bytes:
        return httpload.post_request("127.0.0.1", self.port, "/v1/messages/batch", BATCH_BODY,
                                     self.token)

    def wait_idle(self, timeout: float = 60) -> None:
        def idle() -> bool:
            assert self.worker is not None
            self.worker.check()
            return queue_idle(self.redis.conn)

        wait_for(idle, timeout=timeout, message="the queue to drain", interval=0.05)


class CpuMeter:
    """CPU seconds each role of the stack uses between :meth:`start` and :meth:`per`."""

    def __init__(self, service: Service, sink: Proc | None = None) -> None:
        self.service = service
        self.sink = sink
        self.before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        service = self.service
        now = {
            # With --processes the ingress is a supervisor and its children.
            "ingress": sum(cpu_seconds(p) for p in [service.api.pid, *children(service.api.pid)])
            if service.api else 0.0,
            "workers": sum(cpu_seconds(p) for p in service.worker_pids())
            + (cpu_seconds(service.worker.pid) if service.worker else 0.0),
            "redis": cpu_seconds(service.redis.pid),
            "machine": machine_busy_seconds(),
        }
        if self.sink is not None:
            now["sink"] = cpu_seconds(self.sink.pid)
        return now

    def start(self) -> CpuMeter:
        self.before = self._now()
        return self

    def per(self, count: int, wall: float) -> dict[str, Any]:
        """Microseconds of CPU per message by role, and the machine's other load."""
        after = self._now()
        used = {k: after[k] - self.before.get(k, 0.0) for k in after}
        ours = sum(v for k, v in used.items() if k != "machine")
        out: dict[str, Any] = {f"{k}_us": round(v / count * 1e6) for k, v in used.items()
                               if k != "machine" and count}
        out["stack_us"] = round(ours / count * 1e6) if count else None
        out["machine_busy_cores"] = round(used["machine"] / wall, 2) if wall else None
        return out


class Stoppable(Protocol):
    def stop(self) -> None: ...


@contextlib.contextmanager
def stopping(*procs: Stoppable) -> Iterator[None]:
    """Stop ``procs`` on the way out, whatever happens inside."""
    try:
        yield
    finally:
        for proc in procs:
            proc.stop()
