"""The service as a whole: ingress replicas and a worker command against one Redis and one SMTP
server, started (ready) and stopped as one."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Protocol

from .ports import free_port
from .processes import EMAIL_SERVICE, REPO, ServiceProcess


class Part(Protocol):
    """A server the stack starts before its processes and stops after them."""

    def start(self) -> object: ...

    def stop(self) -> object: ...


def answers_ready(base_url: str) -> bool:
    """Whether the ingress at ``base_url`` answers ``GET /ready`` with 200."""
    try:
        with urllib.request.urlopen(f"{base_url}/ready", timeout=5) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class ServiceStack:
    """``email-service api`` (``apis`` replicas) and ``email-service worker``, ready when
    :meth:`start` returns; :meth:`stop` (or leaving the ``with`` block) stops everything it
    started, in reverse order.

    Parameters:
      env: the processes' environment, naming the Redis and SMTP server (``service_env``).
      logs: folder of the logs (``api.log``, ``api-1.log``…, ``worker.log``).
      parts: servers to start first and stop last (a ``RedisServer``, an ``SMTPServer``); the
        caller's running servers are simply named in ``env``.
      apis: ingress replicas (0: none).
      processes, threads: of the worker command (``processes=0``: no worker).
      program, cwd: how ``email-service`` is run (default: this checkout's).
    """

    #: What a Dramatiq worker command logs once its processes consume.
    WORKER_READY = "ready for action"

    def __init__(self, env: Mapping[str, str], logs: Path, *, parts: Sequence[Part] = (),
                 apis: int = 1, processes: int = 1, threads: int = 4,
                 program: Sequence[str] = EMAIL_SERVICE, cwd: Path = REPO) -> None:
        self.env = dict(env)
        self.parts = list(parts)
        self.ports = [free_port() for _ in range(apis)]
        self.apis = [
            ServiceProcess(["api", "--host", "127.0.0.1", "--port", str(port)], env,
                           logs / ("api.log" if i == 0 else f"api-{i}.log"), program=program,
                           cwd=cwd)
            for i, port in enumerate(self.ports)]
        self._worker = (ServiceProcess(["worker", "--processes", str(processes), "--threads",
                                       str(threads)], env, logs / "worker.log",
                                      program=program, cwd=cwd) if processes else None)
        self._started: list[Part | ServiceProcess] = []

    @property
    def worker(self) -> ServiceProcess:
        """The worker command (the stack must have one)."""
        assert self._worker is not None, "this stack runs no worker"
        return self._worker

    @property
    def api(self) -> ServiceProcess:
        """The first ingress."""
        return self.apis[0]

    @property
    def base_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    @property
    def base_url(self) -> str:
        """The first ingress's URL."""
        return self.base_urls[0]

    def start(self, *, timeout: float = 60) -> ServiceStack:
        """Start everything and wait until each ingress is ready and the worker consumes."""
        try:
            for part in self.parts:
                part.start()
                self._started.append(part)
            processes = [*self.apis, *([self._worker] if self._worker else [])]
            for process in processes:  # all at once: they start in parallel
                process.start()
                self._started.append(process)
            for api, url in zip(self.apis, self.base_urls, strict=True):
                api.wait_until(partial(answers_ready, url), timeout=timeout,
                               message="the ingress to be ready")
            if self._worker is not None:
                worker = self._worker
                worker.wait_until(lambda: self.WORKER_READY in worker.output(), timeout=timeout,
                                  message="the worker to start")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        while self._started:
            self._started.pop().stop()

    def __enter__(self) -> ServiceStack:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
