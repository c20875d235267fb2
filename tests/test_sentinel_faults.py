"""Redis fails over under load: the primary is SIGKILLed while the real ingress accepts and real
workers deliver, Sentinel promotes the replica, and we count what was accepted, delivered,
duplicated and lost.

Replication is asynchronous: what the old primary acknowledged but had not yet passed on is
gone after the failover. An accepted message lost that way is *lost*; a ``sent`` record lost
that way has the message sent again (a *duplicate*). ``REDIS_WAIT_REPLICAS`` narrows the first
window. The rows go into the same table as ``test_faults.py``'s (printed at the end of a run).
"""

from __future__ import annotations

import gc
import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from harness.redis import RedisServer
from harness.sentinel import SentinelSet

from .support import base_env, wait_for
from .test_faults import THREADS, Rig, push, settle_and_count

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

DATA_PASSWORD = "data-node-password"
SENTINEL_PASSWORD = "sentinel-password"


@dataclass
class SentinelRig(Rig):
    """The fault tests' rig (ingress, two workers, recording SMTP server) on a primary, a
    replica and three sentinels instead of one redis-server; every process finds the primary
    through the sentinels (passwords from secret files)."""

    wait_replicas: int = 0
    #: Seconds the replica is cut off before the primary is killed (0: in sync).
    lag: float = 0.0
    set: SentinelSet = field(init=False)
    failover_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.set = SentinelSet(self.tmp / "redis", password=DATA_PASSWORD,
                               sentinel_password=SENTINEL_PASSWORD, fsync_always=True,
                               # 2 s, not 1: a loaded 2-core VM made sentinels see a freshly
                               # promoted primary as down and fail back over.
                               down_after_ms=2000, log=self.tmp / "redis.log")
        self.redis = self.set.primary

    def start(self) -> None:
        self.set.start()
        self.start_smtp()
        secrets = self.tmp / "secrets"
        secrets.mkdir()
        (secrets / "redis_password").write_text(DATA_PASSWORD + "\n")
        (secrets / "redis_sentinel_password").write_text(SENTINEL_PASSWORD + "\n")
        env = base_env(
            "redis://unused", self.smtp_port, SEND_MAX_RETRIES="30", RETRY_MIN_BACKOFF_MS="100",
            RETRY_MAX_BACKOFF_MS="1000", SMTP_TIMEOUT="1", SEND_TIME_LIMIT_MS="4000",
            QUEUE_HEARTBEAT_TIMEOUT_MS="2000", QUEUE_MAINTENANCE_CHANCE="200000",
            RESET_LIMIT_PER_RECIPIENT="off", RATE_LIMIT="off", WORKER_SHUTDOWN_TIMEOUT_MS="5000",
            LOG_LEVEL="WARNING", SECRETS_DIR=str(secrets),
            REDIS_SENTINELS=self.set.addresses, REDIS_WAIT_REPLICAS=str(self.wait_replicas),
            REDIS_WAIT_TIMEOUT_MS="500",
        )
        del env["REDIS_URL"]  # one way to say where Redis is
        self.env = env
        self.start_api()
        for _ in range(self.processes):
            self.start_worker()
        with self.redis.client() as client:
            for worker in self.workers:
                worker.wait_until(
                    lambda: client.zcard("dramatiq:__heartbeats__") >= self.processes,
                    message="the workers to consume")

    def fail_over(self) -> None:
        """SIGKILL the primary (after cutting its replica off for ``lag`` seconds, if set);
        once the sentinels promoted the replica, restart the old primary (as Kubernetes would
        its pod) and return when it has rejoined as a replica."""
        old = self.set.primary_port()
        dead = self.set.current_primary()
        replica = self.set.replica if dead is self.set.primary else self.set.primary
        if self.lag:
            # A replica that fell behind: stopped (so it cannot reconnect) and its link cut, the
            # primary goes on acknowledging writes that reach no replica for ``lag`` seconds.
            assert replica.process is not None
            replica.process.send_signal(signal.SIGSTOP)
            with dead.client() as client:
                client.client_kill_filter(_type="replica")
            time.sleep(self.lag)  # the window itself, not a wait for something to happen
        started = time.monotonic()
        self.set.kill_primary()
        if self.lag:
            assert replica.process is not None
            replica.process.send_signal(signal.SIGCONT)
        self.set.wait_for_failover(old)
        self.failover_seconds = time.monotonic() - started
        self.redis = self.set.current_primary()
        self.set.rejoin(dead)
        self.redis = self.set.current_primary()

    def stop(self) -> None:
        for process in [self.api, *self.workers]:
            if process is not None:
                process.stop()
        if self.controller is not None:
            self.controller.stop()
        self.set.stop()


@contextmanager
def running(rig: SentinelRig) -> Iterator[SentinelRig]:
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()
        gc.collect()


def event_delivered_after_failover(rig: SentinelRig) -> None:
    """The ingress's event listener found the new primary: an event published there is sent."""
    url = f"http://127.0.0.1:{rig.api_port}/ready"
    assert rig.api is not None
    rig.api.wait_until(lambda: httpx.get(url).status_code == 200, timeout=20,
                       message="the ingress ready on the new primary")
    to = "after-failover@example.org"
    event = json.dumps({"email": to, "code": "424242", "timestamp": int(time.time())})
    with rig.redis.client() as client:
        wait_for(lambda: client.publish("password_reset_events", event) >= 1, timeout=20,
                 message="the event listener to subscribe on the new primary")
    wait_for(lambda: rig.smtp.to(to), timeout=20, message="the event's email")


@pytest.mark.parametrize(("lag", "wait_replicas"), [(0, 0), (0, 1), (0.5, 0), (0.5, 1)],
                         ids=["in-sync", "in-sync-wait", "lagging", "lagging-wait"])
def test_primary_killed_under_load_fails_over(tmp_path: Path, lag: float,
                                              wait_replicas: int) -> None:
    scenario = "Redis primary SIGKILLed, Sentinel failover" + (
        f", replica {lag:g} s behind" if lag else "") + (
        ", REDIS_WAIT_REPLICAS=1" if wait_replicas else "")
    with running(SentinelRig(tmp_path, wait_replicas=wait_replicas, lag=lag)) as rig:
        load = push(rig, "sentinel", rig.fail_over)
        row = settle_and_count(rig, scenario, load, 60, records_may_vanish=True)
        row["failover_s"] = round(rig.failover_seconds, 1)
        event_delivered_after_failover(rig)
    assert rig.failover_seconds < 15, row
    assert row["accepted"] == 300, row  # callers retried through the failover
    assert row["failed_with_reason"] == 0, row
    if wait_replicas:
        # A 2xx meant a replica had the message: the failover loses no accepted message.
        assert row["lost"] == 0 and row["records_lost"] == 0, row
    # Otherwise asynchronous replication loses what the replica had not received; duplicates
    # (lost "sent" records) at most one per worker thread in the window. The README has the
    # measured figures; these bounds only catch a regression beyond the window.
    assert row["lost"] <= (5 if not lag else 300), row
    assert row["duplicates"] <= (2 * THREADS if not lag else 300), row


def test_wait_without_a_replica_answers_503_and_the_retry_replays(tmp_path: Path) -> None:
    """REDIS_WAIT_REPLICAS=1 with no replica: the accept is not confirmed, the caller gets 503
    and retries with its Idempotency-Key; nothing is sent twice."""
    from mailcore.tokens import mint_token

    from .support import TEST_SECRET, ServiceProcess, free_port

    server = RedisServer(tmp_path / "redis", persistent=False).start()
    port = free_port()
    api = ServiceProcess(["api", "--host", "127.0.0.1", "--port", str(port)],
                         base_env(server.url, free_port(), REDIS_WAIT_REPLICAS="1",
                                  REDIS_WAIT_TIMEOUT_MS="50", EVENTS_ENABLED="false"),
                         tmp_path / "api.log").start()
    try:
        api.wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200,
                       message="ingress ready")
        headers = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='w')}",
                   "Idempotency-Key": "wait-key"}
        body = {"template": "password_reset", "to": "w@example.org",
                "data": {"email": "w@example.org", "code": "1"}}
        answers = [httpx.post(f"http://127.0.0.1:{port}/v1/messages", json=body,
                              headers=headers) for _ in range(2)]
        assert [a.status_code for a in answers] == [503, 503]
        assert answers[0].json()["error"] == "unavailable"
        with server.client() as client:
            assert client.llen("dramatiq:email") == 1  # on the primary once, not twice
        assert "confirmed by 0 of 1 replica(s) within 50 ms" in api.output()
    finally:
        api.stop()
        server.stop()
