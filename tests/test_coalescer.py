"""Group commit at the door (service/coalescer.py): concurrent requests through the real app on
one event loop share Redis round trips, each answered with its own outcome; a lone request is
flushed at once; a Redis that dies mid-flush fails every request of the flush with 503 and leaves
each message whole or absent."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from starlette.applications import Starlette

from harness.redis import RedisServer as PrivateRedis
from mailcore.queue import Acceptor, Charge, Entry, send_job
from mailcore.ratelimit import Rate, bucket_key
from mailcore.schedule import schedule_key
from mailcore.status import job_key, status_key, timeline_key
from mailcore.timestamps import rfc3339
from mailcore.tokens import mint_token
from service.app import create_app
from service.coalescer import AcceptCoalescer, _Pending
from service.sending import SendService

from .support import TEST_SECRET, RedisServer, app_settings

SHOP = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='shop')}"}
FREE = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='free')}"}
ADMIN = {"Authorization": f"Bearer {mint_token(TEST_SECRET, scope='email:admin')}"}


def reset(to: str, **extra: Any) -> dict[str, Any]:
    return {"template": "password_reset", "to": to, "data": {"email": to, "code": "1"}, **extra}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@example.org"


@asynccontextmanager
async def door(url: str, **env: str) -> AsyncIterator[tuple[httpx.AsyncClient, Starlette]]:
    """The real app in this event loop (so concurrent requests meet in one coalescer)."""
    tag = uuid.uuid4().hex[:8]
    settings = app_settings(url, QUEUE_NAME=f"co-{tag}", KEY_PREFIX=f"co-{tag}",
                            EVENTS_ENABLED="false", **env)
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://door") as client:
        yield client, app


def service_of(app: Starlette) -> SendService:
    service = app.state.send_service
    assert isinstance(service, SendService)
    return service


def coalescer_of(app: Starlette) -> AcceptCoalescer:
    coalescer = service_of(app).coalescer
    assert coalescer is not None
    return coalescer


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bodies(client: redis.Redis, queue: str) -> bytes:
    """Every queued Dramatiq message body of ``queue``, joined."""
    values: list[Any] = list(client.hvals(f"dramatiq:{queue}.msgs"))
    return b"\n".join(value if isinstance(value, bytes) else str(value).encode()
                      for value in values)


def whole_or_absent(client: redis.Redis, prefix: str, queue: str, message_ids: Sequence[str],
                    ) -> dict[str, bool]:
    """Each message's records: all there (True), none (False); anything between fails."""
    queued = _bodies(client, queue)
    found: dict[str, bool] = {}
    for message_id in message_ids:
        parts = [bool(client.exists(status_key(prefix, message_id))),
                 bool(client.exists(timeline_key(prefix, message_id))),
                 bool(client.exists(job_key(prefix, message_id))),
                 message_id.encode() in queued]
        assert all(parts) or not any(parts), (message_id, parts)
        found[message_id] = all(parts)
    return found


@pytest.mark.asyncio
async def test_concurrent_requests_share_flushes_each_with_its_own_outcome(
        redis_server: RedisServer) -> None:
    async with door(redis_server.url, RATE_LIMIT="3/minute", RATE_LIMIT_OVERRIDES="free=off",
                    RESET_LIMIT_PER_RECIPIENT="1/hour", SCHEDULE_HORIZON_SECONDS="86400") as (
            client, app):
        service = service_of(app)
        prefix, queue = service.settings.redis.key_prefix, service.settings.worker.queue_name
        blocked = unique("blocked")
        assert (await client.post("/v1/suppressions", json={"address": blocked},
                                  headers=ADMIN)).status_code == 201
        flooded = unique("flooded")
        assert (await client.post("/v1/messages", json=reset(flooded),
                                  headers=FREE)).status_code == 202
        coalescer = coalescer_of(app)
        flushes_before = coalescer.flushes
        idem = {**FREE, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
        same = reset(unique("idem"))
        send_at = rfc3339(time.time() + 3600)
        fine = [unique("fine") for _ in range(20)]
        calls: list[tuple[str, Awaitable[httpx.Response]]] = [
            *(("limited", client.post("/v1/messages", json=reset(unique("shop")), headers=SHOP))
              for _ in range(6)),
            ("idem", client.post("/v1/messages", json=same, headers=idem)),
            ("idem", client.post("/v1/messages", json=same, headers=idem)),
            ("conflict", client.post("/v1/messages", json=reset(unique("other")), headers=idem)),
            ("suppressed", client.post("/v1/messages", json=reset(blocked), headers=FREE)),
            ("scheduled", client.post("/v1/messages", json=reset(unique("later"), send_at=send_at),
                                      headers=FREE)),
            ("batch", client.post("/v1/messages/batch", headers=FREE, json={
                "messages": [reset(unique("batch")) for _ in range(3)]})),
            ("batch_refused", client.post("/v1/messages/batch", headers=FREE, json={
                "messages": [reset(unique("batch-ok")), reset(flooded)]})),
            *(("fine", client.post("/v1/messages", json=reset(to), headers=FREE)) for to in fine),
        ]
        answers = await asyncio.gather(*(call for _, call in calls))
        by_kind: dict[str, list[httpx.Response]] = {}
        for (kind, _), answer in zip(calls, answers, strict=True):
            by_kind.setdefault(kind, []).append(answer)

        # Shared round trips: fewer flushes than requests.
        assert coalescer.flushes - flushes_before < len(calls)
        assert sorted(r.status_code for r in by_kind["limited"]) == [202] * 3 + [429] * 3
        assert all(r.json()["error"] == "rate_limited" for r in by_kind["limited"]
                   if r.status_code == 429)
        first, replay = by_kind["idem"]
        assert first.status_code == replay.status_code == 202
        assert first.json()["id"] == replay.json()["id"]
        [conflict] = by_kind["conflict"]
        assert conflict.status_code == 409, conflict.text
        [suppressed] = by_kind["suppressed"]
        assert suppressed.status_code == 202 and suppressed.json()["status"] == "suppressed"
        [scheduled] = by_kind["scheduled"]
        assert scheduled.status_code == 202 and scheduled.json()["status"] == "scheduled"
        [batch] = by_kind["batch"]
        assert batch.status_code == 202 and len(batch.json()["messages"]) == 3
        [refused] = by_kind["batch_refused"]
        assert refused.status_code == 429
        assert refused.json()["error"] == "recipient_rate_limited"
        assert all(r.status_code == 202 for r in by_kind["fine"])

        check = redis_server.client()
        accepted = [first.json()["id"], scheduled.json()["id"],
                    *(m["id"] for m in batch.json()["messages"]),
                    *(r.json()["id"] for r in by_kind["fine"]),
                    *(r.json()["id"] for r in by_kind["limited"] if r.status_code == 202)]
        assert all(whole_or_absent(check, prefix, queue,
                                   [i for i in accepted if i != scheduled.json()["id"]]).values())
        assert check.zscore(schedule_key(prefix), scheduled.json()["id"]) is not None
        status = check.hgetall(status_key(prefix, suppressed.json()["id"]))
        assert status[b"status"] == b"suppressed"
        # The refused batch wrote nothing: its good recipient was not charged or queued.
        bodies = _bodies(check, queue)
        assert b"batch-ok" not in bodies
        # Each request was decided once: 3 + 1 + 1 + 3 + 20 + the first flooded message queued.
        assert check.llen(f"dramatiq:{queue}") == 3 + 1 + 3 + 20 + 1


@pytest.mark.asyncio
async def test_a_lone_request_is_flushed_at_once(
        redis_server: RedisServer) -> None:
    async with door(redis_server.url, RATE_LIMIT="off") as (client, app):
        coalescer = coalescer_of(app)
        assert coalescer.idle
        before = coalescer.flushes
        lone = asyncio.ensure_future(
            client.post("/v1/messages", json=reset(unique("lone")), headers=FREE))

        # The flush starts within a few turns of the loop: no timer, no window.
        def started() -> bool:
            return coalescer.flushes == before + 1
        for _ in range(200):
            if started():
                break
            await asyncio.sleep(0)
        assert started()
        assert not asyncio.get_running_loop()._scheduled or all(  # type: ignore[attr-defined]
            handle.cancelled() or handle.when() > asyncio.get_running_loop().time() + 1
            for handle in asyncio.get_running_loop()._scheduled)  # type: ignore[attr-defined]
        answer = await lone
        assert answer.status_code == 202
        assert coalescer.flushes == before + 1 and coalescer.flushed >= 1
        assert coalescer.idle


@pytest.mark.asyncio
async def test_a_script_error_is_the_requests_own_and_noscript_is_recovered(
        redis_server: RedisServer) -> None:
    async with door(redis_server.url, RATE_LIMIT="off") as (_client, app):
        coalescer = coalescer_of(app)
        service = service_of(app)
        prefix = service.settings.redis.key_prefix
        # A malformed call (an argument the script cannot read) fails alone; the others are
        # decided as usual in the same flush.
        good = [coalescer.run(*_noop_call(prefix, n)) for n in range(3)]
        bad = coalescer.run([f"{prefix}:idem:-"], ["not", "a", "valid", "call"])
        results = await asyncio.gather(*good, bad, return_exceptions=True)
        assert isinstance(results[-1], redis.ResponseError)
        assert all(isinstance(r, list) and r[0] == b"queued" for r in results[:-1]), results
        # Alone, too.
        with pytest.raises(redis.ResponseError):
            await coalescer.run([f"{prefix}:idem:-"], ["not", "a", "valid", "call"])
        # Scripts flushed (a restarted Redis): a shared flush meets NOSCRIPT, loads the script
        # and runs those calls again.
        await app.state.redis.script_flush()
        flushes = coalescer.flushes
        again = await coalescer._flush([_Pending(*_noop_call(prefix, n)) for n in range(4)])
        assert [r[0] for r in again] == [b"queued"] * 4
        assert coalescer.flushes == flushes + 1


def _noop_call(prefix: str, n: int) -> tuple[list[str], list[Any]]:
    """An accept script call for no messages (charges nothing, writes nothing)."""
    keys = [f"{prefix}:idem:-", f"{prefix}:schedule", f"{prefix}:events-{n}",
            f"{prefix}:open", f"{prefix}:suppressions"]
    return keys, ["0", b"", 0, 0, 60, "0", 0, 0]


@pytest.mark.asyncio
async def test_replication_timeout_fails_each_written_request_with_one_wait_per_flush(
        redis_server: RedisServer) -> None:
    async with door(redis_server.url, RATE_LIMIT="1/minute", RATE_LIMIT_OVERRIDES="free=off",
                    REDIS_WAIT_REPLICAS="1", REDIS_WAIT_TIMEOUT_MS="20",
                    RESET_LIMIT_PER_RECIPIENT="off") as (client, app):
        coalescer = coalescer_of(app)
        assert coalescer.wait_replicas == 1
        before = coalescer.flushes
        answers = await asyncio.gather(
            *(client.post("/v1/messages", json=reset(unique("w")), headers=FREE)
              for _ in range(8)),
            *(client.post("/v1/messages", json=reset(unique("s")), headers=SHOP)
              for _ in range(2)))
        # No replica: every written request is 503 (retry with the same key replays); the
        # refused one is refused as alone.
        codes = [a.status_code for a in answers]
        assert codes[:8] == [503] * 8
        assert sorted(codes[8:]) == [429, 503]
        assert coalescer.flushes - before < 10


@pytest.mark.asyncio
async def test_turned_off_each_request_runs_its_own_script(redis_server: RedisServer) -> None:
    async with door(redis_server.url, ACCEPT_COALESCE="false", RATE_LIMIT="off") as (client, app):
        service = service_of(app)
        assert service.coalescer is None and service.acceptor.runner is None
        answers = await asyncio.gather(*(
            client.post("/v1/messages", json=reset(unique("off")), headers=FREE)
            for _ in range(5)))
        assert [a.status_code for a in answers] == [202] * 5


# --- Redis dies mid-flush -------------------------------------------------------------------

@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    server = PrivateRedis(tmp_path / "redis", fsync_always=True).start()
    yield server
    server.stop()


def _kill_at_flush(coalescer: AcceptCoalescer, server: PrivateRedis, *, at: int) -> list[int]:
    """SIGKILL ``server`` when the ``at``-th flush is in flight (its requests taken, about to
    be written); returns the sizes of the flushes seen."""
    sizes: list[int] = []
    send: Callable[[Any], Awaitable[Any]] = coalescer._flush

    async def killing(batch: Any) -> Any:
        sizes.append(len(batch))
        if len(sizes) == at:
            os.kill(server.pid, signal.SIGKILL)
            assert server.process is not None
            server.process.wait(timeout=10)
        return await send(batch)

    coalescer._flush = killing  # type: ignore[method-assign]
    return sizes


async def _warm_up(client: httpx.AsyncClient, coalescer: AcceptCoalescer) -> None:
    """One request on the fresh Redis (its EVALSHA meets NOSCRIPT and the script is loaded)."""
    before = coalescer.flushes
    answer = await client.post("/v1/messages", json=reset(unique("warm")), headers=FREE)
    assert answer.status_code == 202, answer.text
    assert coalescer.flushes == before + 1


async def _one_in_flight_then(client: httpx.AsyncClient, coalescer: AcceptCoalescer,
                              recipients: list[str]) -> list[httpx.Response]:
    """Send to ``recipients[0]`` alone, and once its flush is in flight, to all the others at
    once (they wait for the next flush)."""
    before = coalescer.flushes
    first = asyncio.ensure_future(
        client.post("/v1/messages", json=reset(recipients[0]), headers=FREE))
    for _ in range(1000):
        if coalescer.flushes > before:
            break
        await asyncio.sleep(0)
    assert coalescer.flushes == before + 1
    rest = [asyncio.ensure_future(client.post("/v1/messages", json=reset(to), headers=FREE))
            for to in recipients[1:]]
    return list(await asyncio.gather(first, *rest))


@pytest.mark.asyncio
async def test_redis_killed_mid_flush_fails_every_pending_request_with_503(
        private_redis: PrivateRedis) -> None:
    async with door(private_redis.url, RATE_LIMIT="off", RESET_LIMIT_PER_RECIPIENT="off") as (
            client, app):
        service = service_of(app)
        prefix, queue = service.settings.redis.key_prefix, service.settings.worker.queue_name
        coalescer = coalescer_of(app)
        await _warm_up(client, coalescer)
        sizes = _kill_at_flush(coalescer, private_redis, at=2)
        recipients = [unique("k") for _ in range(30)]
        answers = await _one_in_flight_then(client, coalescer, recipients)
        codes = [a.status_code for a in answers]
        # The first flush went through; every request of the flush that met the dead Redis,
        # and every one behind it, got 503.
        assert sizes[0] == 1 and sum(sizes[1:]) == 29 and max(sizes) > 1, sizes
        assert codes == [202] + [503] * 29, codes
        assert all(a.json()["error"] == "unavailable" for a in answers[1:])
        assert coalescer.idle
    private_redis.start()  # the same append-only file (fsync always)
    check = private_redis.client()
    accepted = answers[0].json()["id"]
    assert whole_or_absent(check, prefix, queue, [accepted]) == {accepted: True}
    assert check.llen(f"dramatiq:{queue}") == 2  # with the warm-up's
    bodies = _bodies(check, queue)
    assert all(to.encode() not in bodies for to in recipients[1:])


@pytest.mark.asyncio
async def test_redis_killed_while_a_flush_runs_leaves_each_message_whole_or_absent(
        private_redis: PrivateRedis) -> None:
    async with door(private_redis.url, RATE_LIMIT="off", RESET_LIMIT_PER_RECIPIENT="off") as (
            client, app):
        service = service_of(app)
        prefix, queue = service.settings.redis.key_prefix, service.settings.worker.queue_name
        coalescer = coalescer_of(app)
        await _warm_up(client, coalescer)
        send = coalescer._flush
        sizes: list[int] = []

        async def dying(batch: Any) -> Any:
            sizes.append(len(batch))
            if len(sizes) == 2:  # Redis dies while this pipeline is written and run
                asyncio.get_running_loop().call_soon(os.kill, private_redis.pid, signal.SIGKILL)
            return await send(batch)

        coalescer._flush = dying  # type: ignore[method-assign]
        recipients = [unique("d") for _ in range(40)]
        answers = await _one_in_flight_then(client, coalescer, recipients)
        assert private_redis.process is not None
        private_redis.process.wait(timeout=10)
        assert sizes[0] == 1 and len(sizes) >= 2
        codes = [a.status_code for a in answers]
        # Wherever the kill landed, a request is answered 202 (kept) or 503 (retry).
        assert codes[0] == 202 and set(codes) <= {202, 503}, codes
        accepted = [a.json()["id"] for a in answers if a.status_code == 202]
    private_redis.start()
    check = private_redis.client()
    # Every 202 was kept (fsync always); whatever else Redis ran is whole, nothing half.
    assert all(whole_or_absent(check, prefix, queue, accepted).values())
    every = [key.split(":")[-1] for key in map(_text, check.keys(f"{prefix}:msg:*"))
             if not key.endswith((":timeline", ":job"))]
    whole_or_absent(check, prefix, queue, every)


def test_a_new_event_loop_starts_afresh(redis_server: RedisServer) -> None:
    """A coalescer whose loop went away mid-flush (its state stranded) serves the next loop."""
    client = aioredis.Redis.from_url(redis_server.url)
    script = client.register_script("return {'queued', ''}")
    coalescer = AcceptCoalescer(client, script)

    async def stranded() -> None:
        await coalescer.run(["k"], [])
        await client.connection_pool.disconnect()
        coalescer._alone = True  # as if the loop had stopped with a flush in flight

    async def fresh() -> Any:
        try:
            return await asyncio.wait_for(coalescer.run(["k"], []), timeout=10)
        finally:
            await client.aclose()

    asyncio.run(stranded())
    assert asyncio.run(fresh())[0] == b"queued"


def _entry() -> Entry:
    job = send_job(uuid.uuid4().hex, {"template": "password_reset", "to": ["a@example.org"]},
                   source="api")
    return Entry(job, {"status": "queued", "created_at": "1763900000"}, b'{"status": "queued"}')


@pytest.mark.asyncio
async def test_requests_are_decided_in_arrival_order(redis_server: RedisServer) -> None:
    """Through the Acceptor (no await before the coalescer: arrival order is call order): six
    requests at once against a bucket of three, then four with one idempotency key."""
    tag = uuid.uuid4().hex[:8]
    client = aioredis.Redis.from_url(redis_server.url)
    acceptor = Acceptor(client, queue_name=f"order-{tag}", prefix=f"order-{tag}",
                        retention_seconds=60, max_queue_depth=0)
    coalescer = AcceptCoalescer(client, acceptor.script)
    acceptor.runner = coalescer.run
    caller = Charge(bucket_key(f"order-{tag}", "caller:shop"), Rate(3, 60))
    try:
        limited = await asyncio.gather(*(acceptor.accept([_entry()], caller=caller)
                                         for _ in range(6)))
        assert [r.outcome for r in limited] == ["queued"] * 3 + ["rate_limited"] * 3
        key = f"order-{tag}:idem:one"
        records = [f"record-{n}".encode() for n in range(4)]
        keyed = await asyncio.gather(*(
            acceptor.accept([_entry()], idempotency_key=key, idempotency_record=record,
                            idempotency_ttl=60) for record in records))
        assert [r.outcome for r in keyed] == ["queued"] + ["existing"] * 3
        assert all(r.stored == records[0] for r in keyed[1:])
        # Each time the first went alone and the rest, arriving while it was in flight, together.
        assert coalescer.flushes == 4
    finally:
        await client.aclose()
