"""The worker probe: real worker processes, a real redis-server stopped and frozen processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.heartbeat import Report, problems, read_reports

from .support import REPO, RedisServer, ServiceProcess, SMTPServer, base_env, wait_for

pytestmark = pytest.mark.slow


def probe(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "email_service", "probe", "worker", *flags],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=30)


@pytest.fixture
def worker_rig(tmp_path: Path, smtp_server: SMTPServer
               ) -> Iterator[tuple[RedisServer, ServiceProcess, dict[str, str]]]:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    env = base_env(redis_server.url, smtp_server.port, WORKER_HEARTBEAT_SECONDS="0.2",
                   WORKER_HEARTBEAT_DIR=str(tmp_path / "heartbeat"))
    worker = ServiceProcess(["worker", "--processes", "2", "--threads", "2"], env,
                            tmp_path / "worker.log").start()
    try:
        yield redis_server, worker, env
    finally:
        for report in read_reports(tmp_path / "heartbeat"):  # never leave a process stopped
            with_pid(report.pid, signal.SIGCONT)
        worker.stop()
        redis_server.stop()


def with_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def test_probe_is_live_and_ready_once_workers_consume(worker_rig: tuple[
        RedisServer, ServiceProcess, dict[str, str]]) -> None:
    _, worker, env = worker_rig
    worker.wait_until(lambda: probe(env, "--ready").returncode == 0, message="a ready probe")
    reports = read_reports(Path(env["WORKER_HEARTBEAT_DIR"]))
    assert len(reports) == 2  # one per worker process
    assert probe(env).stdout.strip() == "live"


def test_lost_redis_makes_workers_unready_but_not_dead(worker_rig: tuple[
        RedisServer, ServiceProcess, dict[str, str]]) -> None:
    redis_server, worker, env = worker_rig
    worker.wait_until(lambda: probe(env, "--ready").returncode == 0, message="a ready probe")
    redis_server.stop()
    failed = wait_for(lambda: (r := probe(env, "--ready")).returncode == 1 and r,
                      message="readiness to fail without Redis")
    assert "Redis does not answer" in failed.stderr
    # Restarting a worker cannot bring Redis back: liveness must stay green meanwhile.
    assert probe(env).returncode == 0, probe(env).stderr
    redis_server.start()
    worker.wait_until(lambda: probe(env, "--ready").returncode == 0,
                      message="readiness to return with Redis")


def test_frozen_worker_process_fails_liveness(worker_rig: tuple[
        RedisServer, ServiceProcess, dict[str, str]]) -> None:
    _, worker, env = worker_rig
    worker.wait_until(lambda: probe(env).returncode == 0, message="a live probe")
    frozen = read_reports(Path(env["WORKER_HEARTBEAT_DIR"]))[0].pid
    os.kill(frozen, signal.SIGSTOP)
    failed = wait_for(lambda: (r := probe(env, "--max-age", "1")).returncode == 1 and r,
                      message="liveness to fail for a frozen process")
    assert f"worker process {frozen}: no heartbeat" in failed.stderr
    os.kill(frozen, signal.SIGCONT)
    worker.wait_until(lambda: probe(env, "--max-age", "1").returncode == 0,
                      message="liveness to recover")


def test_probe_fails_before_any_worker_reported(tmp_path: Path) -> None:
    env = base_env("redis://127.0.0.1:1/0", 25, WORKER_HEARTBEAT_DIR=str(tmp_path))
    result = probe(env)
    assert result.returncode == 1
    assert "no worker process has written a heartbeat yet" in result.stderr


def report(**changes: object) -> Report:
    fields: dict[str, object] = dict(pid=7, updated=1000.0, redis=True, last_dispatch=999.0,
                                     consumers=True, threads=True)
    fields.update(changes)
    return Report(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "ready", "expected"), [
    ({}, True, []),
    ({"updated": 900.0}, False, ["worker process 7: no heartbeat for 100s (frozen or dead)"]),
    ({"last_dispatch": 900.0}, False,
     ["worker process 7: Redis answers but the consumer has not polled or acked for 100s "
      "(wedged)"]),
    # Without Redis nothing dispatches: that is Redis's fault, not a wedge.
    ({"last_dispatch": 900.0, "redis": False}, False, []),
    ({"redis": False}, True, ["worker process 7: Redis does not answer"]),
    ({"consumers": False}, False, ["worker process 7: its Dramatiq consumer thread has stopped"]),
    ({"threads": False}, False, ["worker process 7: a Dramatiq worker thread has stopped"]),
])
def test_problems_name_what_is_wrong(changes: dict[str, object], ready: bool,
                                     expected: list[str]) -> None:
    assert problems([report(**changes)], now=1000.0, ready=ready, max_age=30,
                    stall_after=60) == expected


def test_corrupt_or_foreign_heartbeat_files_are_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "1.json").write_text("{not json")
    (tmp_path / "2.json").write_text('{"pid": 2, "surprise": true}')
    (tmp_path / "3.json").write_text('["a", "list"]')
    (tmp_path / "4.json").write_text('{"pid": 4, "updated": "soon", "redis": true, '
                                     '"last_dispatch": 1, "consumers": true, "threads": "yes"}')
    assert read_reports(tmp_path) == []
    env = base_env("redis://127.0.0.1:1/0", 25, WORKER_HEARTBEAT_DIR=str(tmp_path))
    result = probe(env)
    assert result.returncode == 1
    assert "no worker process has written a heartbeat yet" in result.stderr
