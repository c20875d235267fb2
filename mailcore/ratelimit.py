"""Token buckets in Redis: per-caller request limits and per-recipient reset limits."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

# Token buckets as Lua functions, shared by the standalone take below and by the accept step
# (mailcore.queue), which charges the caller's and recipients' buckets in the same script that
# queues the message. Tokens refill continuously; Redis' own clock keeps replicas consistent.
BUCKET_LUA = """
local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function bucket_tokens(key, capacity, per_second, now)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or capacity
  local ts = tonumber(state[2]) or now
  return math.min(capacity, tokens + math.max(0, now - ts) * per_second)
end
local function bucket_store(key, tokens, capacity, per_second, now)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('EXPIRE', key, math.ceil(capacity / per_second) + 1)
end
"""

_TAKE = BUCKET_LUA + """
local capacity = tonumber(ARGV[1])
local per_second = tonumber(ARGV[2])
local now = now_seconds()
local tokens = bucket_tokens(KEYS[1], capacity, per_second, now)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / per_second
end
bucket_store(KEYS[1], tokens, capacity, per_second, now)
return {allowed, tostring(wait)}
"""

_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
            "hour": 3600, "d": 86400, "day": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+?)s?\s*$")


@dataclass(frozen=True)
class Rate:
    """``count`` events per ``seconds``; the bucket holds ``count`` tokens (the burst)."""

    count: int
    seconds: int

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


def parse_rate(text: str) -> Rate | None:
    """``"600/minute"``, ``"5/hour"``, ``"100/s"``; ``"off"`` means no limit (``None``)."""
    if text.strip().lower() in {"off", "none", "0", "unlimited"}:
        return None
    match = _RATE.match(text.lower())
    if not match or match.group(2) not in _PERIODS or int(match.group(1)) < 1:
        raise ValueError(f"expected N/second|minute|hour|day or 'off', got {text!r}")
    return Rate(int(match.group(1)), _PERIODS[match.group(2)])


class RateLimiter:
    """Takes one token from a bucket; returns seconds to wait when it is empty (0 if allowed).

    Parameters:
      client: the asyncio Redis client.
      prefix: key prefix of the buckets.
    """

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.prefix = prefix
        self._take = client.register_script(_TAKE)

    def key(self, bucket: str) -> str:
        return bucket_key(self.prefix, bucket)

    async def take(self, bucket: str, rate: Rate) -> float:
        allowed, wait = await self._take(keys=[self.key(bucket)],
                                         args=[rate.count, rate.per_second])
        return 0.0 if int(allowed) else max(float(wait), 0.001)


class EmptyBuckets:
    """Buckets known to be empty, and until when, remembered in this process.

    Until a bucket's refill time it is certainly empty: other replicas can only take from it.
    So a request charged to it can be refused at once, before any work and without a Redis
    round trip; that is what the bucket would answer.

    Parameters:
      capacity: buckets remembered at most (the oldest are forgotten first).
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._until: dict[str, float] = {}

    def remember(self, bucket: str, seconds: float) -> None:
        """``bucket`` holds less than one token for ``seconds`` more."""
        self._until.pop(bucket, None)
        self._until[bucket] = time.monotonic() + seconds
        if len(self._until) > self.capacity:
            del self._until[next(iter(self._until))]

    def empty_for(self, bucket: str) -> float:
        """Seconds ``bucket`` is still known to be empty (0: not known to be)."""
        until = self._until.get(bucket)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._until[bucket]
            return 0.0
        return left


def bucket_key(prefix: str, bucket: str) -> str:
    return f"{prefix}:rate:{bucket}"


def retry_after(wait_seconds: float) -> str:
    return str(max(1, math.ceil(wait_seconds)))
