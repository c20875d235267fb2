"""The sweeper against a real Redis: what it re-queues, and everything it must leave alone."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis

from mailcore.queue import Acceptor, Entry, send_job
from mailcore.status import QUEUED, event, initial_fields
from workers.sweeper import Sweeper

from .support import RedisServer

AGE = 60.0


def _accept(server: RedisServer, queue: str, prefix: str) -> str:
    """One message accepted the way the ingress does it."""
    message_id = str(uuid.uuid4())
    job = send_job(message_id, {"template": "password_reset", "to": "a@example.org",
                                "data": {"code": "1"}}, source="api")
    fields = initial_fields(message_id=message_id, owner="t", template="password_reset",
                            recipients=["a@example.org"], source="api")

    async def accept() -> None:
        client = aioredis.Redis.from_url(server.url)
        acceptor = Acceptor(client, queue_name=queue, prefix=prefix, retention_seconds=3600,
                            max_queue_depth=0)
        result = await acceptor.accept([Entry(job, fields, event(QUEUED, "accepted"))])
        assert result.outcome == "queued"
        await client.aclose()

    asyncio.run(accept())
    return message_id


def test_the_sweeper_requeues_only_what_no_queue_holds(redis_server: RedisServer) -> None:
    queue, prefix = f"q{uuid.uuid4().hex[:6]}", f"sw-{uuid.uuid4().hex[:6]}"
    client: Any = redis_server.client()
    sweeper = Sweeper(client, queue_name=queue, prefix=prefix, min_age_seconds=AGE)
    waiting, lost, leased, done = (_accept(redis_server, queue, prefix) for _ in range(4))
    status = {mid: f"{prefix}:msg:{mid}" for mid in (waiting, lost, leased, done)}
    rid = {mid: client.hget(key, "redis_id").decode() for mid, key in status.items()}
    assert client.llen(f"dramatiq:{queue}") == 4
    assert client.zcard(f"{prefix}:open") == 4

    now = time.time()
    assert sweeper.sweep(now) == 0  # all young
    # What the old worker did: acknowledge (delete) a message whose outcome was never written.
    client.lrem(f"dramatiq:{queue}", 0, rid[lost])
    client.hdel(f"dramatiq:{queue}.msgs", rid[lost])
    # One being sent (its lease live, its copy gone: e.g. a fetched copy), one finished.
    client.lrem(f"dramatiq:{queue}", 0, rid[leased])
    client.hdel(f"dramatiq:{queue}.msgs", rid[leased])
    client.hset(status[leased], mapping={"status": "sending", "lease_until": now + 2 * AGE})
    client.hset(status[done], "status", "sent")

    later = now + AGE + 1
    assert sweeper.sweep(later) == 1
    fields = client.hgetall(status[lost])
    assert fields[b"status"] == b"queued" and fields[b"redis_id"] != rid[lost].encode()
    body = orjson.loads(client.hget(f"dramatiq:{queue}.msgs", fields[b"redis_id"]))
    assert body["message_id"] == lost and body["args"][0]["id"] == lost
    assert client.lrange(f"dramatiq:{queue}", 0, -1)[-1] == fields[b"redis_id"]
    assert b"sweeper" in client.lrange(f"{status[lost]}:timeline", 0, -1)[-1]
    assert client.hget(status[waiting], "redis_id") == rid[waiting].encode()  # held: untouched
    assert client.hget(status[leased], "status") == b"sending"  # its lease is live
    assert client.zscore(f"{prefix}:open", done) is None  # finished: out of the index
    assert client.get(f"{prefix}:msg:{done}:job") is None
    # Looked at: not looked at again before another AGE has passed.
    assert sweeper.sweep(later + 1) == 0
    assert client.llen(f"dramatiq:{queue}") == 3

    # Once the lease has run out with nothing holding the message, it is re-queued too.
    assert sweeper.sweep(now + 3 * AGE) == 1
    assert client.hget(status[leased], "status") == b"queued"
    assert sweeper.sweep(now + 5 * AGE) == 0  # and nothing twice: both are held now
