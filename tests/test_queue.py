"""mailcore.queue: accepting is one atomic step against a real Redis: everything is written, or
nothing; the caller is charged whatever the answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest
import redis

from mailcore.queue import (
    SEND_ACTOR,
    WAKE_SUFFIX,
    Acceptor,
    AcceptResult,
    Charge,
    Entry,
    encode_message,
    fresh_copy,
    holding,
    queue_key,
    send_job,
)
from mailcore.ratelimit import Rate, bucket_key
from mailcore.redisclient import async_client
from mailcore.status import job_key, open_key, status_key, timeline_key

from .support import RedisServer


@dataclass
class Queue:
    url: str
    name: str
    prefix: str
    client: redis.Redis

    def accept(self, entries: list[Entry], *, max_queue_depth: int = 0, **options: Any
               ) -> AcceptResult:
        async def main() -> AcceptResult:
            client = async_client(self.url, "ingress")
            try:
                acceptor = Acceptor(client, queue_name=self.name, prefix=self.prefix,
                                    retention_seconds=600, max_queue_depth=max_queue_depth)
                return await acceptor.accept(entries, **options)
            finally:
                await client.aclose()

        return asyncio.run(main())

    def waiting(self) -> list[bytes]:
        return cast(list[bytes], self.client.lrange(queue_key(self.name), 0, -1))


@pytest.fixture
def queue(redis_server: RedisServer) -> Iterator[Queue]:
    name = f"q-{uuid.uuid4().hex[:8]}"
    client = redis_server.client()
    yield Queue(redis_server.url, name, f"qp-{uuid.uuid4().hex[:8]}", client)
    client.close()


def entry(to: str = "ada@example.com") -> Entry:
    job = send_job(uuid.uuid4().hex, {"template": "password_reset", "to": [to]}, source="api")
    return Entry(job, {"status": "queued", "created_at": "1763900000"},
                 b'{"status": "queued"}')


def test_an_accepted_message_is_queued_with_its_records(queue: Queue) -> None:
    first = entry()
    assert queue.accept([first]).outcome == "queued"
    message_id = first.job["id"]
    [redis_id] = queue.waiting()
    body = orjson.loads(queue.client.hget(f"{queue_key(queue.name)}.msgs", redis_id) or b"")
    assert (body["actor_name"], body["queue_name"], body["message_id"]) == (
        SEND_ACTOR, queue.name, message_id)
    assert body["args"] == [first.job] and body["options"]["redis_message_id"] == redis_id.decode()
    status = queue.client.hgetall(status_key(queue.prefix, message_id))
    assert status[b"status"] == b"queued" and status[b"redis_id"] == redis_id
    assert queue.client.lrange(timeline_key(queue.prefix, message_id), 0, -1) == [
        b'{"status": "queued"}']
    assert queue.client.get(job_key(queue.prefix, message_id)) is not None  # for the sweeper
    assert queue.client.zscore(open_key(queue.prefix), message_id) == 1763900000
    assert 0 < queue.client.ttl(status_key(queue.prefix, message_id)) <= 600


def test_a_batch_is_queued_whole_or_not_at_all(queue: Queue) -> None:
    assert queue.accept([entry(), entry()], max_queue_depth=3).outcome == "queued"
    assert queue.accept([entry(), entry()], max_queue_depth=3).outcome == "full"
    assert len(queue.waiting()) == 2
    assert queue.accept([entry()], max_queue_depth=3).outcome == "queued"


def test_an_idempotent_replay_returns_the_stored_answer_and_queues_nothing(queue: Queue
                                                                          ) -> None:
    key = f"{queue.prefix}:idem:k1"
    options: dict[str, Any] = {"idempotency_key": key, "idempotency_record": b"first answer",
               "idempotency_ttl": 60}
    assert queue.accept([entry()], **options).outcome == "queued"
    replay = queue.accept([entry()], **options)
    assert (replay.outcome, replay.stored) == ("existing", b"first answer")
    assert len(queue.waiting()) == 1 and 0 < queue.client.ttl(key) <= 60


def test_the_caller_pays_even_when_refused_and_recipients_only_when_queued(queue: Queue
                                                                          ) -> None:
    caller = Charge(bucket_key(queue.prefix, "caller"), Rate(2, 3600))
    mailbox = Charge(bucket_key(queue.prefix, "mailbox"), Rate(5, 3600), tokens=1)
    assert queue.accept([entry()], caller=caller, recipients=(mailbox,)).outcome == "queued"
    # The queue is full: refused, yet the caller's token is gone; the recipient's is not.
    full = queue.accept([entry()], max_queue_depth=1, caller=caller, recipients=(mailbox,))
    assert full.outcome == "full"
    assert float(queue.client.hget(mailbox.key, "tokens") or 0) == pytest.approx(4, abs=0.01)
    limited = queue.accept([entry()], caller=caller, recipients=(mailbox,))
    assert limited.outcome == "rate_limited" and 1700 < limited.wait <= 1800
    assert len(queue.waiting()) == 1


def test_queuing_leaves_one_wake_up_token_for_an_idle_worker(queue: Queue) -> None:
    """Each accept that queues a message makes sure one token waits on the queue's wake-up
    list (workers/broker.py waits on it); never more than one, however many are accepted;
    none for a refused, scheduled or replayed request."""
    wake = queue_key(queue.name) + WAKE_SUFFIX
    assert queue.accept([entry()], max_queue_depth=0).outcome == "queued"
    assert queue.client.lrange(wake, 0, -1) == [b"1"]
    for _ in range(3):
        queue.accept([entry(), entry()])
    assert queue.client.llen(wake) == 1
    queue.client.delete(wake)  # a worker took the token
    assert queue.accept([entry()], max_queue_depth=1).outcome == "full"
    job = send_job(uuid.uuid4().hex, {"template": "password_reset", "to": ["a@x.org"]},
                   source="api")
    later = Entry(job, {"status": "scheduled", "created_at": "1763900000"},
                  b'{"status": "scheduled"}', due=4_000_000_000)
    assert queue.accept([later]).outcome == "queued"  # to the schedule, not the queue
    assert queue.client.exists(wake) == 0


def test_a_recipient_without_tokens_refuses_the_whole_request(queue: Queue) -> None:
    first = Charge(bucket_key(queue.prefix, "m1"), Rate(5, 3600))
    empty = Charge(bucket_key(queue.prefix, "m2"), Rate(1, 3600), tokens=2)
    refused = queue.accept([entry()], recipients=(first, empty))
    assert refused.outcome == "recipient_limited" and refused.wait > 0
    assert queue.client.exists(first.key) == 0  # all or none: the first was not charged
    assert queue.waiting() == []


def test_dramatiq_messages_and_fresh_copies() -> None:
    job = send_job("m-1", {"template": "t"}, source="events")
    redis_id, body = encode_message(job, "email")
    message = orjson.loads(body)
    assert message["options"] == {"redis_message_id": redis_id}
    message["options"].update(retries=3, traceback="...", eta=1)
    message["queue_name"] = "email.DQ"
    new_id, copy = fresh_copy(orjson.dumps(message), retries=1)
    fresh = orjson.loads(copy)
    assert new_id != redis_id and fresh["options"] == {"redis_message_id": new_id, "retries": 1}
    assert (fresh["queue_name"], fresh["message_id"], fresh["args"]) == ("email", "m-1", [job])


def test_where_a_worker_holds_a_queue() -> None:
    keys = holding("email", "b1")
    assert (keys.acks, keys.messages, keys.delayed, keys.dead) == (
        "dramatiq:__acks__.b1.email", "dramatiq:email.msgs", "dramatiq:email.DQ",
        "dramatiq:email.XQ")
