"""The workers' broker against a real Redis: nothing deleted unsettled, requeues batched, what a
consumer leaves behind, and due retries moved in one step."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.errors import ConnectionClosed
from redis.connection import AbstractConnection

from mailcore.queue import WAKE_SUFFIX, Acceptor, Entry, send_job
from mailcore.redisclient import async_client
from workers.broker import (
    BUSY_POLL_MS,
    MAX_IDLE_POLL_MS,
    MAX_PENDING_REQUEUES,
    RecoveringRedisBroker,
    _BatchingConsumer,
    make_broker,
    mark_settled,
)

from .support import RedisServer, free_port, wait_for


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[RecoveringRedisBroker]:
    # Its own namespace, so other tests' queues never mix in.
    broker = make_broker(redis_server.url)
    broker.namespace = f"broker-test-{uuid.uuid4().hex[:8]}"
    yield broker
    broker.close()


def _queue_with(broker: RecoveringRedisBroker, count: int) -> str:
    queue = f"q{uuid.uuid4().hex[:6]}"
    broker.declare_queue(queue)
    for i in range(count):
        broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="noop", args=(i,),
                                        kwargs={}, options={}))
    return queue


def _keys(broker: RecoveringRedisBroker, queue: str) -> tuple[str, str]:
    return (f"{broker.namespace}:__acks__.{broker.broker_id}.{queue}",
            f"{broker.namespace}:{queue}.msgs")


def _take(consumer: Any, count: int) -> list[MessageProxy]:
    """The next ``count`` messages, failing after 10 s (``next`` answers None while waiting)."""
    taken: list[MessageProxy] = []

    def enough() -> list[MessageProxy] | None:
        message = next(consumer)
        if message is not None:
            taken.append(message)
        return taken if len(taken) >= count else None

    return wait_for(enough, timeout=10, interval=0, message=f"{count} messages")


def _settle(broker: RecoveringRedisBroker, queue: str, message: MessageProxy) -> None:
    """What the worker's settle script does for a sent message: remove it, mark it settled."""
    acks_key, messages_key = _keys(broker, queue)
    redis_id = message.options["redis_message_id"]
    assert broker.client.srem(acks_key, redis_id) == 1
    broker.client.hdel(messages_key, redis_id)
    mark_settled(message)


def test_settled_messages_are_not_acked_again(broker: RecoveringRedisBroker,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    queue = _queue_with(broker, 12)
    acks_key, messages_key = _keys(broker, queue)
    client = broker.client
    consumer: Any = broker.consume(queue, prefetch=6, timeout=100)
    first = _take(consumer, 6)
    for message in first:
        _settle(broker, queue, message)
        consumer.ack(message)
    assert consumer.pending_requeues == []

    round_trips: list[int] = []
    send = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        round_trips.append(1)
        send(self, command, check_health)  # type: ignore[no-untyped-call]  # redis-py: untyped

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    second = _take(consumer, 6)  # one fetch, nothing else to send
    monkeypatch.undo()
    assert len(round_trips) == 1
    assert client.hlen(messages_key) == 6 and client.scard(acks_key) == 6
    assert sorted(m.args[0] for m in first + second) == list(range(12))
    for message in second:
        _settle(broker, queue, message)
        consumer.ack(message)
    consumer.close()
    assert client.scard(acks_key) == 0 and client.hlen(messages_key) == 0


def test_unsettled_messages_are_given_back_with_the_next_fetch(
        broker: RecoveringRedisBroker) -> None:
    # An ack of a message whose outcome the worker could not record (Redis away) must not
    # delete it: it goes back to the queue and is delivered again.
    queue = _queue_with(broker, 4)
    acks_key, messages_key = _keys(broker, queue)
    consumer: Any = broker.consume(queue, prefetch=2, timeout=100)
    first = _take(consumer, 2)
    for message in first:
        consumer.ack(message)  # not settled
    assert broker.client.scard(acks_key) == 2  # still held until the requeue is sent
    following = _take(consumer, 2)  # the requeue rides this fetch: they go to the back
    assert [m.args[0] for m in following] == [2, 3]
    assert broker.client.hlen(messages_key) == 4
    for message in following:
        _settle(broker, queue, message)
        consumer.ack(message)
    again = _take(consumer, 2)
    assert [m.args[0] for m in again] == [m.args[0] for m in first]
    for message in again:
        _settle(broker, queue, message)
        consumer.ack(message)
    consumer.close()


def test_many_waiting_requeues_are_sent_without_waiting_for_a_fetch(
        broker: RecoveringRedisBroker) -> None:
    queue = _queue_with(broker, MAX_PENDING_REQUEUES + 1)
    acks_key, _ = _keys(broker, queue)
    consumer: Any = broker.consume(queue, prefetch=MAX_PENDING_REQUEUES + 1, timeout=100)
    taken = _take(consumer, MAX_PENDING_REQUEUES + 1)
    for message in taken[:MAX_PENDING_REQUEUES]:
        consumer.ack(message)
    consumer.prefetch = 0  # so that the next poll only sends what waits
    assert next(consumer) is None
    assert broker.client.smembers(acks_key) == {
        taken[-1].options["redis_message_id"].encode()}
    assert broker.client.llen(f"{broker.namespace}:{queue}") == MAX_PENDING_REQUEUES
    consumer.close()


def test_messages_of_a_consumer_that_dies_are_given_back(broker: RecoveringRedisBroker) -> None:
    queue = _queue_with(broker, 3)
    consumer: Any = broker.consume(queue, prefetch=3, timeout=100)
    taken = _take(consumer, 3)
    # The connection breaks (as when Redis restarts): the consumer is dropped without closing,
    # and its replacement gives the messages it held back to the queue.
    replacement: Any = broker.consume(queue, prefetch=3, timeout=100)
    again = _take(replacement, 3)
    assert sorted(m.message_id for m in again) == sorted(m.message_id for m in taken)
    for message in again:
        _settle(broker, queue, message)
        replacement.ack(message)
    replacement.close()


def test_fetch_survives_redis_forgetting_its_scripts(broker: RecoveringRedisBroker) -> None:
    queue = _queue_with(broker, 2)
    consumer: Any = broker.consume(queue, prefetch=1, timeout=100)
    [first] = _take(consumer, 1)
    _settle(broker, queue, first)
    consumer.ack(first)
    broker.client.script_flush()  # as after a Redis restart without persistence of scripts
    [second] = _take(consumer, 1)
    assert {first.args[0], second.args[0]} == {0, 1}
    _settle(broker, queue, second)
    consumer.ack(second)
    consumer.close()
    assert broker.client.hlen(_keys(broker, queue)[1]) == 0


def test_a_due_retry_moves_to_its_queue_in_one_step_keeping_its_id(
        broker: RecoveringRedisBroker) -> None:
    queue = _queue_with(broker, 0)
    delayed = f"{queue}.DQ"
    broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="noop", args=(7,), kwargs={},
                                    options={}), delay=1)
    consumer: Any = broker.consume(delayed, prefetch=1, timeout=100)
    [waiting] = _take(consumer, 1)
    redis_id = waiting.options["redis_message_id"]
    due = waiting.copy(queue_name=queue)
    del due.options["eta"]
    broker.enqueue(due)  # what Dramatiq's consumer thread does once the eta has passed
    broker.enqueue(due)  # a second promotion of the same copy does nothing
    consumer.ack(waiting)  # and its ack on the delay queue sends nothing
    client = broker.client
    assert client.lrange(f"{broker.namespace}:{queue}", 0, -1) == [redis_id.encode()]
    assert client.hkeys(f"{broker.namespace}:{queue}.msgs") == [redis_id.encode()]
    assert client.hlen(f"{broker.namespace}:{delayed}.msgs") == 0
    assert client.scard(_keys(broker, delayed)[0]) == 0
    assert consumer.pending_requeues == []
    consumer.close()


def test_requeue_against_a_lost_redis_is_a_connection_error(
        broker: RecoveringRedisBroker) -> None:
    # Dramatiq's consumer thread only survives broker connection errors: a raw redis error
    # from a requeue while Redis is away killed the thread for good.
    queue = _queue_with(broker, 1)
    consumer: Any = broker.consume(queue, prefetch=1, timeout=100)
    [message] = _take(consumer, 1)
    lost = make_broker(f"redis://127.0.0.1:{free_port()}/0")
    lost.declare_queue(queue)
    consumer.broker = lost
    with pytest.raises(ConnectionClosed):
        consumer.requeue([message])
    with pytest.raises(ConnectionClosed):
        lost.enqueue(message.copy(queue_name=queue))  # a promotion while Redis is away
    consumer.broker = broker
    consumer.close()


def test_an_idle_queue_is_polled_at_least_every_100_ms(broker: RecoveringRedisBroker,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Dramatiq backs off to its worker timeout (1 s) on an empty queue: a lone message on a
    # quiet system waited up to a second. Here the waits grow only to MAX_IDLE_POLL_MS.
    waits: list[float] = []
    monkeypatch.setattr(_BatchingConsumer, "_idle_wait",
                        lambda self, seconds: waits.append(seconds))
    queue = _queue_with(broker, 0)
    consumer: Any = broker.consume(queue, prefetch=4, timeout=1000)
    assert [next(consumer) for _ in range(20)] == [None] * 20
    assert waits[0] < 0.011 and waits[1] > waits[0]  # still a backoff: 5-10 ms, then longer
    assert max(waits) <= MAX_IDLE_POLL_MS / 1000
    assert min(waits[-5:]) >= MAX_IDLE_POLL_MS / 2000
    broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="noop", args=(), kwargs={},
                                    options={}))
    assert next(consumer) is not None  # the next poll finds it
    consumer.close()


def test_an_idle_consumer_is_woken_by_the_door_queuing_a_message(
        redis_server: RedisServer) -> None:
    """The wait between polls ends when the accept script pushes its wake-up token, not when
    the poll interval is over (here 30 s: the test's deadline is far shorter)."""
    # Dramatiq's namespace, where the door writes; Dramatiq's client reads with a 5 s socket
    # timeout (the real waits are 100 ms at most), this one without, so that only the token
    # can end a 30 s wait within the deadline.
    broker = make_broker(redis_server.url)
    broker.client.connection_pool.connection_kwargs["socket_timeout"] = None
    queue = f"wake-{uuid.uuid4().hex[:8]}"
    broker.declare_queue(queue)
    consumer: Any = broker.consume(queue, prefetch=4, timeout=1000)
    done = threading.Event()

    def wait() -> None:
        consumer._idle_wait(30)
        done.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for(lambda: _blocked_clients(redis_server) > 0, timeout=10,
             message="the consumer waiting on its wake-up list")
    job = send_job(uuid.uuid4().hex, {"template": "password_reset", "to": ["a@x.org"]},
                   source="api")

    async def accept() -> str:
        client = async_client(redis_server.url, "ingress")
        try:
            acceptor = Acceptor(client, queue_name=queue, prefix=f"w-{uuid.uuid4().hex[:6]}",
                                retention_seconds=60, max_queue_depth=0)
            return (await acceptor.accept([Entry(job, {"status": "queued"}, b"{}")])).outcome
        finally:
            await client.aclose()

    try:
        assert asyncio.run(accept()) == "queued"
        wait_for(done.is_set, timeout=10, message="the consumer woken")
        assert broker.client.exists(f"dramatiq:{queue}{WAKE_SUFFIX}") == 0  # token taken
        [message] = _take(consumer, 1)
        assert message.message_id == job["id"]
    finally:
        broker.client.rpush(f"dramatiq:{queue}{WAKE_SUFFIX}", "1")  # never leave it waiting
        waiter.join()
        consumer.close()
        # In Dramatiq's own namespace, which other tests watch (harness.redis.queue_idle
        # counts every acks set): leave nothing of this queue behind.
        leftovers = [*broker.client.scan_iter(f"dramatiq:*{queue}*")]
        if leftovers:
            broker.client.delete(*leftovers)
        broker.close()


def test_the_idle_wait_against_a_lost_redis_is_a_connection_error(
        broker: RecoveringRedisBroker) -> None:
    queue = _queue_with(broker, 0)
    consumer: Any = broker.consume(queue, prefetch=1, timeout=100)
    lost = make_broker(f"redis://127.0.0.1:{free_port()}/0")
    consumer.broker = lost
    with pytest.raises(ConnectionClosed):
        consumer._idle_wait(0.01)
    consumer.broker = broker
    consumer.close()


def _blocked_clients(redis_server: RedisServer) -> int:
    client = redis_server.client()
    try:
        return int(client.info("clients")["blocked_clients"])
    finally:
        client.close()


def test_a_busy_consumer_fetches_once_a_quarter_of_its_prefetch_is_free(
        broker: RecoveringRedisBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workers.broker.time.sleep", lambda seconds: None)
    queue = _queue_with(broker, 20)
    acks_key, _ = _keys(broker, queue)
    consumer: Any = broker.consume(queue, prefetch=8, timeout=1000)
    held = _take(consumer, 8)
    consumer.ack(held[0])  # one free: 7 of 8 still outstanding, no fetch yet
    assert next(consumer) is None and broker.client.scard(acks_key) == 8
    consumer.ack(held[1])  # a quarter free: one fetch brings two and sends both acks
    assert next(consumer) is not None and next(consumer) is not None
    assert broker.client.scard(acks_key) == 8  # 6 held + 2 new, the 2 acked ones gone
    consumer.close()


def test_a_busy_consumer_waits_briefly_instead_of_backing_off(
        broker: RecoveringRedisBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every prefetched message still being worked on is not an idle queue: no growing backoff,
    # and the first ack makes room for the next fetch.
    waits: list[float] = []
    monkeypatch.setattr("workers.broker.time.sleep", waits.append)
    queue = _queue_with(broker, 5)
    consumer: Any = broker.consume(queue, prefetch=2, timeout=1000)
    held = _take(consumer, 2)
    waits.clear()
    assert [next(consumer) for _ in range(10)] == [None] * 10
    assert waits == [BUSY_POLL_MS / 1000] * 10
    consumer.ack(held[0])
    assert next(consumer) is not None
    consumer.close()


def test_a_live_consumer_gives_back_what_sits_in_its_acks_set_unheld(
        redis_server: RedisServer) -> None:
    # A fetch whose reply was lost after the consumer (re)started: the ids moved into this live
    # worker's acks set and no consumer holds them; no heartbeat timeout would ever free them.
    broker = make_broker(redis_server.url, heartbeat_timeout_ms=1000)  # reconcile every 0.5 s
    broker.namespace = f"broker-test-{uuid.uuid4().hex[:8]}"
    try:
        queue = _queue_with(broker, 3)
        acks_key, _ = _keys(broker, queue)
        consumer: Any = broker.consume(queue, prefetch=4, timeout=100)
        client: Any = broker.client
        popped = client.lpop(f"{broker.namespace}:{queue}")
        assert isinstance(popped, bytes)
        lost = popped.decode()
        client.sadd(acks_key, lost)
        held = _take(consumer, 2)  # the two the consumer did fetch, handed out, not acked yet
        assert client.sismember(acks_key, lost)
        [recovered] = _take(consumer, 1)
        assert recovered.options["redis_message_id"] == lost
        # What the consumer handed out was never given back meanwhile (no duplicate).
        assert client.llen(f"{broker.namespace}:{queue}") == 0
        assert {m.options["redis_message_id"] for m in held} <= {
            m.decode() for m in client.smembers(acks_key)}
        for message in [*held, recovered]:
            _settle(broker, queue, message)
            consumer.ack(message)
        consumer.close()
    finally:
        broker.close()
