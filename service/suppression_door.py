"""The suppression list at the door: a message whose recipients are all suppressed is accepted
with status ``suppressed`` (recorded, announced, never queued).

Accepted rather than refused (Postmark answers 422): a batch stays all-or-nothing without one
suppressed message failing the rest, an idempotent retry replays the same answer, and the
caller gets the same status record and ``suppressed`` webhook event as for a message whose
recipients were suppressed between acceptance and sending. A message with only some recipients
suppressed is queued as usual; the worker's send-time check withholds those and records them.

One ``HMGET`` per request (every recipient of every message, in both scopes) before the accept
step; the status write and the lifecycle event then go in the accept script itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from mailcore.lifecycle import SUPPRESSED, lifecycle_event
from mailcore.queue import Entry
from mailcore.send_time_suppression import job_recipients, job_stream
from mailcore.status import event
from mailcore.suppressions import hash_key, hits, lookup_fields


async def apply_suppressions(
    client: aioredis.Redis, prefix: str, entries: list[Entry], encoded: list[list[Any]],
    encode: Callable[[Entry], list[Any]],
) -> dict[str, list[str]]:
    """Turn the entries whose every recipient is suppressed into ``suppressed`` records (in
    place, ``encoded`` too); returns their ids with the suppressed recipients."""
    checked: list[tuple[int, tuple[str, ...], str]] = []
    fields: list[str] = []
    for index, entry in enumerate(entries):
        request = entry.job.get("request")
        if isinstance(request, dict) and request.get("sandbox"):
            continue  # rendered and kept, never delivered: nothing to protect
        recipients = job_recipients(entry.job)
        if recipients:
            stream = job_stream(entry.job)
            checked.append((index, recipients, stream))
            fields += lookup_fields(recipients, stream)
    if not fields:
        return {}
    values = await client.hmget(hash_key(prefix), fields)
    suppressed: dict[str, list[str]] = {}
    at = 0
    for index, recipients, stream in checked:
        span = 2 * len(recipients)
        found = hits(recipients, values[at:at + span])
        at += span
        if len(found) < len(recipients):
            continue
        entry = entries[index]
        message_id = entry.job["id"]
        names = list(recipients)
        status = {**entry.status_fields, "status": SUPPRESSED,
                  "suppressed_recipients": orjson.dumps(names).decode()}
        entries[index] = Entry(
            entry.job, status,
            event(SUPPRESSED, "every recipient is on the suppression list"),
            lifecycle_event(SUPPRESSED, message_id, owner=status.get("owner"),
                            template=status.get("template"), stream=stream,
                            detail="on the suppression list at the door", recipients=names))
        encoded[index] = encode(entries[index])
        suppressed[message_id] = names
    return suppressed


def mark_suppressed(body: dict[str, Any], suppressed: dict[str, list[str]]) -> None:
    """Say ``suppressed`` (and who) in an accept answer (``{"id", "status"}`` or a batch's
    ``{"messages": [...]}``) for the messages that were."""
    items = [body, *(m for m in body.get("messages", []) if isinstance(m, dict))]
    for item in items:
        message_id = item.get("id")
        if isinstance(message_id, str) and message_id in suppressed and "status" in item:
            item["status"] = SUPPRESSED
            item["suppressed_recipients"] = suppressed[message_id]
