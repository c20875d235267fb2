"""The send queue: how the ingress hands a job to the workers (Dramatiq on Redis).

The ingress writes Dramatiq's Redis layout itself — the message body in ``<queue>.msgs`` and its
id pushed on the ``<queue>`` list, exactly what Dramatiq's own ``enqueue`` does — from one Lua
script that also charges the caller's and the recipients' rate limits, writes the status record
and the idempotency record and checks the queue-depth ceiling. So accepting is atomic (all or
nothing is written), one round trip (on this VM a loopback round trip costs more CPU than all
the Python around it), and runs on the event loop's own asyncio Redis client.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis.asyncio as aioredis

from .ratelimit import BUCKET_LUA, Rate
from .status import status_key, timeline_key

#: The Dramatiq actor that renders and delivers one message.
SEND_ACTOR = "send_email"
#: Dramatiq's Redis namespace (its default).
NAMESPACE = "dramatiq"

# KEYS: idempotency record, status, timeline, <queue>.msgs, <queue>, then the token buckets.
# ARGV: 1 idempotent ('1'/'0'), 2 idempotency record, 3 its ttl, 4 max queue depth,
#   5 redis message id, 6 message body, 7 status retention, 8 timeline event,
#   9 whether the first bucket is the caller's ('1'/'0'), 10 bucket count, then capacity and
#   refill per second of each bucket, then the status hash's field/value pairs.
_ACCEPT = BUCKET_LUA + """
local callers = tonumber(ARGV[9])
local buckets = tonumber(ARGV[10])
local now = 0
if buckets > 0 then now = now_seconds() end
local tokens = {}
for i = 1, buckets do
  tokens[i] = bucket_tokens(KEYS[5 + i], tonumber(ARGV[9 + 2 * i]), tonumber(ARGV[10 + 2 * i]), now)
end
-- The caller's bucket pays for every request, whatever is answered.
if callers == 1 then
  local capacity, per_second = tonumber(ARGV[11]), tonumber(ARGV[12])
  if tokens[1] < 1 then
    bucket_store(KEYS[6], tokens[1], capacity, per_second, now)
    return {'rate_limited', tostring((1 - tokens[1]) / per_second)}
  end
  bucket_store(KEYS[6], tokens[1] - 1, capacity, per_second, now)
end
if ARGV[1] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {'existing', existing} end
end
local max_depth = tonumber(ARGV[4])
if max_depth > 0 and redis.call('LLEN', KEYS[5]) >= max_depth then return {'full', ''} end
-- The recipients' buckets: every one must have a token, then all are charged.
for i = callers + 1, buckets do
  if tokens[i] < 1 then
    return {'recipient_limited', tostring((1 - tokens[i]) / tonumber(ARGV[10 + 2 * i]))}
  end
end
for i = callers + 1, buckets do
  bucket_store(KEYS[5 + i], tokens[i] - 1, tonumber(ARGV[9 + 2 * i]),
               tonumber(ARGV[10 + 2 * i]), now)
end
if ARGV[1] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
redis.call('HSET', KEYS[2], unpack(ARGV, 11 + 2 * buckets))
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('RPUSH', KEYS[3], ARGV[8])
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
redis.call('RPUSH', KEYS[5], ARGV[5])
return {'queued', ''}
"""


@dataclass(frozen=True)
class Charge:
    """One token to take from the bucket at ``key`` (refilling at ``rate``) when accepting."""

    key: str
    rate: Rate


def send_job(message_id: str, request: dict[str, Any], *, source: str) -> dict[str, Any]:
    """The job payload: the validated request plus where and when it was accepted."""
    return {"id": message_id, "request": request, "source": source, "accepted_at": time.time()}


def queue_key(queue_name: str) -> str:
    return f"{NAMESPACE}:{queue_name}"


def encode_message(job: dict[str, Any], queue_name: str) -> tuple[str, bytes]:
    """A Dramatiq message for ``job`` as the Redis broker stores it: (redis id, body)."""
    redis_message_id = str(uuid.uuid4())
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue_name, actor_name=SEND_ACTOR, args=(job,), kwargs={},
        options={"redis_message_id": redis_message_id}, message_id=job["id"],
    )
    return redis_message_id, message.encode()


@dataclass(frozen=True)
class AcceptResult:
    """``outcome`` is ``queued``, ``existing`` (idempotent replay: ``stored`` holds the record),
    ``full`` (the queue-depth ceiling was reached), ``rate_limited`` (the caller's bucket is
    empty) or ``recipient_limited``; for the last two ``wait`` is the seconds until a token."""

    outcome: str
    stored: bytes = b""
    wait: float = 0.0


class Acceptor:
    """Atomically records and queues accepted messages.

    Parameters:
      client: the asyncio Redis client.
      queue_name: the queue the workers consume.
      prefix: key prefix of status and idempotency records.
      retention_seconds: how long status records live.
      max_queue_depth: refuse new work beyond this many waiting messages (0: no ceiling).
    """

    def __init__(
        self, client: aioredis.Redis, *, queue_name: str, prefix: str, retention_seconds: int,
        max_queue_depth: int,
    ) -> None:
        self.client = client
        self.queue_name = queue_name
        self.prefix = prefix
        self.retention = retention_seconds
        self.max_queue_depth = max_queue_depth
        self._script = client.register_script(_ACCEPT)

    async def accept(
        self, job: dict[str, Any], *, status_fields: dict[str, str], timeline_event: bytes,
        idempotency_key: str | None = None, idempotency_record: bytes = b"",
        idempotency_ttl: int = 0, caller: Charge | None = None,
        recipients: tuple[Charge, ...] = (),
    ) -> AcceptResult:
        """Charge ``caller`` (always, even when refused for another reason), then ``recipients``
        (all or none), and queue ``job``; nothing else is written unless it is queued."""
        redis_message_id, data = encode_message(job, self.queue_name)
        message_id = job["id"]
        queue = queue_key(self.queue_name)
        keys = [idempotency_key or f"{self.prefix}:idem:-",
                status_key(self.prefix, message_id), timeline_key(self.prefix, message_id),
                f"{queue}.msgs", queue]
        args: list[Any] = [
            "1" if idempotency_key else "0", idempotency_record, idempotency_ttl,
            self.max_queue_depth, redis_message_id, data, self.retention, timeline_event,
        ]
        charges = (caller, *recipients) if caller else recipients
        args += ["1" if caller else "0", len(charges)]
        for charge in charges:
            keys.append(charge.key)
            args += [charge.rate.count, charge.rate.per_second]
        for field, value in status_fields.items():
            args += [field, value]
        outcome, detail = await self._script(keys=keys, args=args)
        outcome = outcome.decode()
        if outcome.endswith("limited"):
            return AcceptResult(outcome=outcome, wait=max(float(detail), 0.001))
        return AcceptResult(outcome=outcome, stored=detail)

    async def queue_depth(self) -> int:
        return int(await self.client.llen(queue_key(self.queue_name)))
