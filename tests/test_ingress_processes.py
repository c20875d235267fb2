"""``email-service api --processes N``: real processes sharing one port. Both answer, one
killed does not take the other down (and comes back), rate limits hold across them, /metrics on
either counts the requests of all, and SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mailcore.tokens import mint_token

from .support import (
    TEST_SECRET,
    RedisServer,
    ServiceProcess,
    SMTPServer,
    base_env,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.slow


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


class Door:
    """The supervisor process, its port and its metrics folder."""

    def __init__(self, process: ServiceProcess, port: int, metrics_dir: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_dir = metrics_dir

    def children(self, count: int = 2, without: int | None = None) -> set[int]:
        """The supervisor's ``count`` children (none of them ``without``), once it has them."""
        def found() -> set[int]:
            pids = children_of(self.process.pid)
            return pids if len(pids) == count and without not in pids else set()
        return self.process.wait_until(found, message=f"{count} ingress processes")

    def get(self, path: str) -> httpx.Response:
        # A new connection each time: the kernel picks a process per connection.
        return httpx.get(self.url + path, timeout=10, headers={"Connection": "close"})

    def served_by(self) -> set[int]:
        """The processes that have recorded a request (prometheus_client's files per pid)."""
        return {int(path.stem.rpartition("_")[2]) for path in self.metrics_dir.glob("*.db")}

    def health_requests(self) -> float:
        text = self.get("/metrics").text
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.startswith("email_http_requests_total{")
                   and 'route="/health"' in line)


@pytest.fixture
def door(redis_server: RedisServer, smtp_server: SMTPServer, tmp_path: Path
         ) -> Iterator[Door]:
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    env = base_env(redis_server.url, smtp_server.port, KEY_PREFIX=f"procs-{uuid.uuid4().hex}",
                   EVENTS_ENABLED="false", RATE_LIMIT="10/minute",
                   PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    process = ServiceProcess(["api", "--host", "127.0.0.1", "--port", str(port),
                              "--processes", "2"], env, tmp_path / "api.log").start()
    door = Door(process, port, metrics_dir)
    try:
        process.wait_until(lambda: door.get("/health").status_code == 200, timeout=60,
                           message="the ingress answers")
        yield door
    finally:
        process.stop()


def test_both_processes_answer_and_metrics_count_all_of_them(door: Door) -> None:
    first = door.children()
    # New connections until each process has answered some (each connection's source port
    # picks one: all on one process 40 times in a row would take odds of 2^-40).
    door.process.wait_until(lambda: door.get("/health").status_code == 200
                            and first <= door.served_by(), message="both processes answer")
    before = door.health_requests()
    for _ in range(20):
        assert door.get("/health").status_code == 200
    # Whichever process answers /metrics, it counts the requests of both.
    assert door.health_requests() == before + 20
    assert door.health_requests() == before + 20


def test_one_process_killed_leaves_the_other_serving_and_comes_back(door: Door) -> None:
    first = door.children()
    victim, survivor = sorted(first)
    door.process.wait_until(lambda: door.get("/health").status_code == 200
                            and first <= door.served_by(), message="both processes answer")
    counted = door.health_requests()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: gone(victim), message="the killed process is gone")
    # Every new connection now reaches the survivor (the dead socket left the port's group).
    for _ in range(30):
        assert door.get("/health").status_code == 200
    assert survivor in children_of(door.process.pid)
    # The supervisor starts a replacement, which serves too.
    second = door.children(without=victim)
    [replacement] = second - {survivor}
    door.process.wait_until(lambda: door.get("/health").status_code == 200
                            and replacement in door.served_by(), timeout=60,
                            message="the replacement answers")
    assert "exited with -9" in door.process.output()
    # The killed process's requests still count: counters never go back.
    assert door.health_requests() >= counted + 30


def test_rate_limits_hold_across_processes(door: Door) -> None:
    first = door.children()
    auth = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject=uuid.uuid4().hex)}",
            "Connection": "close"}
    codes = []
    for n in range(25):
        body = {"template": "password_reset", "to": f"u{n}@example.com",
                "data": {"email": f"u{n}@example.com", "code": "123"}}
        response = httpx.post(door.url + "/v1/messages", json=body, headers=auth, timeout=10)
        codes.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
    # 10 a minute for the caller, whichever process each request reached.
    assert codes.count(202) == 10 and codes.count(429) == 15, codes
    assert first <= door.served_by()


def test_sigterm_to_the_supervisor_stops_every_process(door: Door) -> None:
    children = door.children()
    door.process.signal(signal.SIGTERM, group=False)  # as Kubernetes signals PID 1
    assert door.process.process is not None
    assert door.process.process.wait(timeout=40) == 0
    wait_for(lambda: all(gone(pid) for pid in children), message="every process stopped")


@pytest.mark.parametrize(("args", "env", "error"), [
    (["--processes", "0"], {}, "--processes: 0 is not a number of processes (1 to 64)"),
    (["--processes", "-3"], {}, "--processes: -3 is not a number of processes (1 to 64)"),
    (["--processes", "65"], {}, "--processes: 65 is not a number of processes (1 to 64)"),
    ([], {"HTTP_PROCESSES": "two"}, "HTTP_PROCESSES:"),
    ([], {"HTTP_PROCESSES": "0"}, "HTTP_PROCESSES:"),
    ([], {"HTTP_PROCESSES": "65"}, "HTTP_PROCESSES:"),
])
def test_a_bad_process_count_stops_the_command_in_one_line(
        args: list[str], env: dict[str, str], error: str, tmp_path: Path) -> None:
    process = ServiceProcess(["api", "--port", str(free_port()), *args],
                             base_env("redis://127.0.0.1:1/0", 1, **env),
                             tmp_path / "api.log").start()
    assert process.process is not None
    try:
        assert process.process.wait(timeout=60) == 2
    finally:
        process.stop()
    assert f"email-service: configuration error: {error}" in process.output()


def test_the_supervisor_reaps_what_a_dead_process_leaves(tmp_path: Path) -> None:
    """A process killed with a child of its own (the ingress's template sandbox, say): the
    orphan comes to the supervisor (PID 1 in a container, a subreaper here), which reaps it
    when it exits instead of leaving a zombie."""
    child = "import subprocess, time; subprocess.Popen(['sleep', '2']); time.sleep(600)"
    supervisor = (f"import sys; from service.processes import Supervisor; "
                  f"sys.exit(Supervisor([sys.executable, '-c', {child!r}], 1, 5).run())")
    process = ServiceProcess(["-c", supervisor], base_env("redis://127.0.0.1:1/0", 1),
                             tmp_path / "supervisor.log", program=(sys.executable,)).start()
    try:
        [worker] = process.wait_until(lambda: children_of(process.pid), message="the child")
        [orphan] = process.wait_until(lambda: children_of(worker), message="its child")
        os.kill(worker, signal.SIGKILL)
        process.wait_until(lambda: orphan in children_of(process.pid),
                           message="the orphan to come to the supervisor")
        # `sleep 2` ends; reaped, it leaves no zombie behind.
        process.wait_until(lambda: not Path(f"/proc/{orphan}").exists(), timeout=15,
                           message="the orphan reaped")
        process.wait_until(lambda: len(children_of(process.pid)) == 1,
                           message="a replacement child")
    finally:
        process.stop()
