"""Recording what a bounce report or a provider's event says about a message's recipient.

One Redis step (``WATCH`` the status, then ``MULTI``) records, for a recipient of a known
message: the status (``bounced`` or ``complained``, when the message was sent), a per-recipient
field (``bounce:<recipient>``, which also makes a report delivered twice count once), the timeline
entry, the lifecycle event (:func:`mailcore.lifecycle.emit`) and, for a hard bounce or a
complaint, a global suppression entry (``hard_bounce`` or ``complaint``, the message as its
source: :func:`mailcore.suppressions.add_to`); a soft bounce suppresses nothing. Nothing is
written for a message whose status is gone (expired, or never ours) or for an address that is not
one of the message's recipients: the report names the message through a signed token (or a
signed webhook), but the recipient only through its own words, believed only within that message.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from . import lifecycle, suppressions
from .addresses import mailbox_key
from .dsn import COMPLAINT, HARD, SOFT, RecipientReport
from .status import BOUNCED, COMPLAINED, SENT, event, status_key, timeline_key

#: What :func:`record` answers (also the receiver's metric labels).
RECORDED = "recorded"
DUPLICATE = "duplicate"
UNKNOWN_MESSAGE = "unknown_message"
UNMATCHED_RECIPIENT = "unmatched_recipient"

#: How strong each kind is: a weaker report never overwrites a stronger one for a recipient.
_RANK = {SOFT: 1, HARD: 2, COMPLAINT: 3}
#: Statuses a report may move on (a message still queued or retrying keeps its status: the
#: timeline and the per-recipient field carry the report).
_MOVABLE = {SENT, BOUNCED, COMPLAINED}
#: Tries of the WATCH/MULTI step while other writers change the status (each loser waits a
#: little, at random, so concurrent reports of one message go through one after the other).
_WATCH_TRIES = 100


@dataclass(frozen=True)
class Recording:
    """Where reports are recorded.

    Parameters:
      client: an asyncio Redis client.
      prefix: the key prefix.
      retention_seconds: how long statuses are kept after their last change.
      emit_events: append the ``bounced``/``complained`` lifecycle events (``WEBHOOKS_ENABLED``:
        without webhooks nothing reads them).
    """

    client: Redis
    prefix: str
    retention_seconds: int
    emit_events: bool = False


def recipient_field(address: str) -> str:
    """The status hash field holding what was reported about one of the message's recipients
    (``address`` exactly as the message names it, so the status shows it as sent)."""
    return f"bounce:{address}"


def _match(report: RecipientReport, recipients: list[str]) -> str | None:
    """The message's own recipient the report is about, or None.

    ``Final-Recipient`` or ``Original-Recipient`` must be one of the message's recipients (as
    mailboxes: case and ``+tag`` folded); a message with a single recipient takes any report
    (its envelope sender names it alone, and a forwarding relay may report the address it
    rewrote it to)."""
    keys = {mailbox_key(r): r for r in recipients}
    for candidate in (report.address, report.original):
        if candidate and mailbox_key(candidate) in keys:
            return keys[mailbox_key(candidate)]
    return recipients[0] if len(recipients) == 1 else None


async def record(where: Recording, message_id: str, report: RecipientReport, *,
                 source: str) -> str:
    """Record ``report`` for the message ``message_id``; returns :data:`RECORDED`,
    :data:`DUPLICATE`, :data:`UNKNOWN_MESSAGE` or :data:`UNMATCHED_RECIPIENT`."""
    key = status_key(where.prefix, message_id)
    for attempt in range(_WATCH_TRIES):
        async with where.client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                outcome = await _record_watched(where, pipe, message_id, report, source)
                return outcome
            except WatchError:
                pass  # the status changed meanwhile (a worker, another report): again
        await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))  # noqa: S311
    raise WatchError(f"the status of {message_id} kept changing")


async def _record_watched(where: Recording, pipe: Any, message_id: str,
                          report: RecipientReport, source: str) -> str:
    key = status_key(where.prefix, message_id)
    status, recipients_json, owner, template, metadata_json, stream = await pipe.hmget(
        key, "status", "recipients", "owner", "template", "metadata", "stream")
    if status is None:
        return UNKNOWN_MESSAGE
    try:
        recipients = [str(r) for r in orjson.loads(recipients_json or b"[]")]
    except orjson.JSONDecodeError:
        recipients = []
    recipient = _match(report, recipients)
    if recipient is None:
        return UNMATCHED_RECIPIENT
    field = recipient_field(recipient)
    previous = await pipe.hget(key, field)
    previous_kind = previous.decode() if isinstance(previous, bytes) else None
    if previous_kind is not None and _RANK.get(previous_kind, 0) >= _RANK[report.kind]:
        return DUPLICATE
    current = status.decode()
    kind = report.kind
    new_status = COMPLAINED if kind == COMPLAINT else BOUNCED
    if current == COMPLAINED and new_status == BOUNCED:
        new_status = current  # a complaint says more than a bounce
    fields: dict[str, str] = {field: kind, "updated_at": str(time.time())}
    if current in _MOVABLE:
        fields["status"] = new_status
    if kind != COMPLAINT:
        worst = await pipe.hget(key, "bounce_type")
        if not (isinstance(worst, bytes) and worst.decode() == HARD):
            fields["bounce_type"] = kind
    detail = report.diagnostic or (f"{kind} bounce" if kind != COMPLAINT else "complaint")
    timeline_entry = event(new_status, detail, recipient=recipient,
                           bounce_type=kind if kind != COMPLAINT else None,
                           code=report.status, source=source)
    metadata = _metadata(metadata_json)
    payload = lifecycle.lifecycle_event(
        lifecycle.COMPLAINED if kind == COMPLAINT else lifecycle.BOUNCED, message_id,
        owner=_text(owner), template=_text(template), recipient=recipient,
        stream=_text(stream), detail=detail, metadata=metadata,
        bounce_type=kind if kind != COMPLAINT else None, dsn_status=report.status,
        source=source) if where.emit_events else b""
    pipe.multi()
    pipe.hset(key, mapping=fields)
    pipe.rpush(timeline_key(where.prefix, message_id), timeline_entry)
    pipe.expire(key, where.retention_seconds)
    pipe.expire(timeline_key(where.prefix, message_id), where.retention_seconds)
    lifecycle.emit(pipe, where.prefix, payload)
    entry = _suppression(recipient, kind, message_id)
    if entry is not None:
        suppressions.add_to(pipe, where.prefix, entry)
    await pipe.execute()
    return RECORDED


#: What a report adds to the suppression list (global: the mailbox itself is the problem); a
#: soft bounce adds nothing (it is transient).
SUPPRESSES = {HARD: "hard_bounce", COMPLAINT: "complaint"}


def _suppression(recipient: str, kind: str, message_id: str) -> suppressions.Suppression | None:
    reason = SUPPRESSES.get(kind)
    if reason is None:
        return None
    try:
        address = suppressions.suppression_address(recipient)
    except ValueError:  # accepted at the door, so valid; kept safe all the same
        return None
    return suppressions.Suppression(address=address, reason=reason, scope=suppressions.GLOBAL,
                                    source_message_id=message_id)


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) and value else None


def _metadata(raw: Any) -> dict[str, str] | None:
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
