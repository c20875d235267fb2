"""Scheduled sends: ``send_at``, the durable schedule in Redis, dispatch and cancel.

A message accepted with ``send_at`` is written by the accept step (:mod:`mailcore.queue`) like
any other — status record, timeline, the copy of its job body (``<prefix>:msg:<id>:job``) — but
with status ``scheduled``, and instead of being pushed on its queue its id is added to the
schedule, a sorted set ``<prefix>:schedule`` scored by its due time (epoch ms). Nothing waits in
a process's memory (Dramatiq's own delays are not used): every process may restart at any time.

The dispatcher (:class:`Dispatcher`, a thread in every worker process: ``workers.dispatcher``)
takes the due ids and moves each to its queue in one Lua step (:data:`_DISPATCH`): it removes
the id from the schedule and only the caller whose ``ZREM`` removed it goes on, so with any
number of dispatchers running at once each message is queued exactly once. The same step
records ``queued`` (status, timeline), puts the message in the open index the sweeper watches
(a scheduled message is not there: the sweeper never takes it for lost) and appends the
``queued`` lifecycle event.

Cancelling (:func:`cancel`) is the same race decided the same way: the cancel step removes the
id from the schedule too, so exactly one of cancel and dispatch wins, and the loser is told the
truth (the cancel answers the status the message has now).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from .config import Settings
from .errors import InvalidSendAt, NotCancellable, SendAtOutOfRange
from .lifecycle import CANCELLED, EMIT_LUA, lifecycle_event, stream_key
from .lifecycle import QUEUED as QUEUED_EVENT
from .redisclient import sync_client
from .status import CANCELLED as CANCELLED_STATUS
from .status import QUEUED, SCHEDULED, event, job_key, open_key, status_key, timeline_key

log = logging.getLogger("email_service.schedule")

#: Longest ``send_at`` text considered (an RFC 3339 date-time with nanoseconds is 35).
MAX_SEND_AT = 64
#: Due messages one dispatcher takes per pass (the rest in the next one, at once).
DISPATCH_BATCH = 500

# RFC 3339 section 5.6 ``date-time``, ASCII digits only (``\d`` would admit other scripts'),
# with a required offset: a time without one names no instant.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))", re.ASCII)


def schedule_key(prefix: str) -> str:
    """The schedule: message id -> due time (epoch milliseconds)."""
    return f"{prefix}:schedule"


def parse_send_at(value: str) -> float:
    """``value`` as epoch seconds; :class:`InvalidSendAt` saying what is wrong otherwise."""
    if len(value) > MAX_SEND_AT:
        raise _invalid(f"longer than {MAX_SEND_AT} characters")
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise _invalid("not an RFC 3339 date-time with an offset, e.g. 2030-01-31T09:00:00Z "
                       "or 2030-01-31T10:00:00+01:00")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if zulu:
        offset = UTC
    else:
        if int(off_h) > 23 or int(off_m) > 59:
            raise _invalid("the UTC offset is out of range")
        delta = timedelta(hours=int(off_h), minutes=int(off_m))
        offset = timezone(-delta if sign == "-" else delta)
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                          tzinfo=offset)
        stamp = moment.timestamp()
    except (ValueError, OverflowError) as exc:  # 2030-02-30, 25:00, year 0, a leap second
        raise _invalid(f"not a valid date and time: {exc}") from None
    return stamp + (int(fraction.ljust(9, "0")) / 1e9 if fraction else 0.0)


def due_time(value: str, *, horizon_seconds: int, clock_skew_seconds: int,
             now: float | None = None) -> float:
    """When a message with ``send_at`` ``value`` is due (epoch seconds): in the future (or at
    most ``clock_skew_seconds`` in the past: due now) and at most ``horizon_seconds`` ahead;
    :class:`SendAtOutOfRange` otherwise."""
    due = parse_send_at(value)
    now = time.time() if now is None else now
    if due < now - clock_skew_seconds:
        raise SendAtOutOfRange("send_at: in the past", details=[
            {"field": "send_at", "message": f"in the past (now is {_shown(now)})"}])
    if due > now + horizon_seconds:
        raise SendAtOutOfRange("send_at: beyond the scheduling horizon", details=[
            {"field": "send_at", "message": f"at most {horizon_seconds} seconds ahead "
             f"(until {_shown(now + horizon_seconds)}; SCHEDULE_HORIZON_SECONDS)"}])
    return max(due, now)


def _shown(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _invalid(message: str) -> InvalidSendAt:
    return InvalidSendAt(f"send_at: {message}", details=[{"field": "send_at",
                                                          "message": message}])


# KEYS: 1 schedule, 2 status, 3 timeline, 4 job copy, 5 open index, 6 queue bodies, 7 queue,
# 8 lifecycle stream. ARGV: 1 message id, 2 now (s), 3 retention, 4 timeline event,
# 5 lifecycle event, 6 the body as queued now ('' when there is no copy).
_DISPATCH = EMIT_LUA + """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return {'gone', ''} end
local s = redis.call('HMGET', KEYS[2], 'status', 'redis_id')
if s[1] ~= 'scheduled' then return {'not_scheduled', s[1] or ''} end
if ARGV[6] == '' or not s[2] or redis.call('EXISTS', KEYS[4]) == 0 then
  return {'no_copy', ''}
end
local body = ARGV[6]
redis.call('SET', KEYS[4], body, 'EX', ARGV[3])
redis.call('HSET', KEYS[6], s[2], body)
redis.call('RPUSH', KEYS[7], s[2])
redis.call('HSET', KEYS[2], 'status', 'queued', 'updated_at', ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
-- From now on the sweeper's safety net covers it, like any queued message.
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
lifecycle_emit(KEYS[8], ARGV[5])
return {'queued', ''}
"""

# KEYS: 1 schedule, 2 status, 3 timeline, 4 job copy, 5 lifecycle stream. ARGV: 1 message id,
# 2 now (s), 3 retention, 4 timeline event, 5 lifecycle event.
_CANCEL = EMIT_LUA + """
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return {'missing', ''} end
if status ~= 'scheduled' or redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return {'too_late', status}
end
redis.call('HSET', KEYS[2], 'status', 'cancelled', 'updated_at', ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[4])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
lifecycle_emit(KEYS[5], ARGV[5])
return {'cancelled', ''}
"""


def enqueued_now(body: bytes, now: float) -> bytes:
    """The accepted Dramatiq message ``body`` as enqueued at ``now``: its timestamp is when it
    joined the queue (the queue's age gauge and alert read it), not when it was accepted."""
    message = orjson.loads(body)
    message["message_timestamp"] = int(now * 1000)
    return orjson.dumps(message)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


@dataclass(frozen=True)
class Dispatched:
    """What one :meth:`Dispatcher.dispatch_due` pass did: ``queued`` messages moved to their
    queue; ``lost_races`` ids another dispatcher or a cancel took first; ``broken`` ids that
    were scheduled but had no job copy left (logged; they stay ``scheduled``)."""

    queued: int = 0
    lost_races: int = 0
    broken: int = 0


class Dispatcher:
    """Moves due scheduled messages to their queues.

    Parameters:
      client: a synchronous Redis client.
      prefix: key prefix of the status records and the schedule.
      queues: the Dramatiq queue key (``dramatiq:<name>``) of each stream.
      default_queue: the queue of a message whose status names no (known) stream.
      retention_seconds: status retention, from dispatch on.
      emit_events: append the ``queued`` lifecycle event of each dispatched message (when
        webhooks are on, as for messages queued at once).
    """

    def __init__(self, client: redis.Redis, *, prefix: str, queues: dict[str, str],
                 default_queue: str, retention_seconds: int, emit_events: bool = False) -> None:
        self.client: Any = client
        self.emit_events = emit_events
        self.prefix = prefix
        self.queues = queues
        self.default_queue = default_queue
        self.retention = retention_seconds
        self._dispatch = client.register_script(_DISPATCH)

    @classmethod
    def from_settings(cls, settings: Settings) -> Dispatcher:
        return cls(sync_client(settings.redis.where, "worker"), prefix=settings.redis.key_prefix,
                   queues={stream: f"dramatiq:{queue}"
                           for stream, queue in settings.queues.items()},
                   default_queue=f"dramatiq:{settings.worker.queue_name}",
                   retention_seconds=settings.limits.status_retention_seconds,
                   emit_events=settings.webhooks.enabled)

    def due(self, now: float, limit: int = DISPATCH_BATCH) -> list[str]:
        """Ids due by ``now``, the earliest first."""
        return [_text(raw) for raw in self.client.zrangebyscore(
            schedule_key(self.prefix), "-inf", int(now * 1000), start=0, num=limit)]

    def dispatch_due(self, now: float | None = None, limit: int = DISPATCH_BATCH) -> Dispatched:
        """One pass: every message due by ``now`` (at most ``limit``) queued."""
        now = time.time() if now is None else now
        ids = self.due(now, limit)
        if not ids:
            return Dispatched()
        pipe = self.client.pipeline(transaction=False)
        for message_id in ids:
            pipe.hmget(status_key(self.prefix, message_id), "stream", "owner", "template")
            pipe.get(job_key(self.prefix, message_id))
        found = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        for index, message_id in enumerate(ids):
            (stream, owner, template), body = found[2 * index], found[2 * index + 1]
            queue = self.queues.get(_text(stream), self.default_queue)
            payload = lifecycle_event(QUEUED_EVENT, message_id, owner=_text(owner) or None,
                                      template=_text(template) or None,
                                      stream=_text(stream) or None,
                                      detail="dispatched") if self.emit_events else b""
            self._dispatch(keys=[
                schedule_key(self.prefix), status_key(self.prefix, message_id),
                timeline_key(self.prefix, message_id), job_key(self.prefix, message_id),
                open_key(self.prefix), f"{queue}.msgs", queue, stream_key(self.prefix)],
                args=[message_id, now, self.retention,
                      event(QUEUED, "dispatched from the schedule"), payload,
                      enqueued_now(body, now) if body else b""], client=pipe)
        queued = lost = broken = 0
        for message_id, (outcome, _) in zip(ids, pipe.execute(), strict=True):
            outcome = _text(outcome)
            if outcome == "queued":
                queued += 1
            elif outcome == "no_copy":
                broken += 1
                log.error("scheduled message without a job copy; it cannot be dispatched",
                          extra={"message_id": message_id})
            else:
                lost += 1
        return Dispatched(queued=queued, lost_races=lost, broken=broken)


async def cancel(client: aioredis.Redis, prefix: str, message_id: str, *, owner: str,
                 template: str | None, stream: str | None, retention_seconds: int,
                 emit_events: bool = False) -> None:
    """Cancel the scheduled message ``message_id`` (its owner checked by the caller), or
    :class:`NotCancellable` with its current status when dispatch (or another cancel) won;
    ``LookupError`` when there is no such message."""
    payload = lifecycle_event(CANCELLED, message_id, owner=owner, template=template,
                              stream=stream) if emit_events else b""
    script = client.register_script(_CANCEL)
    outcome, current = await script(
        keys=[schedule_key(prefix), status_key(prefix, message_id),
              timeline_key(prefix, message_id), job_key(prefix, message_id), stream_key(prefix)],
        args=[message_id, time.time(), retention_seconds,
              event(CANCELLED_STATUS, "cancelled by its owner"), payload])
    outcome = _text(outcome)
    if outcome == "missing":
        raise LookupError(message_id)
    if outcome == "too_late":
        status = _text(current)
        raise NotCancellable(f"the message is {status}: only a scheduled message can be "
                             "cancelled", status=status)



__all__ = ["SCHEDULED", "Dispatched", "Dispatcher", "cancel", "due_time", "parse_send_at",
           "schedule_key"]
