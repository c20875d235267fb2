"""Scheduled sends end to end: real ingress and Dramatiq worker processes (two of them, each
with its dispatcher thread), redis-server and an SMTP server; every process restarted (killed,
even) while messages wait, and each message delivered exactly once."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailcore.schedule import parse_send_at, schedule_key
from mailcore.timestamps import rfc3339
from mailcore.tokens import mint_token

from .support import (
    TEST_SECRET,
    RedisServer,
    ServiceStack,
    SMTPServer,
    base_env,
    read_status,
    wait_for,
    wait_settled,
)

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='scheduler')}"}


def schedule(base_url: str, recipients: list[str], send_at: str) -> list[str]:
    response = httpx.post(f"{base_url}/v1/messages/batch", headers=AUTH, json={"messages": [
        {"template": "password_reset", "to": to, "data": {"email": to, "code": "424242"},
         "send_at": send_at} for to in recipients]})
    assert response.status_code == 202, response.text
    assert {m["status"] for m in response.json()["messages"]} == {"scheduled"}
    return [m["id"] for m in response.json()["messages"]]


def restart(stack: ServiceStack, *, kill: bool) -> None:
    """Every process of the stack stopped (SIGKILL with ``kill``) and started again."""
    processes = [*stack.apis, stack.worker]
    for process in processes:
        if kill:
            process.signal(signal.SIGKILL)
        process.stop()
    ready = stack.worker.output().count(ServiceStack.WORKER_READY)
    for process in processes:
        process.start()
    stack.worker.wait_until(
        lambda: stack.worker.output().count(ServiceStack.WORKER_READY) >= ready + 2,
        timeout=60, message="both worker processes to start again")
    wait_for(lambda: _answers(stack.base_url), timeout=30, message="the ingress to be back")


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_scheduled_sends_survive_restarts_and_go_out_once_with_two_workers(
        redis_server: RedisServer, smtp_server: SMTPServer, tmp_path: Path) -> None:
    prefix, queue = f"live-sched-{uuid.uuid4().hex[:8]}", f"lq-{uuid.uuid4().hex[:8]}"
    r: Any = redis_server.client()
    env = base_env(redis_server.url, smtp_server.port, KEY_PREFIX=prefix, QUEUE_NAME=queue,
                   BULK_QUEUE_NAME=f"{queue}-bulk", SCHEDULE_POLL_SECONDS="0.2",
                   RESET_LIMIT_PER_RECIPIENT="off")
    tag = uuid.uuid4().hex[:8]
    first = [f"first-{tag}-{i}@example.org" for i in range(20)]
    second = [f"second-{tag}-{i}@example.org" for i in range(20)]
    with ServiceStack(env, tmp_path, processes=2, threads=2) as stack:
        send_at = rfc3339(time.time() + 4)
        ids = schedule(stack.base_url, first, send_at)
        cancelled = ids.pop()
        gone = httpx.delete(f"{stack.base_url}/v1/messages/{cancelled}", headers=AUTH)
        assert gone.status_code == 200, gone.text
        # Every process killed while the messages wait (the schedule is in Redis only).
        restart(stack, kill=True)
        for message_id in ids:
            final = wait_settled(r, prefix, message_id, "sent", timeout=60)
            steps = [entry["status"] for entry in final["timeline"]]
            assert steps[:2] == ["scheduled", "queued"], steps
            queued_at = final["timeline"][1]["at"]
            assert parse_send_at(queued_at) >= parse_send_at(send_at) - 0.001  # not early
        late = httpx.post(f"{stack.base_url}/v1/messages/{ids[0]}/cancel", headers=AUTH)
        assert late.status_code == 409 and late.json()["details"][0]["message"] == "sent"

        # No worker: nothing is dispatched however late it gets; then one is started again.
        due = time.time() + 1.5
        later = schedule(stack.base_url, second, rfc3339(due))
        stack.worker.stop()
        wait_for(lambda: time.time() > due + 1.0, timeout=10, message="the due time to pass")
        assert r.zcard(schedule_key(prefix)) == len(later)
        assert {read_status(r, prefix, mid)["status"] for mid in later} == {"scheduled"}
        restart(stack, kill=False)
        for message_id in later:
            wait_settled(r, prefix, message_id, "sent", timeout=60)

    for to in first[:-1] + second:
        assert len(smtp_server.handler.to(to)) == 1, to
    assert smtp_server.handler.to(first[-1]) == []  # the cancelled one
    assert read_status(r, prefix, cancelled)["status"] == "cancelled"
    assert r.zcard(schedule_key(prefix)) == 0
