"""The workers' broker against a real Redis: batched acks, and what a consumer leaves behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from redis.connection import AbstractConnection

from workers.broker import (
    BUSY_POLL_MS,
    MAX_IDLE_POLL_MS,
    MAX_PENDING_ACKS,
    RecoveringRedisBroker,
    make_broker,
)

from .support import RedisServer, wait_for


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


def test_acks_ride_along_with_the_next_fetch(broker: RecoveringRedisBroker,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    queue = _queue_with(broker, 12)
    acks_key, messages_key = _keys(broker, queue)
    client = broker.client
    consumer = broker.consume(queue, prefetch=6, timeout=100)
    first = _take(consumer, 6)
    for message in first:
        consumer.ack(message)
    # Acked, but not yet sent: still in the acks set and the messages hash.
    assert client.scard(acks_key) == 6 and client.hlen(messages_key) == 12

    round_trips: list[int] = []
    send = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        round_trips.append(1)
        send(self, command, check_health)  # type: ignore[no-untyped-call]  # redis-py: untyped

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    second = _take(consumer, 6)  # one fetch, carrying the six acks
    monkeypatch.undo()
    assert len(round_trips) == 1
    assert client.hlen(messages_key) == 6  # the first six are gone for good
    assert client.scard(acks_key) == 6  # the second six are in flight
    assert sorted(m.args[0] for m in first + second) == list(range(12))
    for message in second:
        consumer.ack(message)
    consumer.close()  # sends what is still waiting
    assert client.scard(acks_key) == 0 and client.hlen(messages_key) == 0


def test_many_waiting_acks_are_sent_without_waiting_for_a_fetch(
        broker: RecoveringRedisBroker) -> None:
    queue = _queue_with(broker, MAX_PENDING_ACKS + 1)
    acks_key, _ = _keys(broker, queue)
    consumer = broker.consume(queue, prefetch=MAX_PENDING_ACKS + 1, timeout=100)
    taken = _take(consumer, MAX_PENDING_ACKS + 1)
    for message in taken[:MAX_PENDING_ACKS]:
        consumer.ack(message)
    assert next(consumer) is None  # nothing left to fetch, but the acks went out
    assert broker.client.smembers(acks_key) == {
        taken[-1].options["redis_message_id"].encode()}
    consumer.close()


def test_acks_lost_with_a_consumer_are_redelivered(broker: RecoveringRedisBroker) -> None:
    queue = _queue_with(broker, 3)
    consumer = broker.consume(queue, prefetch=3, timeout=100)
    taken = _take(consumer, 3)
    for message in taken:
        consumer.ack(message)
    # The connection breaks before the acks are sent (as when Redis restarts): the consumer is
    # dropped without closing, and its replacement gives the messages back to the queue. The
    # worker's send guard then drops each as already sent.
    replacement = broker.consume(queue, prefetch=3, timeout=100)
    again = _take(replacement, 3)
    assert sorted(m.message_id for m in again) == sorted(m.message_id for m in taken)
    for message in again:
        replacement.ack(message)
    replacement.close()


def test_fetch_survives_redis_forgetting_its_scripts(broker: RecoveringRedisBroker) -> None:
    queue = _queue_with(broker, 2)
    consumer = broker.consume(queue, prefetch=1, timeout=100)
    [first] = _take(consumer, 1)
    consumer.ack(first)
    broker.client.script_flush()  # as after a Redis restart without persistence of scripts
    [second] = _take(consumer, 1)
    assert {first.args[0], second.args[0]} == {0, 1}
    consumer.ack(second)
    consumer.close()
    assert broker.client.hlen(_keys(broker, queue)[1]) == 0


def test_an_idle_queue_is_polled_at_least_every_100_ms(broker: RecoveringRedisBroker,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Dramatiq backs off to its worker timeout (1 s) on an empty queue: a lone message on a
    # quiet system waited up to a second. Here the waits grow only to MAX_IDLE_POLL_MS.
    waits: list[float] = []
    monkeypatch.setattr("workers.broker.time.sleep", waits.append)
    queue = _queue_with(broker, 0)
    consumer = broker.consume(queue, prefetch=4, timeout=1000)
    assert [next(consumer) for _ in range(20)] == [None] * 20
    assert waits[0] < 0.011 and waits[1] > waits[0]  # still a backoff: 5-10 ms, then longer
    assert max(waits) <= MAX_IDLE_POLL_MS / 1000
    assert min(waits[-5:]) >= MAX_IDLE_POLL_MS / 2000
    broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="noop", args=(), kwargs={},
                                    options={}))
    assert next(consumer) is not None  # the next poll finds it
    consumer.close()


def test_a_busy_consumer_fetches_once_a_quarter_of_its_prefetch_is_free(
        broker: RecoveringRedisBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workers.broker.time.sleep", lambda seconds: None)
    queue = _queue_with(broker, 20)
    acks_key, _ = _keys(broker, queue)
    consumer = broker.consume(queue, prefetch=8, timeout=1000)
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
    consumer = broker.consume(queue, prefetch=2, timeout=1000)
    held = _take(consumer, 2)
    waits.clear()
    assert [next(consumer) for _ in range(10)] == [None] * 10
    assert waits == [BUSY_POLL_MS / 1000] * 10
    consumer.ack(held[0])
    assert next(consumer) is not None
    consumer.close()
