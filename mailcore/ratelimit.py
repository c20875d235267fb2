"""Token buckets in Redis: per-caller request limits and per-recipient reset limits."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import redis.asyncio as aioredis

# Tokens refill continuously; Redis' own clock keeps replicas consistent.
_TAKE = """
local capacity = tonumber(ARGV[1])
local per_second = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * per_second)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / per_second
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / per_second) + 1)
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

    async def take(self, bucket: str, rate: Rate) -> float:
        allowed, wait = await self._take(keys=[f"{self.prefix}:rate:{bucket}"],
                                         args=[rate.count, rate.per_second])
        return 0.0 if int(allowed) else max(float(wait), 0.001)


def retry_after(wait_seconds: float) -> str:
    return str(max(1, math.ceil(wait_seconds)))
