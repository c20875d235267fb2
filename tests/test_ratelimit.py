"""mailcore.ratelimit: rates, token buckets in a real Redis, and the empty buckets a process
remembers."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mailcore.ratelimit import EmptyBuckets, Rate, RateLimiter, bucket_key, parse_rate, retry_after
from mailcore.redisclient import async_client

from .support import RedisServer


@pytest.mark.parametrize(("text", "rate"), [
    ("600/minute", Rate(600, 60)), ("5/hour", Rate(5, 3600)), ("100/s", Rate(100, 1)),
    (" 2 / days ", Rate(2, 86400)), ("off", None), ("0", None), ("Unlimited", None),
])
def test_rates_are_read_as_written(text: str, rate: Rate | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "5", "5/fortnight", "0/minute", "-1/s", "five/hour"])
def test_other_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected N/second"):
        parse_rate(text)


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    assert [retry_after(s) for s in (0.001, 1.0, 1.2, 59.9)] == ["1", "1", "2", "60"]


def _takes(redis_server: RedisServer, prefix: str, bucket: str, rate: Rate, count: int
           ) -> list[float]:
    async def main() -> list[float]:
        client = async_client(redis_server.url, "ingress")
        try:
            limiter = RateLimiter(client, prefix)
            return [await limiter.take(bucket, rate) for _ in range(count)]
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_a_bucket_admits_its_burst_then_says_how_long_to_wait(redis_server: RedisServer
                                                              ) -> None:
    prefix = f"rl-{uuid.uuid4().hex[:8]}"
    waits = _takes(redis_server, prefix, "caller", Rate(3, 60), 5)
    assert waits[:3] == [0.0, 0.0, 0.0]
    # Empty: the next token is about 20 s away (3 per minute), and the refusals took nothing.
    assert all(19 < wait <= 20 for wait in waits[3:]), waits
    client = redis_server.client()
    key = bucket_key(prefix, "caller")
    assert float(client.hget(key, "tokens") or -1) < 1
    assert 0 < client.ttl(key) <= 61  # forgotten once it would be full again


def test_buckets_are_separate_per_name_and_prefix(redis_server: RedisServer) -> None:
    prefix = f"rl-{uuid.uuid4().hex[:8]}"
    assert _takes(redis_server, prefix, "a", Rate(1, 3600), 2)[1] > 0
    assert _takes(redis_server, prefix, "b", Rate(1, 3600), 1) == [0.0]
    assert _takes(redis_server, f"{prefix}-other", "a", Rate(1, 3600), 1) == [0.0]


def test_a_bucket_refills_continuously(redis_server: RedisServer) -> None:
    prefix = f"rl-{uuid.uuid4().hex[:8]}"
    # 1000 per second: an emptied bucket has a token again within milliseconds.
    rate = Rate(1000, 1)
    assert all(wait == 0.0 for wait in _takes(redis_server, prefix, "fast", rate, 1000))
    client = redis_server.client()
    key = bucket_key(prefix, "fast")
    client.hset(key, mapping={"tokens": "0", "ts": "0"})  # empty since the epoch: full now
    assert _takes(redis_server, prefix, "fast", rate, 1) == [0.0]


def test_empty_buckets_are_forgotten_when_they_refill_or_overflow() -> None:
    empty = EmptyBuckets(capacity=2)
    empty.remember("a", 60)
    assert 59 < empty.empty_for("a") <= 60
    empty.remember("b", -1)  # already refilled
    assert empty.empty_for("b") == 0 and empty.empty_for("never") == 0
    for name in ("c", "d", "e"):
        empty.remember(name, 60)
    assert empty.empty_for("a") == 0 and empty.empty_for("e") > 0  # the oldest went first
