"""Message status: what happened to each accepted message, kept in Redis for a retention period.

A status is a hash ``<prefix>:msg:<id>`` plus a timeline list ``<prefix>:msg:<id>:timeline`` of
timestamped events. The ingress writes the first entry in the same atomic step that queues the
message; workers move it along: ``queued → sending → sent``, or ``retrying`` after a transient
failure, ``failed`` after a permanent one, ``dead`` when retries are exhausted.

The status is also the guard that makes delivery effectively-once: a worker checks it before
sending (:meth:`StatusStore.begin_attempt` takes a lease), so a redelivered message that was
already accepted by the relay is not sent again. And it is how nothing is lost: a worker removes
the message it worked on only in the step that records what happens next
(:meth:`StatusStore.settle`: sent; retrying, with the next copy on the delay queue; failed or
dead, with the message in the dead letters). The status names the message's current copy
(``redis_id``); while a message is unfinished it is also in the open index with a copy of its
body, for the workers' sweeper (``workers.sweeper``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import redis
from redis.commands.core import Script

from .group_commit import GroupCommitter
from .lifecycle import EMIT_LUA, lifecycle_event, stream_key
from .lifecycle import stream_key as lifecycle_stream
from .redisclient import Where, sync_client
from .send_time_suppression import SEND_TIME_CHECK_LUA, SendTimeCheck
from .suppressions import hash_key as suppressions_key
from .timestamps import rfc3339

QUEUED = "queued"
SENDING = "sending"
RETRYING = "retrying"
SENT = "sent"
FAILED = "failed"
DEAD = "dead"
#: Rendered and recorded, never delivered (sandbox mode): ``GET /v1/messages/{id}/content``.
SANDBOXED = "sandboxed"
#: Waiting in the durable schedule for its ``send_at``.
SCHEDULED = "scheduled"
#: Cancelled while still scheduled: never sent.
CANCELLED = "cancelled"
#: Every recipient is on the suppression list: never sent.
SUPPRESSED = "suppressed"
#: Accepted by the relay, then reported undeliverable (a DSN or a provider's event).
BOUNCED = "bounced"
#: Delivered, then reported as spam by the recipient.
COMPLAINED = "complained"
STATUSES = (QUEUED, SCHEDULED, SENDING, RETRYING, SENT, FAILED, DEAD, SANDBOXED, CANCELLED,
            SUPPRESSED, BOUNCED, COMPLAINED)
#: States after which nothing more is sent for a message (a copy that turns up is dropped).
FINISHED = frozenset({SENT, FAILED, DEAD, SANDBOXED, CANCELLED, SUPPRESSED, BOUNCED, COMPLAINED})


def lua_finished_set() -> str:
    """A Lua table literal whose keys are the finished statuses, for scripts that test
    ``finished[status]`` (one definition, here, for Python and every script)."""
    return "{" + ", ".join(f"['{name}'] = true" for name in sorted(FINISHED)) + "}"


# Atomically: skip when already finished (a redelivered copy), refuse while another attempt holds
# a live lease (answering when it ends), otherwise take the lease, count the attempt and name this
# copy (its Redis message id) as the one carrying the message forward.
_BEGIN_ATTEMPT = "local finished = " + lua_finished_set() + SEND_TIME_CHECK_LUA + """
local status = redis.call('HGET', KEYS[1], 'status')
if status and finished[status] then
  return {status, 0}
end
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if status == 'sending' and lease > tonumber(ARGV[1]) then
  -- This very attempt, run again (a client retrying after a lost reply), holds it already.
  if redis.call('HGET', KEYS[1], 'lease_owner') == ARGV[6] then
    return {'sending', redis.call('HGET', KEYS[1], 'attempts'),
            redis.call('HGET', KEYS[1], 'pinned_transport') or '',
            redis.call('HGET', KEYS[1], 'suppressed_recipients') or ''}
  end
  return {'busy', tostring(lease)}
end
local withheld = begin_suppression_check(tonumber(ARGV[1]))
if withheld == 'all' then return {'suppressed', 0} end
if withheld == 'announce' then return {'announce', 0} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
-- The field names this attempt's withheld recipients (a run again answers from it): none now.
if withheld == '' and attempts > 1 then redis.call('HDEL', KEYS[1], 'suppressed_recipients') end
redis.call('HSET', KEYS[1], 'status', 'sending', 'updated_at', ARGV[1],
           'lease_until', tonumber(ARGV[1]) + tonumber(ARGV[2]), 'lease_owner', ARGV[6])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'redis_id', ARGV[5]) end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {status or '', attempts, redis.call('HGET', KEYS[1], 'pinned_transport') or '',
        withheld}
"""


# Set fields, append the timeline event, renew both expiries: one EVALSHA (cheaper for the
# client than a MULTI/EXEC pipeline of the same four commands).
_RECORD = """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
"""

# An attempt's outcome and the acknowledgement of the message that carried it, in one step, so
# a message is never removed from Redis before what happens to it next is recorded (and a
# recorded outcome never waits on a separate ack). KEYS: 1 status, 2 timeline, 3 job copy,
# 4 open index, 5 this worker's acks set, 6 queue bodies, 7 delay queue, 8 its bodies,
# 9 dead-letter set, 10 its bodies, 11 the lifecycle stream. ARGV: 1 kind, 2 the copy's Redis
# id, 3 retention, 4 timeline event ('' for none), 5 now (ms), 6 message id, 7 id and 8 body of
# the next copy (retry, recheck), 9 the event when a dead letter is not ours to write, 10 the
# lifecycle event ('' for none; owner, template, recipients and metadata are added here from the
# status hash), 11.. status fields.
# Only the worker still holding the copy (it is in its acks set) removes its body: a copy given
# back meanwhile (consumer restart, heartbeat timeout) is redelivered and decides for itself.
_SETTLE = EMIT_LUA + "local finished = " + lua_finished_set() + """
local kind, rid = ARGV[1], ARGV[2]
local held = redis.call('SREM', KEYS[5], rid) == 1
local body = false
if held then
  if kind == 'dead' then body = redis.call('HGET', KEYS[6], rid) end
  redis.call('HDEL', KEYS[6], rid)
end
if kind == 'drop' then return held and 1 or 0 end
local current = redis.call('HGET', KEYS[1], 'status')
if kind ~= 'sent' and current and finished[current] then
  -- Finished already (this step run again after a lost reply, or another copy finished it):
  -- only 'sent' may overwrite a finished status.
  return held and 1 or 0
end
if kind == 'recheck' or kind == 'retry' then
  if held then
    redis.call('HSET', KEYS[8], ARGV[7], ARGV[8])
    redis.call('RPUSH', KEYS[7], ARGV[7])
    if kind == 'recheck' and redis.call('HGET', KEYS[1], 'redis_id') == rid then
      redis.call('HSET', KEYS[1], 'redis_id', ARGV[7])
    end
  end
  if kind == 'recheck' then return held and 1 or 0 end
end
local fields = {}
for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
local event = ARGV[4]
if kind == 'retry' and held then
  fields[#fields + 1] = 'redis_id'
  fields[#fields + 1] = ARGV[7]
elseif kind == 'dead' then
  if body then
    redis.call('ZADD', KEYS[9], ARGV[5], rid)
    redis.call('HSET', KEYS[10], rid, body)
    fields[#fields + 1] = 'redis_id'
    fields[#fields + 1] = rid
  else
    fields[2] = 'retrying'
    event = ARGV[9]
  end
end
if kind == 'sent' or body then
  redis.call('ZREM', KEYS[4], ARGV[6])
  redis.call('DEL', KEYS[3])
end
redis.call('HSET', KEYS[1], unpack(fields))
if event ~= '' then redis.call('RPUSH', KEYS[2], event) end
if ARGV[10] ~= '' and (kind == 'sent' or body) then
  local lifecycle = cjson.decode(ARGV[10])
  local known = redis.call('HMGET', KEYS[1], 'owner', 'template', 'recipients', 'metadata')
  lifecycle['owner'], lifecycle['template'] = known[1] or nil, known[2] or nil
  if known[3] then lifecycle['recipients'] = cjson.decode(known[3]) end
  if known[4] then lifecycle['metadata'] = cjson.decode(known[4]) end
  lifecycle_emit(KEYS[11], cjson.encode(lifecycle))
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return held and 1 or 0
"""



def status_key(prefix: str, message_id: str) -> str:
    return f"{prefix}:msg:{message_id}"


def timeline_key(prefix: str, message_id: str) -> str:
    return f"{prefix}:msg:{message_id}:timeline"


def job_key(prefix: str, message_id: str) -> str:
    """A copy of an unfinished message's body, kept so the sweeper can re-queue a lost one."""
    return f"{prefix}:msg:{message_id}:job"


def content_key(prefix: str, message_id: str) -> str:
    """The rendered subject, html and text of a sandboxed message (kept as long as its status)."""
    return f"{prefix}:msg:{message_id}:content"


def open_key(prefix: str) -> str:
    """Unfinished messages (sorted set: id -> when last looked at), which the sweeper checks."""
    return f"{prefix}:open"


def event(status: str, detail: str = "", **extra: Any) -> bytes:
    """One timeline entry."""
    entry: dict[str, Any] = {"at": round(time.time(), 3), "status": status}
    if detail:
        entry["detail"] = detail
    entry.update({key: value for key, value in extra.items() if value is not None})
    return orjson.dumps(entry)


def initial_fields(
    *, message_id: str, owner: str, template: str, recipients: list[str], source: str,
    metadata: dict[str, str] | None = None, extra: dict[str, str] | None = None,
    version: str | None = None,
) -> dict[str, str]:
    """The status hash of a message just accepted (with the caller's ``metadata``, if any;
    ``version``: the pinned template version)."""
    now = str(time.time())
    fields = {
        "id": message_id, "owner": owner, "status": QUEUED, "template": template,
        "recipients": orjson.dumps(recipients).decode(), "source": source, "attempts": "0",
        "created_at": now, "updated_at": now,
    }
    if metadata:
        fields["metadata"] = orjson.dumps(metadata).decode()
    fields.update(extra or {})
    if version:
        fields["version"] = version
    return fields


@dataclass(frozen=True)
class Attempt:
    """The outcome of :meth:`StatusStore.begin_attempt`.

    Parameters:
      proceed: whether this worker should send now.
      reason: ``sent``, ``failed`` or ``dead`` (already finished: drop this copy), ``busy``
        (another attempt holds the lease), or the previous status when proceeding.
      attempt: the attempt number counted for this try.
      lease_until: when ``busy``, when the other attempt's lease ends (epoch seconds).
      pinned: the transport an earlier attempt left unconfirmed (it may have the message):
        retries go there only, never to another transport.
      withheld: recipients withheld because they are on the suppression list.
    """

    proceed: bool
    reason: str
    attempt: int
    lease_until: float = 0.0
    pinned: str | None = None
    #: Recipients on the suppression list at send time: not sent to (all of them when
    #: ``reason`` is ``suppressed``).
    withheld: tuple[str, ...] = ()


@dataclass(frozen=True)
class Holding:
    """Where one worker holds the message copy it works on, in Dramatiq's Redis layout.

    Parameters:
      acks: the worker's set of fetched, unacknowledged Redis message ids.
      messages: the queue's bodies (``<queue>.msgs``).
      delayed: the delay queue (``<queue>.DQ``), where retries wait.
      delayed_messages: its bodies.
      dead: the dead-letter set (``<queue>.XQ``).
      dead_messages: its bodies.
    """

    acks: str
    messages: str
    delayed: str
    delayed_messages: str
    dead: str
    dead_messages: str


class _Scripts(NamedTuple):
    begin: Script
    record: Script
    settle: Script


class StatusStore:
    """Worker-side status updates (synchronous Redis).

    Each worker thread gets its own connection (``connect`` is called once per thread): going
    through a shared pool costs every command a checkout, a return and a fork check, and a
    message takes two commands. With ``group_commit`` the script calls of all threads go
    through one :class:`~mailcore.group_commit.GroupCommitter` instead (its own connection):
    calls made while another is in flight share the next round trip.

    Parameters:
      connect: makes a Redis client; called once per thread (and once for the committer).
      prefix: key prefix.
      retention_seconds: how long statuses are kept after their last change.
      emit_events: write the ``sent``, ``failed`` and ``dead`` lifecycle events
        (``WEBHOOKS_ENABLED``).
      group_commit: share round trips across threads (``WORKER_GROUP_COMMIT``).
    """

    def __init__(self, connect: Callable[[], redis.Redis], prefix: str,
                 retention_seconds: int, *, emit_events: bool = False,
                 group_commit: bool = False) -> None:
        self.emit_events = emit_events
        self.connect = connect
        self.prefix = prefix
        self.retention = retention_seconds
        self.group_commit = group_commit
        self._local = threading.local()
        self._clients: list[redis.Redis] = []
        self._clients_lock = threading.Lock()
        self._shared: tuple[GroupCommitter, _Scripts] | None = None

    @classmethod
    def from_url(cls, url: Where, prefix: str, retention_seconds: int, *,
                 emit_events: bool = False, group_commit: bool = False) -> StatusStore:
        return cls(lambda: sync_client(url, "worker", single_connection=True), prefix,
                   retention_seconds, emit_events=emit_events, group_commit=group_commit)

    @property
    def committer(self) -> GroupCommitter | None:
        """The group committer, once made (``group_commit``; tests and the bench count its
        flushes)."""
        return self._shared[0] if self._shared is not None else None

    def _run(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        """Run the script ``name`` (a field of :class:`_Scripts`): through the committer, or
        on this thread's connection."""
        if not self.group_commit:
            return getattr(self._scripts(), name)(keys=keys, args=args)
        shared = self._shared
        if shared is None:
            with self._clients_lock:  # made on first use, like a thread's connection
                if self._shared is None:
                    committer = GroupCommitter(self.connect())
                    self._shared = committer, _Scripts(
                        begin=committer.register(_BEGIN_ATTEMPT),
                        record=committer.register(_RECORD),
                        settle=committer.register(_SETTLE))
                shared = self._shared
        committer, scripts = shared
        return committer.run(getattr(scripts, name), keys, args)

    def _scripts(self) -> _Scripts:
        """This thread's scripts, on its own connection (made on first use)."""
        scripts: _Scripts | None = getattr(self._local, "scripts", None)
        if scripts is None:
            client = self.connect()
            with self._clients_lock:
                self._clients.append(client)
            scripts = _Scripts(begin=client.register_script(_BEGIN_ATTEMPT),
                               record=client.register_script(_RECORD),
                               settle=client.register_script(_SETTLE))
            self._local.scripts = scripts
        return scripts

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
            shared, self._shared = self._shared, None
        for client in clients:
            client.close()
        if shared is not None:
            shared[0].close()

    def begin_attempt(self, message_id: str, lease_seconds: float,
                      redis_id: str = "", check: SendTimeCheck | None = None) -> Attempt:
        """Take the send lease for the copy ``redis_id`` (which then carries the message).

        With ``check``, the recipients on the suppression list are withheld in the same step
        (``Attempt.withheld``); when that is all of them the message ends ``suppressed``."""
        keys = [status_key(self.prefix, message_id), timeline_key(self.prefix, message_id)]
        now = time.time()
        args: list[Any] = [now, lease_seconds, event(SENDING), self.retention, redis_id,
                           uuid.uuid4().hex]
        if check is not None:
            keys += [suppressions_key(self.prefix), lifecycle_stream(self.prefix),
                     job_key(self.prefix, message_id), open_key(self.prefix)]
        if check is not None and not self.emit_events:
            check = check.announcing(False)  # no event wanted: no second round trip either
        while True:
            previous, detail, *rest = self._run(
                "begin", keys, args + (check.args if check is not None else []))
            previous = previous.decode() if isinstance(previous, bytes) else str(previous)
            if previous != "announce" or check is None or check.announced:
                break
            # Some recipients are suppressed (nothing was written): again, with the event.
            check = check.announcing(self.emit_events)
        if previous == SUPPRESSED and check is not None:
            return Attempt(proceed=False, reason=previous, attempt=0,
                           withheld=check.addresses)
        if previous == "busy":
            return Attempt(proceed=False, reason=previous, attempt=0,
                           lease_until=float(detail))
        if previous in FINISHED:
            return Attempt(proceed=False, reason=previous, attempt=0)
        pinned = rest[0].decode() if rest and isinstance(rest[0], bytes) else None
        withheld = check.withheld(rest[1]) if check is not None and len(rest) > 1 else ()
        return Attempt(proceed=True, reason=previous, attempt=int(detail),
                       pinned=pinned or None, withheld=withheld)

    def record(self, message_id: str, status: str, detail: str = "", **fields: Any) -> None:
        """Set the status (and extra fields) and append a timeline event, in one round trip."""
        self._run("record", [status_key(self.prefix, message_id),
                             timeline_key(self.prefix, message_id)],
                  [self.retention, *self._event_and_fields(status, detail, fields)])

    def keep_content(self, message_id: str, subject: str, html: str, text: str) -> None:
        """Keep a sandboxed message's rendered parts as long as its status."""
        client = self._scripts().begin.registered_client  # this thread's connection
        key = content_key(self.prefix, message_id)
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"subject": subject, "html": html, "text": text})
            pipe.expire(key, self.retention)
            pipe.execute()

    def settle(self, message_id: str, kind: str, redis_id: str, holding: Holding, *,
               status: str = "", detail: str = "", next_copy: tuple[str, bytes] = ("", b""),
               **fields: Any) -> bool:
        """Record how an attempt ended and acknowledge the copy ``redis_id``, atomically.

        ``kind`` is ``sent``; ``retry`` (``next_copy`` goes to the delay queue); ``dead`` (the
        copy moves to the dead-letter set, for ``failed`` and ``dead``); ``recheck`` (another
        attempt holds the lease: look again later via ``next_copy``, status untouched); or
        ``drop`` (a copy of a finished message). Returns whether this worker still held the
        copy; when it did not (it was given back meanwhile), no next copy is made and a dead
        letter is recorded as ``retrying``: the redelivered copy decides.
        """
        new_id, new_body = next_copy
        args: list[Any] = [kind, redis_id, self.retention, b"", int(time.time() * 1000),
                           message_id, new_id, new_body, b""]
        if status:
            timeline, *pairs = self._event_and_fields(status, detail, fields)
            args[3] = timeline
            if kind == "dead":
                args[8] = event(RETRYING, f"{detail} (the message was given back meanwhile: "
                                          "its redelivered copy decides)")
            args.append(lifecycle_event(status, message_id, detail=detail[:1000] or None,
                                        transport=fields.get("transport"))
                        if self.emit_events and status in (SENT, FAILED, DEAD) else b"")
            args += pairs
        else:
            args.append(b"")
        held = self._run("settle", [
            status_key(self.prefix, message_id), timeline_key(self.prefix, message_id),
            job_key(self.prefix, message_id), open_key(self.prefix), holding.acks,
            holding.messages, holding.delayed, holding.delayed_messages, holding.dead,
            holding.dead_messages, stream_key(self.prefix)], args)
        return bool(held)

    @staticmethod
    def _event_and_fields(status: str, detail: str, fields: dict[str, Any]) -> list[Any]:
        """The timeline event, then ``status`` and the other fields as name/value pairs."""
        outcome = fields.pop("outcome", None)  # of this attempt: the timeline's, not the hash's
        values = {"status": status, "updated_at": str(time.time()), "lease_until": "0"}
        values.update({key: str(value) for key, value in fields.items() if value is not None})
        args: list[Any] = [event(status, detail, outcome=outcome, **{
            k: fields.get(k) for k in ("code", "transport", "attempt")})]
        for field, value in values.items():
            args += [field, value]
        return args


def decode_status(fields: dict[bytes, bytes], timeline: list[bytes]) -> dict[str, Any]:
    """The API view of a status hash and its timeline."""
    raw = {key.decode(): value.decode() for key, value in fields.items()}
    last_error = None
    if raw.get("last_error"):
        code = raw.get("last_code")
        last_error = {"code": int(code) if code and code.isdigit() else None,
                      "message": raw["last_error"]}
    return {
        "id": raw.get("id"),
        "status": raw.get("status"),
        "template": raw.get("template"),
        "template_version": raw.get("version") or None,
        "transport": raw.get("transport") or None,
        "attempts": int(raw.get("attempts", "0")),
        "recipients": orjson.loads(raw.get("recipients", "[]")),
        "metadata": orjson.loads(raw.get("metadata", "{}")),
        "sandbox": raw.get("sandbox") == "true",
        "withheld_recipients": orjson.loads(raw.get("withheld_recipients", "[]")),
        "suppressed_recipients": orjson.loads(raw.get("suppressed_recipients", "[]")),
        "redirected_from": orjson.loads(raw.get("redirected_from", "[]")),
        "source": raw.get("source"),
        "stream": raw.get("stream") or "transactional",
        "send_at": rfc3339(float(raw["send_at"])) if raw.get("send_at") else None,
        "last_error": last_error,
        "response": raw.get("response") or None,
        # Bounces and complaints after acceptance (mailcore/bounce_record.py).
        "bounce_type": raw.get("bounce_type") or None,
        "bounces": {key[len("bounce:"):]: value for key, value in raw.items()
                    if key.startswith("bounce:")},
        # Stored as epoch seconds; the API speaks RFC 3339 (mailcore/timestamps.py).
        "created_at": rfc3339(float(raw.get("created_at", "0"))),
        "updated_at": rfc3339(float(raw.get("updated_at", "0"))),
        "timeline": [_timeline_view(orjson.loads(entry)) for entry in timeline],
    }


def _timeline_view(entry: dict[str, Any]) -> dict[str, Any]:
    if isinstance(entry.get("at"), int | float):
        entry["at"] = rfc3339(entry["at"])
    return entry
