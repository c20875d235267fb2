"""The suppression list, checked again when a worker is about to send (no extra round trip).

The worker passes the recipients' suppression fields to the script that takes the send lease
(``StatusStore.begin_attempt``): one ``HMGET`` inside a script the worker runs anyway. When every
recipient is suppressed the same step ends the message ``suppressed`` (status, timeline, the
``suppressed`` lifecycle event, out of the open index); when some are, it records them in
``suppressed_recipients``, emits the event naming them, and the worker sends to the others.
The event is built only when needed: a check without one that finds suppressed recipients
writes nothing and answers ``announce``; the worker then runs it again with the event (a second
round trip only for such messages; none for the others).

Script layout (after ``begin_attempt``'s own): KEYS 3 the suppression hash, 4 the lifecycle
stream, 5 the message's job copy, 6 the open index; ARGV 7 the number of fields (two per
recipient), 8 the lifecycle event without ``recipients`` ('' for none yet), then the fields, then
the recipients.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import orjson

from .lifecycle import EMIT_LUA, SUPPRESSED, lifecycle_event
from .suppressions import DEFAULT_STREAM, LOOKUP_LUA, lookup_fields

SEND_TIME_CHECK_LUA = EMIT_LUA + LOOKUP_LUA + """
local function begin_suppression_check(now)
  local nfields = tonumber(ARGV[7] or '0')
  if not nfields or nfields == 0 then return '' end
  local hit = suppression_hits(KEYS[3], ARGV, 9, nfields, now)
  local count = nfields / 2
  local withheld = {}
  for i = 1, count do
    if hit[i] then withheld[#withheld + 1] = ARGV[8 + nfields + i] end
  end
  if #withheld == 0 then return '' end
  if ARGV[8] == '' then return 'announce' end
  local list = cjson.encode(withheld)
  -- NO_EVENT: without webhooks nothing reads lifecycle events, so none is written.
  if ARGV[8] ~= '-' then
    local announced = cjson.decode(ARGV[8])
    announced['recipients'] = withheld
    announced['owner'] = redis.call('HGET', KEYS[1], 'owner') or nil
    lifecycle_emit(KEYS[4], cjson.encode(announced))
  end
  if #withheld < count then
    redis.call('HSET', KEYS[1], 'suppressed_recipients', list)
    return list
  end
  redis.call('HSET', KEYS[1], 'status', 'suppressed', 'updated_at', tostring(now),
             'lease_until', '0', 'suppressed_recipients', list)
  redis.call('RPUSH', KEYS[2], cjson.encode({at = now, status = 'suppressed',
    detail = 'every recipient is on the suppression list (checked at send time)'}))
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[6], redis.call('HGET', KEYS[1], 'id'))
  redis.call('DEL', KEYS[5])
  return 'all'
end
"""


def job_recipients(job: dict[str, Any]) -> tuple[str, ...]:
    """Every distinct recipient address of a send job (to, cc, bcc), in order."""
    request = job.get("request")
    if not isinstance(request, dict):
        return ()
    found: dict[str, None] = {}
    for name in ("to", "cc", "bcc"):
        value = request.get(name)
        for recipient in value if isinstance(value, list) else [value]:
            address = recipient.get("email") if isinstance(recipient, dict) else recipient
            if isinstance(address, str) and address:
                found[address] = None
    return tuple(found)


def job_stream(job: dict[str, Any]) -> str:
    """The stream a job was sent on (``transactional`` when it names none)."""
    request = job.get("request")
    stream = request.get("stream") if isinstance(request, dict) else None
    return stream if isinstance(stream, str) and stream else DEFAULT_STREAM


@dataclass(frozen=True)
class SendTimeCheck:
    """What ``begin_attempt`` passes to its script for one job.

    Parameters:
      addresses: the job's recipients, in order.
      fields: their suppression fields (:func:`mailcore.suppressions.lookup_fields`).
      message_id, template, stream: for the ``suppressed`` event.
      announced: that event, once needed (:meth:`announcing`); b"" before.
    """

    addresses: tuple[str, ...]
    fields: tuple[str, ...]
    message_id: str
    template: str
    stream: str
    announced: bytes = b""

    #: ``announced`` when no lifecycle event is wanted (webhooks off).
    NO_EVENT: ClassVar[bytes] = b"-"

    @property
    def args(self) -> list[Any]:
        """ARGV 7 onward of the script."""
        return [len(self.fields), self.announced, *self.fields, *self.addresses]

    def announcing(self, emit_events: bool = True) -> SendTimeCheck:
        """The same check with its ``suppressed`` event (without ``recipients``: the script
        adds the ones it withholds), or :data:`NO_EVENT` without ``emit_events``."""
        if not emit_events:
            return replace(self, announced=self.NO_EVENT)
        return replace(self, announced=lifecycle_event(
            SUPPRESSED, self.message_id, template=self.template or None, stream=self.stream,
            detail="on the suppression list at send time"))

    @classmethod
    def for_job(cls, job: dict[str, Any], template: str = "") -> SendTimeCheck | None:
        """The check for ``job``; ``None`` when there is nothing to check (no recipients, or a
        sandboxed message: rendered and kept, never delivered)."""
        request = job.get("request")
        if isinstance(request, dict) and request.get("sandbox"):
            return None
        addresses = job_recipients(job)
        if not addresses:
            return None
        stream = job_stream(job)
        return cls(addresses=addresses, fields=tuple(lookup_fields(addresses, stream)),
                   message_id=str(job.get("id")), template=template, stream=stream)

    def withheld(self, raw: Any) -> tuple[str, ...]:
        """The recipients the script withheld, from its answer."""
        if not raw:
            return ()
        return tuple(orjson.loads(raw))
