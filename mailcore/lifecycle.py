"""Lifecycle events: what happened to a message, for the callers' webhooks.

Every change a caller may subscribe to (``queued``, ``sent``, ``bounced``, ...) is appended to
one Redis stream, ``<prefix>:lifecycle``, *in the same Redis step that records it* (an outbox):
an event is never announced for a change that did not happen, and a recorded change is never
left unannounced because a process died between two writes. The webhook fan-out reads the stream
and turns each event into one delivery per subscribed endpoint.

Lua scripts include :data:`EMIT_LUA` and call ``lifecycle_emit(stream_key, payload)``; a payload of
``''`` emits nothing (the writer passes ``''`` when no webhook could want the event). Python code
outside a script uses :func:`emit` on a pipeline that also carries its own write (``MULTI``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from .timestamps import rfc3339

QUEUED = "queued"
SCHEDULED = "scheduled"
SENT = "sent"
FAILED = "failed"
DEAD = "dead"
BOUNCED = "bounced"
COMPLAINED = "complained"
SUPPRESSED = "suppressed"
UNSUBSCRIBED = "unsubscribed"
CANCELLED = "cancelled"
#: Every event type a webhook endpoint may subscribe to.
EVENT_TYPES = (QUEUED, SCHEDULED, SENT, FAILED, DEAD, BOUNCED, COMPLAINED, SUPPRESSED,
               UNSUBSCRIBED, CANCELLED)

#: Roughly how many events the stream keeps: the fan-out reads them within moments, so this only
#: bounds memory when it is stopped for long (a consumer group's pending entries are kept anyway).
STREAM_MAXLEN = 1_000_000

# XADD with an approximate MAXLEN trims whole radix-tree nodes only: cheap on every call.
EMIT_LUA = f"""
local function lifecycle_emit(stream, payload)
  if payload and payload ~= '' then
    redis.call('XADD', stream, 'MAXLEN', '~', {STREAM_MAXLEN}, '*', 'event', payload)
  end
end
"""


def stream_key(prefix: str) -> str:
    """The stream every lifecycle event of this installation is appended to."""
    return f"{prefix}:lifecycle"


def lifecycle_event(
    kind: str, message_id: str | None, *, owner: str | None = None, template: str | None = None,
    recipient: str | None = None, stream: str | None = None, detail: str | None = None,
    metadata: dict[str, str] | orjson.Fragment | None = None, at: float | None = None,
    **data: Any,
) -> bytes:
    """One event as the stream (and, unchanged, a webhook's payload ``data``) carries it.

    ``id`` is fixed here, once: every delivery of this event to any endpoint, first or
    repeated, carries it as ``webhook-id``, so receivers can drop duplicates.
    """
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown lifecycle event type {kind!r}")
    body: dict[str, Any] = {
        "id": f"evt_{uuid.uuid4().hex}", "type": f"message.{kind}",
        "timestamp": rfc3339(time.time() if at is None else at), "message_id": message_id,
    }
    optional = {"owner": owner, "template": template, "recipient": recipient, "stream": stream,
                "detail": detail, "metadata": metadata or None, **data}
    body.update({key: value for key, value in optional.items() if value is not None})
    return orjson.dumps(body)


def decode_event(payload: bytes | str) -> dict[str, Any]:
    """An event read back from the stream."""
    event = orjson.loads(payload)
    if not isinstance(event, dict) or not str(event.get("type", "")).startswith("message."):
        raise ValueError("not a lifecycle event")
    return event


def emit(pipe: Any, prefix: str, payload: bytes) -> None:
    """Queue the XADD of ``payload`` on ``pipe`` (a redis-py pipeline, sync or asyncio), to be
    executed with the pipeline's other commands (use ``transaction=True`` to make them one
    step)."""
    if payload:
        pipe.xadd(stream_key(prefix), {"event": payload}, maxlen=STREAM_MAXLEN,
                  approximate=True)
