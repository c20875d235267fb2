"""Message status: what happened to each accepted message, kept in Redis for a retention period.

A status is a hash ``<prefix>:msg:<id>`` plus a timeline list ``<prefix>:msg:<id>:timeline`` of
timestamped events. The ingress writes the first entry in the same atomic step that queues the
message; workers move it along: ``queued → sending → sent``, or ``retrying`` after a transient
failure, ``failed`` after a permanent one, ``dead`` when retries are exhausted.

The status is also the guard that makes delivery effectively-once: a worker records ``sent``
before Dramatiq acknowledges the message, and checks it before sending, so a redelivered message
that was already accepted by the relay is not sent again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import redis
from redis.commands.core import Script

from .timestamps import rfc3339

QUEUED = "queued"
SENDING = "sending"
RETRYING = "retrying"
SENT = "sent"
FAILED = "failed"
DEAD = "dead"
STATUSES = (QUEUED, SENDING, RETRYING, SENT, FAILED, DEAD)

# Atomically: skip when already sent, refuse while another attempt holds a live lease,
# otherwise take the lease and count the attempt.
_BEGIN_ATTEMPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'sent' then return {'sent', 0} end
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if status == 'sending' and lease > tonumber(ARGV[1]) then return {'busy', 0} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'sending', 'updated_at', ARGV[1],
           'lease_until', tonumber(ARGV[1]) + tonumber(ARGV[2]))
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {status or '', attempts, redis.call('HGET', KEYS[1], 'pinned_transport') or ''}
"""


# Set fields, append the timeline event, renew both expiries: one EVALSHA (a MULTI/EXEC
# pipeline of the same four commands costs the client ~100 µs more on this VM).
_RECORD = """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
"""


def status_key(prefix: str, message_id: str) -> str:
    return f"{prefix}:msg:{message_id}"


def timeline_key(prefix: str, message_id: str) -> str:
    return f"{prefix}:msg:{message_id}:timeline"


def event(status: str, detail: str = "", **extra: Any) -> bytes:
    """One timeline entry."""
    entry: dict[str, Any] = {"at": round(time.time(), 3), "status": status}
    if detail:
        entry["detail"] = detail
    entry.update({key: value for key, value in extra.items() if value is not None})
    return orjson.dumps(entry)


def initial_fields(
    *, message_id: str, owner: str, template: str, recipients: list[str], source: str
) -> dict[str, str]:
    """The status hash of a message just accepted."""
    now = str(time.time())
    return {
        "id": message_id, "owner": owner, "status": QUEUED, "template": template,
        "recipients": orjson.dumps(recipients).decode(), "source": source, "attempts": "0",
        "created_at": now, "updated_at": now,
    }


@dataclass(frozen=True)
class Attempt:
    """The outcome of :meth:`StatusStore.begin_attempt`.

    Parameters:
      proceed: whether this worker should send now.
      reason: ``sent`` (already delivered: skip), ``busy`` (another attempt holds the lease),
        or the previous status when proceeding.
      attempt: the attempt number counted for this try.
      pinned: the transport an earlier attempt left unconfirmed (it may have the message):
        retries go there only, never to another transport.
    """

    proceed: bool
    reason: str
    attempt: int
    pinned: str | None = None


class _Scripts(NamedTuple):
    begin: Script
    record: Script


class StatusStore:
    """Worker-side status updates (synchronous Redis).

    Each worker thread gets its own connection (``connect`` is called once per thread): going
    through a shared pool costs every command a checkout, a return and a fork check, ~50 µs
    here, and a message takes two commands.

    Parameters:
      connect: makes a Redis client; called once per thread.
      prefix: key prefix.
      retention_seconds: how long statuses are kept after their last change.
    """

    def __init__(self, connect: Callable[[], redis.Redis], prefix: str,
                 retention_seconds: int) -> None:
        self.connect = connect
        self.prefix = prefix
        self.retention = retention_seconds
        self._local = threading.local()
        self._clients: list[redis.Redis] = []
        self._clients_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, prefix: str, retention_seconds: int) -> StatusStore:
        return cls(lambda: redis.Redis.from_url(url, socket_timeout=10,
                                                single_connection_client=True),
                   prefix, retention_seconds)

    def _scripts(self) -> _Scripts:
        """This thread's scripts, on its own connection (made on first use)."""
        scripts: _Scripts | None = getattr(self._local, "scripts", None)
        if scripts is None:
            client = self.connect()
            with self._clients_lock:
                self._clients.append(client)
            scripts = _Scripts(begin=client.register_script(_BEGIN_ATTEMPT),
                               record=client.register_script(_RECORD))
            self._local.scripts = scripts
        return scripts

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def begin_attempt(self, message_id: str, lease_seconds: float) -> Attempt:
        keys = [status_key(self.prefix, message_id), timeline_key(self.prefix, message_id)]
        now = time.time()
        previous, attempts, *rest = self._scripts().begin(
            keys=keys, args=[now, lease_seconds, event(SENDING), self.retention])
        previous = previous.decode() if isinstance(previous, bytes) else str(previous)
        if previous in {"sent", "busy"}:
            return Attempt(proceed=False, reason=previous, attempt=0)
        pinned = rest[0].decode() if rest and isinstance(rest[0], bytes) else None
        return Attempt(proceed=True, reason=previous, attempt=int(attempts),
                       pinned=pinned or None)

    def record(self, message_id: str, status: str, detail: str = "", **fields: Any) -> None:
        """Set the status (and extra fields) and append a timeline event, in one round trip."""
        outcome = fields.pop("outcome", None)  # of this attempt: the timeline's, not the hash's
        values = {"status": status, "updated_at": str(time.time()), "lease_until": "0"}
        values.update({key: str(value) for key, value in fields.items() if value is not None})
        args: list[Any] = [self.retention, event(status, detail, outcome=outcome, **{
            k: fields.get(k) for k in ("code", "transport", "attempt")})]
        for field, value in values.items():
            args += [field, value]
        self._scripts().record(keys=[status_key(self.prefix, message_id),
                                     timeline_key(self.prefix, message_id)], args=args)


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
        "source": raw.get("source"),
        "last_error": last_error,
        "response": raw.get("response") or None,
        # Stored as epoch seconds; the API speaks RFC 3339 (mailcore/timestamps.py).
        "created_at": rfc3339(float(raw.get("created_at", "0"))),
        "updated_at": rfc3339(float(raw.get("updated_at", "0"))),
        "timeline": [_timeline_view(orjson.loads(entry)) for entry in timeline],
    }


def _timeline_view(entry: dict[str, Any]) -> dict[str, Any]:
    if isinstance(entry.get("at"), int | float):
        entry["at"] = rfc3339(entry["at"])
    return entry
