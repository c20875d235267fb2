"""The suppression list re-checked when a worker takes the send lease (one script, real Redis),
and permanent recipient refusals turned into hard_bounce entries."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import orjson
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mailcore.lifecycle import decode_event, stream_key
from mailcore.send_time_suppression import SendTimeCheck, job_recipients, job_stream
from mailcore.status import SUPPRESSED, StatusStore, job_key, open_key, status_key
from mailcore.suppressions import Suppression, SyncSuppressionList, suppression_address
from workers.hard_bounces import HardBounces, hard_bounces

from .support import RedisServer, free_port, read_status


@pytest.fixture
def prefix() -> str:
    return f"stc-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis_server.client()
    yield connection
    connection.close()


@pytest.fixture
def store(redis_server: RedisServer, prefix: str) -> Iterator[StatusStore]:
    status = StatusStore.from_url(redis_server.url, prefix, 600, emit_events=True)
    yield status
    status.close()


def job(*to: str, cc: tuple[str, ...] = (), stream: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"template": "password_reset", "to": [{"email": a} for a in to],
                               "cc": list(cc)}
    if stream:
        request["stream"] = stream
    return {"id": str(uuid.uuid4()), "request": request}


def queued(client: redis.Redis, prefix: str, message_id: str) -> None:
    client.hset(status_key(prefix, message_id), mapping={"id": message_id, "status": "queued",
                                                         "recipients": "[]", "owner": "shop"})
    client.set(job_key(prefix, message_id), b"body")
    client.zadd(open_key(prefix), {message_id: 1})


def suppress(client: redis.Redis, prefix: str, address: str, scope: str = "global",
             **more: Any) -> None:
    SyncSuppressionList(client, prefix).add(Suppression(
        address=suppression_address(address), reason="manual", scope=scope, **more))


def events(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream_key(prefix)))
    return [decode_event(fields[b"event"]) for _, fields in entries]


def test_all_recipients_suppressed_ends_the_message_in_the_same_step(
        client: redis.Redis, prefix: str, store: StatusStore) -> None:
    one = job("ada@example.com", cc=("Bob+x@example.com",))
    queued(client, prefix, one["id"])
    suppress(client, prefix, "ada@example.com")
    suppress(client, prefix, "bob@example.com", scope="transactional")
    attempt = store.begin_attempt(one["id"], 30, "r1", SendTimeCheck.for_job(one, "t"))
    assert not attempt.proceed and attempt.reason == SUPPRESSED
    status = read_status(client, prefix, one["id"])
    assert status["status"] == SUPPRESSED and status["attempts"] == 0
    assert status["suppressed_recipients"] == ["ada@example.com", "Bob+x@example.com"]
    assert status["timeline"][-1]["status"] == SUPPRESSED
    assert client.zscore(open_key(prefix), one["id"]) is None
    assert client.exists(job_key(prefix, one["id"])) == 0
    [announced] = events(client, prefix)
    assert announced["type"] == "message.suppressed" and announced["message_id"] == one["id"]
    assert announced["recipients"] == ["ada@example.com", "Bob+x@example.com"]
    assert announced["stream"] == "transactional" and announced["template"] == "t"
    assert announced["owner"] == "shop"
    # A redelivered copy finds it finished; nothing more is announced.
    again = store.begin_attempt(one["id"], 30, "r2", SendTimeCheck.for_job(one))
    assert again.reason == SUPPRESSED and len(events(client, prefix)) == 1


def test_some_suppressed_are_withheld_and_recorded(client: redis.Redis, prefix: str,
                                                   store: StatusStore) -> None:
    one = job("ada@example.com", "eve@example.com", stream="bulk")
    queued(client, prefix, one["id"])
    suppress(client, prefix, "eve@example.com", scope="bulk")
    suppress(client, prefix, "ada@example.com", scope="transactional")  # other stream
    attempt = store.begin_attempt(one["id"], 30, "r1", SendTimeCheck.for_job(one))
    assert attempt.proceed and attempt.withheld == ("eve@example.com",)
    status = read_status(client, prefix, one["id"])
    assert status["status"] == "sending"
    assert status["suppressed_recipients"] == ["eve@example.com"]
    [announced] = events(client, prefix)
    assert announced["recipients"] == ["eve@example.com"] and announced["stream"] == "bulk"


def test_an_attempt_run_again_answers_the_same_withheld_recipients(
        client: redis.Redis, prefix: str, store: StatusStore,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The begin step run again by the same attempt (its reply was lost) is answered from what
    the first run recorded: the same attempt number and the same withheld recipients, with no
    second event; a later attempt that withholds nobody clears the field."""
    owner = uuid.uuid4()
    monkeypatch.setattr("mailcore.status.uuid.uuid4", lambda: owner)
    one = job("ada@example.com", "eve@example.com")
    queued(client, prefix, one["id"])
    suppress(client, prefix, "eve@example.com")
    first = store.begin_attempt(one["id"], 30, "r1", SendTimeCheck.for_job(one))
    again = store.begin_attempt(one["id"], 30, "r1", SendTimeCheck.for_job(one))
    assert first.withheld == again.withheld == ("eve@example.com",)
    assert (first.attempt, again.attempt) == (1, 1) and again.proceed
    assert len(events(client, prefix)) == 1
    # The attempt failed; eve is taken off the list; the next attempt withholds nobody.
    client.hset(status_key(prefix, one["id"]), mapping={"status": "retrying", "lease_until": 0})
    SyncSuppressionList(client, prefix).remove(suppression_address("eve@example.com"))
    monkeypatch.setattr("mailcore.status.uuid.uuid4", uuid.uuid4)
    later = store.begin_attempt(one["id"], 30, "r2", SendTimeCheck.for_job(one))
    assert later.proceed and later.attempt == 2 and later.withheld == ()
    assert not client.hexists(status_key(prefix, one["id"]), "suppressed_recipients")


def test_without_webhooks_the_same_outcomes_are_recorded_and_nothing_announced(
        client: redis.Redis, prefix: str, redis_server: RedisServer) -> None:
    quiet = StatusStore.from_url(redis_server.url, prefix, 600)  # WEBHOOKS_ENABLED off
    every, some = job("ada@example.com"), job("bob@example.com", "eve@example.com")
    for message in (every, some):
        queued(client, prefix, message["id"])
    suppress(client, prefix, "ada@example.com")
    suppress(client, prefix, "eve@example.com")
    ended = quiet.begin_attempt(every["id"], 30, "r1", SendTimeCheck.for_job(every))
    assert not ended.proceed and ended.reason == SUPPRESSED
    assert read_status(client, prefix, every["id"])["status"] == SUPPRESSED
    assert client.zscore(open_key(prefix), every["id"]) is None
    assert client.exists(job_key(prefix, every["id"])) == 0
    partial = quiet.begin_attempt(some["id"], 30, "r2", SendTimeCheck.for_job(some))
    assert partial.proceed and partial.withheld == ("eve@example.com",)
    assert read_status(client, prefix, some["id"])["suppressed_recipients"] == [
        "eve@example.com"]
    assert events(client, prefix) == []
    quiet.close()


def test_nothing_suppressed_or_expired_costs_nothing_visible(
        client: redis.Redis, prefix: str, store: StatusStore) -> None:
    one = job("ada@example.com")
    queued(client, prefix, one["id"])
    suppress(client, prefix, "ada@example.com", expires_at=time.time() - 1)
    attempt = store.begin_attempt(one["id"], 30, "r1", SendTimeCheck.for_job(one))
    assert attempt.proceed and attempt.withheld == () and attempt.attempt == 1
    assert events(client, prefix) == []
    assert b"suppressed_recipients" not in client.hgetall(status_key(prefix, one["id"]))


def test_a_job_without_recipients_needs_no_check() -> None:
    assert SendTimeCheck.for_job({"id": "x", "request": {"to": []}}) is None
    assert SendTimeCheck.for_job({"id": "x", "request": "nonsense"}) is None
    assert SendTimeCheck.for_job({"id": "x", "request": {"to": ["a@example.com"],
                                                         "sandbox": True}}) is None
    assert job_recipients({"request": {"to": "a@example.com", "bcc": [{"email": 3}, None]}}) == (
        "a@example.com",)
    assert job_stream({"request": {"stream": ""}}) == "transactional"
    assert job_stream({"request": {"stream": "bulk"}}) == "bulk"


def test_only_permanent_refusals_become_hard_bounces(client: redis.Redis, prefix: str) -> None:
    refused = {"Gone+tag@example.com": "550 5.1.1 no such user", "later@example.com":
               "450 4.2.1 try later", "odd": "550 weird"}
    assert [e.address for e in hard_bounces("m1", refused)] == ["gone@example.com"]
    suppressions = SyncSuppressionList(client, prefix)
    assert HardBounces(suppressions).record("m1", refused) == 1
    entry = suppressions.get("gone@example.com")
    assert entry is not None and entry.reason == "hard_bounce"
    assert entry.source_message_id == "m1" and entry.scope == "global"
    assert suppressions.get("later@example.com") is None
    assert HardBounces(suppressions).record("m2", {}) == 0


def test_hard_bounces_survive_an_unreachable_redis(prefix: str) -> None:
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2,
                       retry=Retry(NoBackoff(), 0))
    recorder = HardBounces(SyncSuppressionList(dead, prefix))
    assert recorder.record("m1", {"gone@example.com": "550 5.1.1 gone"}) == 0


def test_the_check_arguments_are_small_and_the_event_built_only_when_needed() -> None:
    one = job("ada@example.com", "bob@example.com")
    check = SendTimeCheck.for_job(one)
    assert check is not None
    count, announced, *rest = check.args
    assert count == 4 and announced == b"" and rest[4:] == ["ada@example.com", "bob@example.com"]
    event = orjson.loads(check.announcing().args[1])
    assert event["type"] == "message.suppressed" and event["message_id"] == one["id"]
