"""The send queue: how the ingress hands a job to the workers (Dramatiq on Redis).

The ingress writes Dramatiq's Redis layout itself — the message body in ``<queue>.msgs`` and its
id pushed on the ``<queue>`` list, exactly what Dramatiq's own ``enqueue`` does — from one Lua
script that also charges the caller's and the recipients' rate limits, writes the status record
and the idempotency record and checks the queue-depth ceiling. So accepting is atomic (all or
nothing is written), one round trip (a loopback round trip can cost more CPU than all the
Python around it: bench/README.md), and runs on the event loop's own asyncio Redis client.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from .lifecycle import EMIT_LUA, QUEUED, lifecycle_event
from .lifecycle import stream_key as lifecycle_stream
from .ratelimit import BUCKET_LUA, Rate
from .schedule import schedule_key
from .status import Holding, job_key, open_key, status_key, timeline_key
from .suppressions import LOOKUP_LUA
from .suppressions import hash_key as suppressions_key

#: The Dramatiq actor that renders and delivers one message.
SEND_ACTOR = "send_email"
#: Dramatiq's Redis namespace (its default).
NAMESPACE = "dramatiq"
#: A queue's wake-up list (``<namespace>:<queue>.wake``): the accept script pushes a token
#: when it queues a message, and an idle worker waits on it instead of sleeping out its poll.
WAKE_SUFFIX = ".wake"

# KEYS: 1 idempotency record, 2 the schedule, 3 the lifecycle stream, then the B token
#   buckets, then the status, timeline, job-copy, queue-bodies and queue keys of each of the M
#   messages (each on its stream's queue: mailcore/streams.py), then the open index, then the
#   suppression hash.
# ARGV: 1 idempotent ('1'/'0'), 2 idempotency record, 3 its ttl, 4 max queue depth,
#   5 status retention, 6 whether the first bucket is the caller's ('1'/'0'), 7 B, 8 M,
#   then capacity, refill per second and tokens needed of each bucket, then for each message:
#   redis message id, message body, timeline event, the status hash's fields as one JSON
#   object (one argument instead of ~18: redis-py packs each argument in Python), the
#   message id, its lifecycle event ('' for none), its due time in ms ('' to queue it now: a
#   scheduled message goes to the schedule instead, mailcore/schedule.py), how long its
#   records live (the retention, plus the wait of a scheduled message) and, last, its
#   suppression fields ('' for no check; mailcore.suppressions.lookup_fields joined by
#   newlines). A message whose status field is 'suppressed' is recorded (and announced) but
#   neither queued nor scheduled.
# Each queue written to also gets a wake-up token (its key derived from the queue's: WAKE_SUFFIX).
# Before anything else, read only: when every recipient of some message is suppressed, answer
# 'suppressed' with their positions; the caller turns those into 'suppressed' records and asks
# again without the check (service/suppression_door.py). No extra round trip otherwise.
_ACCEPT = BUCKET_LUA + EMIT_LUA + LOOKUP_LUA + """
local callers, buckets, count = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local wholly = {}
for i = 1, count do
  local list = ARGV[9 + 3 * buckets + 9 * (i - 1) + 8]
  if list ~= '' then
    local fields = {}
    for field in string.gmatch(list, '[^\\n]+') do fields[#fields + 1] = field end
    local hit = suppression_hits(KEYS[#KEYS], fields, 1, #fields, now_seconds())
    local all = true
    for j = 1, #fields / 2 do
      if not hit[j] then all = false break end
    end
    if all then wholly[#wholly + 1] = i end
  end
end
if #wholly > 0 then return {'suppressed', cjson.encode(wholly)} end
local now = 0
if buckets > 0 then now = now_seconds() end
local capacity, rate, need, tokens = {}, {}, {}, {}
for j = 1, buckets do
  local at = 6 + 3 * j
  capacity[j], rate[j], need[j] = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  tokens[j] = bucket_tokens(KEYS[3 + j], capacity[j], rate[j], now)
end
-- The caller's bucket pays for every request, whatever is answered.
if callers == 1 then
  if tokens[1] < need[1] then
    bucket_store(KEYS[4], tokens[1], capacity[1], rate[1], now)
    return {'rate_limited', tostring((need[1] - tokens[1]) / rate[1])}
  end
  bucket_store(KEYS[4], tokens[1] - need[1], capacity[1], rate[1], now)
end
if ARGV[1] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {'existing', existing} end
end
local max_depth = tonumber(ARGV[4])
local at = 9 + 3 * buckets
if max_depth > 0 then
  -- Each queue's ceiling (a stream's queue: mailcore/streams.py) counts its own messages.
  local adding = {}
  for i = 1, count do
    if ARGV[at + 9 * (i - 1) + 6] == '' then
      local queue = KEYS[3 + buckets + 5 * i]
      adding[queue] = (adding[queue] or 0) + 1
    end
  end
  for queue, added in pairs(adding) do
    if redis.call('LLEN', queue) + added > max_depth then return {'full', ''} end
  end
end
-- The recipients' buckets: every one must have its tokens, then all are charged.
for j = callers + 1, buckets do
  if tokens[j] < need[j] then
    return {'recipient_limited', tostring((need[j] - tokens[j]) / rate[j])}
  end
end
for j = callers + 1, buckets do
  bucket_store(KEYS[3 + j], tokens[j] - need[j], capacity[j], rate[j], now)
end
if ARGV[1] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
local queued = {}
for i = 1, count do
  local base = 3 + buckets + 5 * (i - 1)
  local status, timeline, copy = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  local ttl = ARGV[at + 7]
  local hash_args = {'redis_id', ARGV[at]}
  local created, status_value = 0, ''
  for field, value in pairs(cjson.decode(ARGV[at + 3])) do
    hash_args[#hash_args + 1] = field
    hash_args[#hash_args + 1] = value
    if field == 'created_at' then created = value end
    if field == 'status' then status_value = value end
  end
  redis.call('HSET', status, unpack(hash_args))
  redis.call('EXPIRE', status, ttl)
  redis.call('RPUSH', timeline, ARGV[at + 2])
  redis.call('EXPIRE', timeline, ttl)
  lifecycle_emit(KEYS[3], ARGV[at + 5])
  if status_value ~= 'suppressed' then
    -- The sweeper's safety net (and a scheduled message's body): a copy while unfinished.
    redis.call('SET', copy, ARGV[at + 1], 'EX', ttl)
    if ARGV[at + 6] ~= '' then
      redis.call('ZADD', KEYS[2], ARGV[at + 6], ARGV[at + 4])
    else
      redis.call('ZADD', KEYS[#KEYS - 1], created, ARGV[at + 4])
      redis.call('HSET', KEYS[base + 4], ARGV[at], ARGV[at + 1])
      redis.call('RPUSH', KEYS[base + 5], ARGV[at])
      queued[KEYS[base + 5]] = true
    end
  end
  at = at + 9
end
-- Wake one idle consumer of each queue written to (workers/broker.py waits on this list between
-- polls): one token at most, so a busy system, whose consumers never wait, keeps just one.
for queue in pairs(queued) do
  local wake = queue .. '""" + WAKE_SUFFIX + """'
  if redis.call('LLEN', wake) == 0 then redis.call('RPUSH', wake, '1') end
end
return {'queued', ''}
"""


@dataclass(frozen=True)
class Charge:
    """``tokens`` to take from the bucket at ``key`` (refilling at ``rate``) when accepting."""

    key: str
    rate: Rate
    tokens: int = 1


@dataclass(frozen=True)
class Entry:
    """One message to accept: its job, its first status record and timeline event."""

    job: dict[str, Any]
    status_fields: dict[str, str]
    timeline_event: bytes
    #: The lifecycle event announced in the same step (b"" for none).
    lifecycle_event: bytes = b""
    #: Its recipients' suppression fields (``lookup_fields``), checked first; () for none.
    suppression_fields: tuple[str, ...] = ()
    #: Its stream's queue (``None``: the acceptor's).
    queue_name: str | None = None
    #: When a scheduled message is due (epoch seconds); ``None``: queue it now.
    due: float | None = None


def send_job(message_id: str, request: dict[str, Any], *, source: str) -> dict[str, Any]:
    """The job payload: the validated request plus where and when it was accepted."""
    return {"id": message_id, "request": request, "source": source, "accepted_at": time.time()}


def queue_key(queue_name: str) -> str:
    return f"{NAMESPACE}:{queue_name}"


def holding(queue_name: str, broker_id: str) -> Holding:
    """Where the worker whose Dramatiq broker id is ``broker_id`` holds ``queue_name``'s
    messages (the keys of Dramatiq's Redis broker)."""
    queue = queue_key(queue_name)
    return Holding(acks=f"{NAMESPACE}:__acks__.{broker_id}.{queue_name}",
                   messages=f"{queue}.msgs", delayed=f"{queue}.DQ",
                   delayed_messages=f"{queue}.DQ.msgs", dead=f"{queue}.XQ",
                   dead_messages=f"{queue}.XQ.msgs")


def encode_message(job: dict[str, Any], queue_name: str) -> tuple[str, bytes]:
    """A Dramatiq message for ``job`` as the Redis broker stores it: (redis id, body)."""
    redis_message_id = str(uuid.uuid4())
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue_name, actor_name=SEND_ACTOR, args=(job,), kwargs={},
        options={"redis_message_id": redis_message_id}, message_id=job["id"],
    )
    # The same JSON as Dramatiq's own encoder (json.dumps), written by the faster orjson.
    return redis_message_id, orjson.dumps(message._asdict())


def fresh_copy(body: bytes, *, retries: int = 0) -> tuple[str, bytes]:
    """The message ``body`` under a new Redis id, on its original queue, with no retry history
    (``retries`` retries counted): (redis id, body)."""
    message = orjson.loads(body)
    options = {key: value for key, value in message.get("options", {}).items()
               if key not in {"retries", "traceback", "requeue_timestamp", "eta"}}
    new_rid = str(uuid.uuid4())
    options["redis_message_id"] = new_rid
    if retries:
        options["retries"] = retries
    message["options"] = options
    if message["queue_name"].endswith(".DQ"):
        message["queue_name"] = message["queue_name"][:-3]
    return new_rid, orjson.dumps(message)


@dataclass(frozen=True)
class AcceptResult:
    """``outcome`` is ``queued``, ``suppressed`` (nothing written: the messages at positions
    ``suppressed`` have only suppressed recipients), ``existing`` (idempotent replay: ``stored``
    holds the record),
    ``full`` (the queue-depth ceiling was reached), ``rate_limited`` (the caller's bucket is
    empty) or ``recipient_limited``; for the last two ``wait`` is the seconds until a token."""

    outcome: str
    stored: bytes = b""
    wait: float = 0.0
    #: With ``suppressed``: positions (1-based) of the messages whose recipients all are.
    suppressed: tuple[int, ...] = ()


class ReplicationTimeout(RedisError):
    """Fewer replicas than ``REDIS_WAIT_REPLICAS`` confirmed an accept in time. Answered like
    an unreachable Redis (503, retry later): the message is on the primary and will likely be
    sent, so a caller's retry with the same ``Idempotency-Key`` replays instead of resending."""

    @classmethod
    def shortfall(cls, confirmed: int, wanted: int, timeout_ms: int) -> ReplicationTimeout:
        return cls(f"accepted by the primary but confirmed by {confirmed} of {wanted} "
                   f"replica(s) within {timeout_ms} ms")


#: Accept replies that wrote something (only those wait for the replicas).
WRITTEN = (b"queued", b"existing")


#: Runs the accept script with (keys, args) and returns its raw reply.
ScriptRunner = Callable[[list[str], list[Any]], Awaitable[Any]]


class Acceptor:
    """Atomically records and queues accepted messages.

    Parameters:
      client: the asyncio Redis client.
      queue_name: the queue the workers consume.
      prefix: key prefix of status and idempotency records.
      retention_seconds: how long status records live.
      max_queue_depth: refuse new work beyond this many waiting messages (0: no ceiling).
      wait_replicas: answer only once this many replicas have the accepted messages (Redis
        ``WAIT``, on the same connection as the write); 0: do not wait.
      wait_timeout_ms: how long to wait for them before :class:`ReplicationTimeout`.
      runner: runs the accept script for :meth:`accept` instead (the door's coalescer,
        service/coalescer.py, which then also does the ``WAIT``).
      emit_events: announce each queued message's ``queued`` lifecycle event
        (``WEBHOOKS_ENABLED``; an entry's own ``lifecycle_event``, set by its maker under the same
        rule, is announced as given).
    """

    def __init__(
        self, client: aioredis.Redis, *, queue_name: str, prefix: str, retention_seconds: int,
        max_queue_depth: int, wait_replicas: int = 0, wait_timeout_ms: int = 100,
        emit_events: bool = False, runner: ScriptRunner | None = None,
    ) -> None:
        self.emit_events = emit_events
        self.runner = runner
        self.client = client
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.queue_name = queue_name
        self.prefix = prefix
        self.retention = retention_seconds
        self.max_queue_depth = max_queue_depth
        self._script = client.register_script(_ACCEPT)

    @property
    def script(self) -> AsyncScript:
        """The registered accept script (its ``sha`` and ``script``)."""
        return self._script

    async def accept(
        self, entries: list[Entry], *, idempotency_key: str | None = None,
        idempotency_record: bytes = b"", idempotency_ttl: int = 0, caller: Charge | None = None,
        recipients: tuple[Charge, ...] = (), encoded: list[list[Any]] | None = None,
    ) -> AcceptResult:
        """Charge ``caller`` (always, even when refused for another reason), then ``recipients``
        (all or none), and queue every entry (all or none), in one round trip.

        ``encoded`` holds :meth:`encode` of each entry when the caller prepared them already
        (off the event loop, for large batches)."""
        charges = (caller, *recipients) if caller else recipients
        keys = [idempotency_key or f"{self.prefix}:idem:-", schedule_key(self.prefix),
                lifecycle_stream(self.prefix)]
        keys += [charge.key for charge in charges]
        args: list[Any] = [
            "1" if idempotency_key else "0", idempotency_record, idempotency_ttl,
            self.max_queue_depth, self.retention, "1" if caller else "0", len(charges),
            len(entries),
        ]
        for charge in charges:
            args += [charge.rate.count, charge.rate.per_second, charge.tokens]
        for index, entry in enumerate(entries):
            message_id = entry.job["id"]
            queue = queue_key(entry.queue_name or self.queue_name)
            keys += [status_key(self.prefix, message_id), timeline_key(self.prefix, message_id),
                     job_key(self.prefix, message_id), f"{queue}.msgs", queue]
            args += encoded[index] if encoded is not None else self.encode(entry)
        keys += [open_key(self.prefix), suppressions_key(self.prefix)]
        if self.runner is not None:
            outcome, detail = await self.runner(keys, args)
        elif self.wait_replicas:
            outcome, detail = await self._accept_replicated(keys, args)
        else:
            outcome, detail = await self._script(keys=keys, args=args)
        outcome = outcome.decode()
        if outcome == "suppressed":
            return AcceptResult(outcome=outcome, suppressed=tuple(orjson.loads(detail)))
        if outcome.endswith("limited"):
            return AcceptResult(outcome=outcome, wait=max(float(detail), 0.001))
        return AcceptResult(outcome=outcome, stored=detail)

    async def _accept_replicated(self, keys: list[str], args: list[Any]) -> Any:
        # WAIT counts the writes of its own connection: script and WAIT in one pipeline.
        async with self.client.pipeline(transaction=False) as pipe:
            await self._script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            result, replicas = await pipe.execute()
        if result[0] in WRITTEN and int(replicas) < self.wait_replicas:
            raise ReplicationTimeout.shortfall(int(replicas), self.wait_replicas,
                                               self.wait_timeout_ms)
        return result

    def encode(self, entry: Entry) -> list[Any]:
        """The accept script's arguments for one entry (the CPU part of accepting it); the
        suppression fields come last (service/suppression_door.py clears them there)."""
        ttl = self.retention
        if entry.due is not None:  # kept through the wait, then for the retention
            ttl += max(int(entry.due - time.time()), 0) + 1
        return [*encode_message(entry.job, entry.queue_name or self.queue_name),
                entry.timeline_event, orjson.dumps(entry.status_fields), entry.job["id"],
                entry.lifecycle_event or self._queued_event(entry),
                "" if entry.due is None else int(entry.due * 1000), ttl,
                "\n".join(entry.suppression_fields)]

    def _queued_event(self, entry: Entry) -> bytes:
        """The ``queued`` event of an entry that is queued, when webhooks are on."""
        fields = entry.status_fields
        if not self.emit_events or fields.get("status") != QUEUED:
            return b""
        return lifecycle_event(
            QUEUED, entry.job["id"], owner=fields.get("owner"), template=fields.get("template"),
            stream=fields.get("stream"), recipients=orjson.Fragment(fields.get("recipients", "[]")),
            metadata=orjson.Fragment(fields["metadata"]) if fields.get("metadata") else None)

    async def queue_depth(self) -> int:
        return int(await self.client.llen(queue_key(self.queue_name)))
