"""Scheduled sends at the door and in Redis: ``send_at`` parsing, the accept step writing the
schedule, dispatch (exactly once with many dispatchers at once) and the cancel/dispatch race,
against the session's real redis-server. End to end with workers: test_schedule_live.py."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from starlette.testclient import TestClient

from mailcore.errors import InvalidSendAt, NotCancellable, SendAtOutOfRange
from mailcore.lifecycle import decode_event, stream_key
from mailcore.schedule import Dispatcher, cancel, due_time, parse_send_at, schedule_key
from mailcore.status import open_key, status_key
from mailcore.store import StoreKeys, TemplateStoreWriter
from mailcore.template_history import collect_garbage
from mailcore.template_resources import source_from_spec
from mailcore.timestamps import rfc3339
from mailcore.tokens import mint_token
from service.app import create_app
from workers.sweeper import Sweeper

from .support import TEST_SECRET, RedisServer, app_settings, read_status, wait_for

GOOD = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='billing')}"}
OTHER = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='intruder')}"}
HOUR = 3600.0


def future(seconds: float) -> str:
    return rfc3339(time.time() + seconds)


# --- send_at: what is an instant --------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("2030-01-31T09:00:00Z", 1896080400.0),
    ("2030-01-31t09:00:00z", 1896080400.0),
    ("2030-01-31 09:00:00Z", 1896080400.0),
    ("2030-01-31T10:00:00+01:00", 1896080400.0),
    ("2030-01-31T04:30:00-04:30", 1896080400.0),
    ("2030-01-31T09:00:00.250Z", 1896080400.25),
    ("2030-01-31T09:00:00.123456789Z", 1896080400.123456789),
])
def test_rfc3339_instants_are_read(text: str, expected: float) -> None:
    assert parse_send_at(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("text", [
    "", " ", "tomorrow", "1896080400", "2030-01-31", "09:00:00Z",
    "2030-01-31T09:00:00",  # no offset: names no instant
    "2030-01-31T09:00Z", "2030-1-31T09:00:00Z", "2030-01-31T9:00:00Z",
    " 2030-01-31T09:00:00Z", "2030-01-31T09:00:00Z ", "2030-01-31T09:00:00Z\n",
    "2030-01-31T09:00:00+0100", "2030-01-31T09:00:00+01", "2030-01-31T09:00:00 UTC",
    "2030-01-31T09:00:00.Z", "2030-01-31T09:00:00.1234567890Z",
    "2030-02-30T09:00:00Z", "2030-13-01T09:00:00Z", "2030-01-31T25:00:00Z",
    "2030-01-31T09:60:00Z", "2030-12-31T23:59:60Z",  # a leap second: no such instant here
    "2030-01-31T09:00:00+24:00", "2030-01-31T09:00:00+01:60",
    "0000-01-01T00:00:00Z", "+2030-01-31T09:00:00Z", "-2030-01-31T09:00:00Z",
    "20300-01-31T09:00:00Z",
    "\uff12\uff10\uff13\uff10-01-31T09:00:00Z",  # full-width digits
    "٢٠٣٠-01-31T09:00:00Z",  # Arabic-Indic digits
    "2030-01-31T09:00:00Z\x00", "2030\u201101\u201131T09:00:00Z",
    "2030-01-31T09:00:00Z" + "0" * 10_000, "9" * 1_000_000,
])
def test_anything_else_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(InvalidSendAt) as caught:
        parse_send_at(text)
    assert caught.value.details[0]["field"] == "send_at"
    assert len(caught.value.message) < 300  # never echoes a huge input


def test_the_window_is_future_within_the_horizon_with_some_skew() -> None:
    now = 2_000_000_000.0
    def due(text_offset: float) -> float:
        return due_time(rfc3339(now + text_offset), horizon_seconds=7 * 86400,
                        clock_skew_seconds=60, now=now)

    assert due(10) == pytest.approx(now + 10, abs=0.01)
    assert due(7 * 86400) == pytest.approx(now + 7 * 86400, abs=0.01)
    assert due(-30) == now  # a little behind: due now
    with pytest.raises(SendAtOutOfRange, match="past"):
        due(-61)
    with pytest.raises(SendAtOutOfRange, match="horizon"):
        due(7 * 86400 + 1)
    for absurd in ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00+23:59", "1970-01-01T00:00:00Z"):
        with pytest.raises(SendAtOutOfRange):
            due_time(absurd, horizon_seconds=60, clock_skew_seconds=0, now=now)


# --- at the door --------------------------------------------------------------------------------

@pytest.fixture
def door(redis_server: RedisServer) -> Iterator[tuple[TestClient, str, str]]:
    prefix, queue = f"sched-{uuid.uuid4().hex[:8]}", f"sq-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix, QUEUE_NAME=queue,
                            BULK_QUEUE_NAME=f"{queue}-bulk", RESET_LIMIT_PER_RECIPIENT="off",
                            SCHEDULE_HORIZON_SECONDS="86400", WEBHOOKS_ENABLED="true")
    with TestClient(create_app(settings)) as client:
        yield client, prefix, queue


def message(**extra: Any) -> dict[str, Any]:
    return {"template": "password_reset", "to": "ada@example.com",
            "data": {"email": "ada@example.com", "code": "123"}, **extra}


def test_a_scheduled_send_waits_in_the_schedule_not_the_queue(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    client, prefix, queue = door
    r: Any = redis_server.client()
    send_at = future(HOUR)
    response = client.post("/v1/messages", json=message(send_at=send_at), headers=GOOD)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "scheduled"
    assert r.llen(f"dramatiq:{queue}") == 0
    assert r.zscore(schedule_key(prefix), body["id"]) == pytest.approx(
        parse_send_at(send_at) * 1000, abs=1)
    assert r.zscore(open_key(prefix), body["id"]) is None  # not the sweeper's business
    # Kept through the wait, then for the retention.
    assert r.ttl(status_key(prefix, body["id"])) > 604800 + HOUR - 60
    shown = client.get(f"/v1/messages/{body['id']}", headers=GOOD).json()
    assert shown["status"] == "scheduled"
    assert shown["send_at"] == rfc3339(parse_send_at(send_at))
    assert shown["stream"] == "transactional"
    events = [decode_event(fields[b"event"]) for _, fields in r.xrange(stream_key(prefix))]
    assert [(e["type"], e["message_id"], e["send_at"]) for e in events] == [
        ("message.scheduled", body["id"], shown["send_at"])]


@pytest.mark.parametrize("value", [
    1896080400, 1896080400.5, True, ["2030-01-31T09:00:00Z"], {"at": "2030-01-31T09:00:00Z"},
    "2030-01-31T09:00:00", "next tuesday", "٢٠٣٠-01-31T09:00:00Z", "x" * 100_000,
])
def test_malformed_send_at_is_refused_and_nothing_is_written(
        door: tuple[TestClient, str, str], redis_server: RedisServer, value: Any) -> None:
    client, prefix, queue = door
    response = client.post("/v1/messages", json=message(send_at=value), headers=GOOD)
    assert response.status_code in (413, 422), response.text
    if response.status_code == 422:
        assert response.json()["error"] in ("invalid_request", "invalid_send_at")
        assert response.json()["details"][0]["field"] == "send_at"
    r: Any = redis_server.client()
    assert r.zcard(schedule_key(prefix)) == 0 and r.llen(f"dramatiq:{queue}") == 0


@pytest.mark.parametrize(("offset", "why"), [(-HOUR, "past"), (2 * 86400, "horizon"),
                                             (-400 * 86400 * 365, "past")])
def test_out_of_range_send_at_is_refused(door: tuple[TestClient, str, str], offset: float,
                                         why: str) -> None:
    client, _, _ = door
    response = client.post("/v1/messages", json=message(send_at=future(offset)), headers=GOOD)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "send_at_out_of_range"
    assert why in response.json()["message"]


def test_a_batch_names_the_item_and_accepts_all_or_nothing(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    client, prefix, queue = door
    r: Any = redis_server.client()
    bad = client.post("/v1/messages/batch", headers=GOOD, json={"messages": [
        message(send_at=future(60)), message(send_at="2030-01-31T09:00:00")]})
    assert bad.status_code == 422
    assert bad.json()["details"][0]["field"] == "messages.1.send_at"
    assert r.zcard(schedule_key(prefix)) == 0
    good = client.post("/v1/messages/batch", headers=GOOD, json={"messages": [
        message(send_at=future(60)), message(), message(send_at=future(120), stream="bulk")]})
    assert good.status_code == 202, good.text
    statuses = [item["status"] for item in good.json()["messages"]]
    assert statuses == ["scheduled", "queued", "scheduled"]
    assert r.zcard(schedule_key(prefix)) == 2 and r.llen(f"dramatiq:{queue}") == 1


def test_an_idempotent_replay_answers_scheduled_and_schedules_once(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    client, prefix, _ = door
    body = message(send_at=future(600))
    headers = {**GOOD, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = client.post("/v1/messages", json=body, headers=headers)
    again = client.post("/v1/messages", json=body, headers=headers)
    assert first.json() == again.json() and again.json()["status"] == "scheduled"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert redis_server.client().zcard(schedule_key(prefix)) == 1


def test_cancel_by_the_owner_only_and_then_never_again(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    client, prefix, _ = door
    r: Any = redis_server.client()
    message_id = client.post("/v1/messages", json=message(send_at=future(600)),
                             headers=GOOD).json()["id"]
    assert client.delete(f"/v1/messages/{message_id}", headers=OTHER).status_code == 404
    assert client.delete(f"/v1/messages/{message_id}").status_code == 401
    for hostile in ("x", "../../etc", "0" * 10_000, "%00", "ü"):
        assert client.delete(f"/v1/messages/{hostile}", headers=GOOD).status_code == 404
    assert client.delete(f"/v1/messages/{uuid.uuid4()}", headers=GOOD).status_code == 404
    done = client.delete(f"/v1/messages/{message_id}", headers=GOOD)
    assert done.status_code == 200 and done.json() == {"id": message_id, "status": "cancelled"}
    late = client.post(f"/v1/messages/{message_id}/cancel", headers=GOOD)
    assert late.status_code == 409
    assert late.json()["error"] == "not_cancellable"
    assert late.json()["details"] == [{"field": "status", "message": "cancelled"}]
    assert r.zcard(schedule_key(prefix)) == 0
    assert read_status(r, prefix, message_id)["status"] == "cancelled"
    kinds = [decode_event(f[b"event"])["type"] for _, f in r.xrange(stream_key(prefix))]
    assert kinds == ["message.scheduled", "message.cancelled"]
    # A message never scheduled: too late from the start, its status said.
    queued = client.post("/v1/messages", json=message(), headers=GOOD).json()["id"]
    refused = client.delete(f"/v1/messages/{queued}", headers=GOOD)
    assert refused.status_code == 409 and "queued" in refused.json()["message"]


# --- dispatch and the races, in Redis -------------------------------------------------------

def _dispatcher(redis_server: RedisServer, prefix: str, queue: str) -> Dispatcher:
    return Dispatcher(redis_server.client(), prefix=prefix,
                      queues={"transactional": f"dramatiq:{queue}",
                              "bulk": f"dramatiq:{queue}-bulk"},
                      default_queue=f"dramatiq:{queue}", retention_seconds=3600,
                      emit_events=True)


def _accept_due(client: TestClient, count: int) -> list[str]:
    """``count`` messages due right away (``send_at`` a little in the past: within the skew)."""
    response = client.post("/v1/messages/batch", headers=GOOD, json={
        "messages": [message(send_at=future(-5)) for _ in range(count)]})
    assert response.status_code == 202, response.text
    return [item["id"] for item in response.json()["messages"]]


def test_many_dispatchers_at_once_queue_each_message_exactly_once(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    client, prefix, queue = door
    r: Any = redis_server.client()
    ids = [mid for _ in range(4) for mid in _accept_due(client, 100)]
    dispatchers = [_dispatcher(redis_server, prefix, queue) for _ in range(8)]
    counts: list[int] = []
    start = threading.Barrier(len(dispatchers))

    def run(dispatcher: Dispatcher) -> None:
        start.wait()
        total = 0
        while dispatcher.due(time.time()):
            total += dispatcher.dispatch_due().queued
        counts.append(total)

    threads = [threading.Thread(target=run, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(counts) == len(ids)
    queued = [rid.decode() for rid in r.lrange(f"dramatiq:{queue}", 0, -1)]
    assert len(queued) == len(set(queued)) == len(ids)
    assert r.hlen(f"dramatiq:{queue}.msgs") == len(ids)
    for message_id in ids[:20]:
        status = read_status(r, prefix, message_id)
        assert status["status"] == "queued"
        assert [entry["status"] for entry in status["timeline"]] == ["scheduled", "queued"]
        assert r.zscore(open_key(prefix), message_id) is not None  # the sweeper's now
    events = [decode_event(f[b"event"]) for _, f in r.xrange(stream_key(prefix))]
    assert sum(e["type"] == "message.queued" for e in events) == len(ids)


def test_cancel_racing_dispatch_has_exactly_one_winner_each(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    client, prefix, queue = door
    r: Any = redis_server.client()
    ids = _accept_due(client, 100)
    outcomes: dict[str, list[str]] = {mid: [] for mid in ids}
    lock = threading.Lock()
    start = threading.Barrier(3)

    def dispatch() -> None:
        dispatcher = _dispatcher(redis_server, prefix, queue)
        start.wait()
        while dispatcher.due(time.time()):
            dispatcher.dispatch_due(limit=1)  # the earliest first, one step at a time

    def cancel_all() -> None:
        async def run() -> None:
            aclient = aioredis.Redis.from_url(redis_server.url)
            gate = asyncio.Semaphore(48)  # connections at once

            async def one(message_id: str) -> None:
                try:
                    async with gate:
                            await cancel(aclient, prefix, message_id, owner="billing",
                                     template=None, stream=None, retention_seconds=3600)
                    result = "cancelled"
                except NotCancellable as exc:
                    result = f"late:{exc.status}"
                with lock:
                    outcomes[message_id].append(result)

            await aclient.ping()
            start.wait()
            # Every message cancelled three times at once (the latest first, meeting the
            # dispatchers somewhere): at most one cancel can win.
            await asyncio.gather(*(one(mid) for mid in reversed(ids) for _ in range(3)))
            await aclient.aclose()
        asyncio.run(run())

    threads = [threading.Thread(target=dispatch), threading.Thread(target=dispatch),
               threading.Thread(target=cancel_all)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    queued = [rid.decode() for rid in r.lrange(f"dramatiq:{queue}", 0, -1)]
    assert len(queued) == len(set(queued))
    rids = {r.hget(status_key(prefix, mid), "redis_id").decode(): mid for mid in ids}
    dispatched = {rids[rid] for rid in queued}
    cancelled = set()
    for message_id, results in outcomes.items():
        status = read_status(r, prefix, message_id)["status"]
        wins = results.count("cancelled")
        assert wins <= 1, results
        if wins:
            cancelled.add(message_id)
            assert status == "cancelled" and message_id not in dispatched
            assert all(result == "late:cancelled" for result in results if result != "cancelled")
        else:  # dispatch won, and every cancel was told so truthfully
            assert status == "queued" and message_id in dispatched
            assert results == ["late:queued"] * 3
    assert cancelled | dispatched == set(ids) and not cancelled & dispatched
    assert r.zcard(schedule_key(prefix)) == 0


def test_the_sweeper_never_takes_a_scheduled_message_for_lost(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    client, prefix, queue = door
    r: Any = redis_server.client()
    message_id = client.post("/v1/messages", json=message(send_at=future(600)),
                             headers=GOOD).json()["id"]
    # Even were it in the open index (an older writer), long unchanged, held by no queue:
    r.zadd(open_key(prefix), {message_id: 0})
    r.hset(status_key(prefix, message_id), "updated_at", "0")
    sweeper = Sweeper(r, queue_name=queue, prefix=prefix, min_age_seconds=1)
    assert sweeper.sweep(time.time() + 10_000) == 0
    assert r.llen(f"dramatiq:{queue}") == 0
    assert r.zscore(open_key(prefix), message_id) is None
    assert read_status(r, prefix, message_id)["status"] == "scheduled"


def test_a_scheduled_message_without_its_body_is_reported_not_queued(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    client, prefix, queue = door
    r: Any = redis_server.client()
    (message_id,) = _accept_due(client, 1)
    r.delete(f"{prefix}:msg:{message_id}:job")
    done = _dispatcher(redis_server, prefix, queue).dispatch_due()
    assert (done.queued, done.broken) == (0, 1)
    assert r.llen(f"dramatiq:{queue}") == 0


def test_a_dispatched_body_is_the_accepted_job_on_its_streams_queue(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    client, prefix, queue = door
    r: Any = redis_server.client()
    response = client.post("/v1/messages", headers=GOOD,
                           json=message(send_at=future(-1), stream="bulk"))
    message_id = response.json()["id"]
    assert _dispatcher(redis_server, prefix, queue).dispatch_due().queued == 1
    (rid,) = r.lrange(f"dramatiq:{queue}-bulk", 0, -1)
    body = orjson.loads(r.hget(f"dramatiq:{queue}-bulk.msgs", rid))
    assert body["queue_name"] == f"{queue}-bulk" and body["message_id"] == message_id
    assert body["args"][0]["request"]["send_at"]
    assert read_status(r, prefix, message_id)["stream"] == "bulk"


def test_a_dispatched_message_is_timestamped_when_it_joins_its_queue(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    """The queue's oldest-age gauge (and its alert) must not see a message accepted days ago
    as days behind."""
    client, prefix, queue = door
    r: Any = redis_server.client()
    (message_id,) = _accept_due(client, 1)
    accepted = orjson.loads(r.get(f"{prefix}:msg:{message_id}:job"))
    later = time.time() + 3600
    assert _dispatcher(redis_server, prefix, queue).dispatch_due(later).queued == 1
    (rid,) = r.lrange(f"dramatiq:{queue}", 0, -1)
    queued = orjson.loads(r.hget(f"dramatiq:{queue}.msgs", rid))
    assert queued["message_timestamp"] == int(later * 1000)
    assert accepted["message_timestamp"] < queued["message_timestamp"]
    assert {k: v for k, v in queued.items() if k != "message_timestamp"} == {
        k: v for k, v in accepted.items() if k != "message_timestamp"}
    assert orjson.loads(r.get(f"{prefix}:msg:{message_id}:job")) == queued  # the sweeper's copy


def test_a_scheduled_send_to_suppressed_recipients_is_suppressed_not_scheduled(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    client, prefix, queue = door
    r: Any = redis_server.client()
    admin = {"Authorization": "Bearer " + mint_token(TEST_SECRET, subject="ops",
                                                     scope="email:admin")}
    added = client.post("/v1/suppressions", headers=admin,
                        json={"address": "gone@example.com", "reason": "hard_bounce",
                              "scope": "bulk"})
    assert added.status_code == 201, added.text
    batch = client.post("/v1/messages/batch", headers=GOOD, json={"messages": [
        message(to="gone@example.com", send_at=future(600), stream="bulk"),
        message(to="gone@example.com", send_at=future(600)),  # transactional: not suppressed
    ]})
    assert batch.status_code == 202, batch.text
    assert [m["status"] for m in batch.json()["messages"]] == ["suppressed", "scheduled"]
    suppressed, scheduled = (m["id"] for m in batch.json()["messages"])
    assert r.zscore(schedule_key(prefix), suppressed) is None
    assert r.zscore(schedule_key(prefix), scheduled) is not None
    assert read_status(r, prefix, suppressed)["status"] == "suppressed"
    assert r.llen(f"dramatiq:{queue}-bulk") == 0


def test_without_webhooks_scheduling_and_cancelling_write_no_events(
        redis_server: RedisServer) -> None:
    """Without webhooks nothing reads lifecycle events (the stream would only grow): neither
    ``scheduled``, nor ``queued`` at dispatch, nor ``cancelled`` is written."""
    prefix, queue = f"sched-{uuid.uuid4().hex[:8]}", f"sq-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix, QUEUE_NAME=queue,
                            RESET_LIMIT_PER_RECIPIENT="off")
    r: Any = redis_server.client()
    with TestClient(create_app(settings)) as client:
        due = _accept_due(client, 2)
        Dispatcher.from_settings(settings).dispatch_due()
        assert r.xlen(stream_key(prefix)) == 0
        later = client.post("/v1/messages", json=message(send_at=future(600)),
                            headers=GOOD).json()["id"]
        assert client.delete(f"/v1/messages/{later}", headers=GOOD).status_code == 200
    assert r.xlen(stream_key(prefix)) == 0
    assert read_status(r, prefix, later)["status"] == "cancelled"
    assert {read_status(r, prefix, mid)["status"] for mid in due} == {"queued"}


def test_a_scheduled_message_keeps_its_pinned_template_version_until_it_is_done(
        door: tuple[TestClient, str, str], redis_server: RedisServer) -> None:
    client, prefix, _ = door
    r: Any = redis_server.client()
    writer = TemplateStoreWriter(r, prefix)
    name = f"promo-{uuid.uuid4().hex[:6]}"
    key = f"default/{name}"

    def version(subject: str) -> str:
        source = source_from_spec(key, {"subject": subject, "html": "<p>x</p>", "text": "x"})
        writer.put(key, source, {"kind": "test"})
        return source.version

    first = version("one")
    wait_for(lambda: client.get(f"/v1/templates/{name}", headers=GOOD).json().get("version")
             == first, message="the ingress to serve the template")
    message_id = client.post("/v1/messages", headers=GOOD, json={
        "template": name, "to": "a@example.org", "send_at": future(3600)}).json()["id"]
    assert r.hget(status_key(prefix, message_id), "version").decode() == first
    version("two")
    version("three")
    archive = StoreKeys(prefix).archive
    collect_garbage(r, prefix, keep=1)
    assert r.hexists(archive, f"{key}@{first}")  # the waiting message still needs it
    assert client.delete(f"/v1/messages/{message_id}", headers=GOOD).status_code == 200
    assert f"{key}@{first}" in collect_garbage(r, prefix, keep=1)  # cancelled: released
