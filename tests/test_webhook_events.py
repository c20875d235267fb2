"""The core lifecycle events (queued, sent, failed, dead) written in the same step as the status,
only with ``WEBHOOKS_ENABLED``; and the fan-out consumer group that turns them into deliveries."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any, cast

import orjson
import pytest
import redis

from mailcore.lifecycle import decode_event, lifecycle_event, stream_key
from mailcore.queue import Acceptor, Entry, holding, queue_key, send_job
from mailcore.redisclient import async_client
from mailcore.status import DEAD, FAILED, RETRYING, SENT, StatusStore, event, initial_fields
from mailcore.webhook_endpoints import Endpoint, EndpointSpec, WebhookStore
from workers.webhook_fanout import DELIVER_ACTOR, GROUP, Endpoints, Fanout

from .support import RedisServer, wait_for


def _events(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    entries = cast(list[Any], client.xrange(stream_key(prefix)))
    return [decode_event(fields[b"event"]) for _, fields in entries]


def _accept(url: str, prefix: str, emit: bool, count: int = 2) -> list[str]:
    entries = []
    for index in range(count):
        message_id = str(uuid.uuid4())
        fields = initial_fields(message_id=message_id, owner="jwt::shop", template="welcome",
                                recipients=[f"r{index}@example.com"], source="api",
                                metadata={"order": str(index)} if index else None)
        entries.append(Entry(send_job(message_id, {"template": "welcome"}, source="api"), fields,
                             event("queued")))

    async def main() -> None:
        client = async_client(url, "ingress")
        try:
            acceptor = Acceptor(client, queue_name=prefix, prefix=prefix, retention_seconds=60,
                                max_queue_depth=0, emit_events=emit)
            assert (await acceptor.accept(entries)).outcome == "queued"
        finally:
            await client.aclose()

    asyncio.run(main())
    return [entry.job["id"] for entry in entries]


def test_queued_is_announced_with_the_accept_only_when_enabled(redis_server: RedisServer) -> None:
    client = redis_server.client()
    off, on = (f"ev-{uuid.uuid4().hex[:8]}" for _ in range(2))
    _accept(redis_server.url, off, emit=False)
    assert not client.exists(stream_key(off))
    ids = _accept(redis_server.url, on, emit=True)
    events = _events(client, on)
    assert [e["message_id"] for e in events] == ids
    assert {e["type"] for e in events} == {"message.queued"}
    assert events[0]["owner"] == "jwt::shop" and events[0]["template"] == "welcome"
    assert events[0]["recipients"] == ["r0@example.com"] and "metadata" not in events[0]
    assert events[1]["metadata"] == {"order": "1"}
    assert len({e["id"] for e in events}) == 2


def _store(url: str, prefix: str, emit: bool) -> StatusStore:
    return StatusStore.from_url(url, prefix, 60, emit_events=emit)


def _held(client: redis.Redis, store: StatusStore, message_id: str) -> tuple[str, Any]:
    """A copy of ``message_id`` held by a worker, as Dramatiq leaves it before settle."""
    hold = holding(store.prefix, "broker-1")
    redis_id = str(uuid.uuid4())
    client.sadd(hold.acks, redis_id)
    client.hset(hold.messages, redis_id, b"{}")
    client.hset(f"{store.prefix}:msg:{message_id}",
                mapping={"owner": "jwt::shop", "template": "welcome", "status": "sending",
                         "recipients": '["ada@example.com"]', "metadata": '{"k": "v"}'})
    return redis_id, hold


@pytest.mark.parametrize("emit", [True, False])
def test_settled_outcomes_are_announced_in_the_same_step(redis_server: RedisServer,
                                                         emit: bool) -> None:
    client = redis_server.client()
    prefix = f"ev-{uuid.uuid4().hex[:8]}"
    store = _store(redis_server.url, prefix, emit)
    outcomes = {}
    for kind, status in (("sent", SENT), ("dead", FAILED), ("dead", DEAD), ("retry", RETRYING)):
        message_id = str(uuid.uuid4())
        redis_id, hold = _held(client, store, message_id)
        store.settle(message_id, kind, redis_id, hold, status=status, detail=f"{status} detail",
                     transport="smtp",
                     next_copy=(str(uuid.uuid4()), b"{}") if kind == "retry" else ("", b""))
        outcomes[message_id] = status
    events = _events(client, prefix)
    store.close()
    if not emit:
        assert events == []
        return
    # A retry is no event; the three outcomes are, with what the status hash knows.
    assert [(e["message_id"], e["type"]) for e in events] == [
        (m, f"message.{s}") for m, s in outcomes.items() if s != RETRYING]
    for one in events:
        assert one["owner"] == "jwt::shop" and one["template"] == "welcome"
        assert one["recipients"] == ["ada@example.com"] and one["metadata"] == {"k": "v"}
        assert one["detail"].endswith("detail") and one["transport"] == "smtp"


def test_a_copy_given_back_announces_nothing(redis_server: RedisServer) -> None:
    client = redis_server.client()
    prefix = f"ev-{uuid.uuid4().hex[:8]}"
    store = _store(redis_server.url, prefix, True)
    message_id = str(uuid.uuid4())
    redis_id, hold = _held(client, store, message_id)
    client.srem(hold.acks, redis_id)  # given back meanwhile: its redelivered copy decides
    store.settle(message_id, "dead", redis_id, hold, status=DEAD, detail="gave up")
    assert _events(client, prefix) == []
    assert client.hget(f"{prefix}:msg:{message_id}", "status") == b"retrying"
    store.close()


# --- the fan-out ---------------------------------------------------------------------------------

def _emit(client: redis.Redis, prefix: str, kind: str, owner: str) -> str:
    payload = lifecycle_event(kind, str(uuid.uuid4()), owner=owner)
    client.xadd(stream_key(prefix), {"event": payload})
    return str(orjson.loads(payload)["id"])


def _queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    ids = cast(list[bytes], client.lrange(queue_key(queue), 0, -1))
    bodies = cast(list[bytes], client.hmget(f"{queue_key(queue)}.msgs", ids)) if ids else []
    return [orjson.loads(body) for body in bodies]


def test_fanout_matches_event_owner_and_filter_and_shares_the_stream(
        redis_server: RedisServer) -> None:
    client = redis_server.client()
    prefix = f"fo-{uuid.uuid4().hex[:8]}"
    store = WebhookStore(client, prefix)
    shop, _ = store.create("jwt::shop", EndpointSpec(url="https://a.example.com/",
                                                     events=["sent", "dead"]))
    store.create("jwt::billing", EndpointSpec(url="https://b.example.com/", events=["sent"]))
    disabled, _ = store.create("jwt::shop", EndpointSpec(url="https://c.example.com/",
                                                         events=["sent"], enabled=False))
    audit = Endpoint(id="audit", owner=None, url="http://x.svc.cluster.local/",
                     events=("sent", "bounced"), secrets=(("whsec_x", None),), source="config")
    events = [_emit(client, prefix, "sent", "jwt::shop") for _ in range(20)]
    events.append(_emit(client, prefix, "bounced", "jwt::other"))
    events.append(_emit(client, prefix, "queued", "jwt::shop"))  # nobody wants it
    client.xadd(stream_key(prefix), {"event": b"not json"})  # dropped, acknowledged

    fanouts = [Fanout(redis_server.client(), prefix, prefix, Endpoints(store, [audit]),
                      consumer=f"c{i}", block_ms=50, batch=3) for i in range(2)]
    fanouts[0].ensure_group()
    fanouts[1].ensure_group()  # BUSYGROUP is fine

    def drain(fanout: Fanout) -> None:
        while fanout.step():
            pass

    threads = [threading.Thread(target=drain, args=(f,)) for f in fanouts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(f.events for f in fanouts) == len(events)  # each event read by one consumer
    assert all(f.events for f in fanouts)  # and both took part
    deliveries = _queued(client, prefix)
    assert {d["actor_name"] for d in deliveries} == {DELIVER_ACTOR}
    pairs = sorted((d["args"][0]["event"]["id"], d["args"][0]["endpoint_id"])
                   for d in deliveries)
    expected = sorted([(e, shop.id) for e in events[:20]] + [(e, "audit") for e in events[:21]])
    assert pairs == expected and disabled.id not in {p[1] for p in pairs}
    assert client.xpending(stream_key(prefix), GROUP)["pending"] == 0


def test_a_dead_consumers_entries_are_taken_over(redis_server: RedisServer) -> None:
    client = redis_server.client()
    prefix = f"fo-{uuid.uuid4().hex[:8]}"
    store = WebhookStore(client, prefix)
    endpoint, _ = store.create("jwt::shop", EndpointSpec(url="https://a.example.com/",
                                                         events=["sent"]))
    survivor = Fanout(redis_server.client(), prefix, prefix, Endpoints(store, []),
                      consumer="survivor", block_ms=10, claim_idle_ms=200)
    survivor.ensure_group()
    event_id = _emit(client, prefix, "sent", "jwt::shop")
    # Another consumer reads the event and dies before fanning it out.
    client.xreadgroup(GROUP, "dead-one", {stream_key(prefix): ">"}, count=10)
    assert survivor.step() == 0  # not idle long enough yet: left to its reader
    # Each step blocks up to 10 ms for new entries, then looks for idle ones again.
    wait_for(lambda: survivor.step() or survivor.events, timeout=10, interval=0,
             message="the takeover")
    assert survivor.events == 1
    [delivery] = _queued(client, prefix)
    assert delivery["args"][0]["event"]["id"] == event_id
    assert delivery["args"][0]["endpoint_id"] == endpoint.id
    assert client.xpending(stream_key(prefix), GROUP)["pending"] == 0


def test_consumers_of_past_processes_are_forgotten(redis_server: RedisServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import webhook_fanout

    client = redis_server.client()
    prefix = f"fo-{uuid.uuid4().hex[:8]}"
    fanout = Fanout(redis_server.client(), prefix, prefix,
                    Endpoints(WebhookStore(client, prefix), []), consumer="alive", block_ms=10)
    fanout.ensure_group()
    _emit(client, prefix, "sent", "jwt::shop")
    client.xreadgroup(GROUP, "gone-busy", {stream_key(prefix): ">"}, count=1)  # holds an entry
    client.xgroup_createconsumer(stream_key(prefix), GROUP, "gone-idle")  # holds nothing
    assert fanout.forget_gone_consumers() == 0  # nobody idle for a day
    monkeypatch.setattr(webhook_fanout, "GONE_AFTER_MS", -1)
    assert fanout.forget_gone_consumers() == 1
    names = {info["name"] for info in client.xinfo_consumers(stream_key(prefix), GROUP)}
    assert names == {b"gone-busy"} or names == {"gone-busy"}  # its entry awaits XAUTOCLAIM


def test_the_fanout_thread_outlives_redis_errors_and_stops_on_shutdown(
        redis_server: RedisServer) -> None:
    from workers.webhook_fanout import FanoutThread

    client = redis_server.client()
    prefix = f"fo-{uuid.uuid4().hex[:8]}"
    store = WebhookStore(client, prefix)
    store.create("jwt::shop", EndpointSpec(url="https://a.example.com/", events=["sent"]))
    made: list[Fanout] = []

    def make() -> Fanout:
        if not made:
            made.append(None)  # type: ignore[arg-type]
            raise redis.ConnectionError("Redis is restarting")  # the first attempt fails
        fanout = Fanout(redis_server.client(), prefix, prefix, Endpoints(store, []),
                        block_ms=20)
        made.append(fanout)
        return fanout

    thread = FanoutThread(make, pause=0.05)
    thread.after_worker_boot(None, None)  # type: ignore[arg-type]
    try:
        _emit(client, prefix, "sent", "jwt::shop")
        wait_for(lambda: len(_queued(client, prefix)) == 1, timeout=10,
                 message="the event fanned out after the error")
    finally:
        thread.before_worker_shutdown(None, None)  # type: ignore[arg-type]
    assert thread._thread is not None and not thread._thread.is_alive()
