"""The suppression list at the door: a message whose recipients are all suppressed is accepted
with status ``suppressed`` (recorded, announced, never queued).

Accepted rather than refused (Postmark answers 422): a batch stays all-or-nothing without one
suppressed message failing the rest, an idempotent retry replays the same answer, and the
caller gets the same status record and ``suppressed`` webhook event as for a message whose
recipients were suppressed between acceptance and sending. A message with only some recipients
suppressed is queued as usual; the worker's send-time check withholds those and records them.

The check costs no round trip: the accept script reads the list first (its entries carry the
fields to read) and, when some message is wholly suppressed, answers ``suppressed`` without
writing anything; those entries are then turned into ``suppressed`` records and the accept step
runs again without the check (a second round trip only for such requests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from mailcore.lifecycle import SUPPRESSED, lifecycle_event
from mailcore.queue import Entry
from mailcore.send_time_suppression import job_recipients, job_stream
from mailcore.status import event
from mailcore.suppressions import lookup_fields


def door_fields(job: dict[str, Any]) -> tuple[str, ...]:
    """The suppression fields the accept script checks for ``job`` (none for a sandboxed
    message: rendered and kept, never delivered, nothing to protect)."""
    request = job.get("request")
    if isinstance(request, dict) and request.get("sandbox"):
        return ()
    recipients = job_recipients(job)
    return tuple(lookup_fields(recipients, job_stream(job))) if recipients else ()


def suppress_entries(entries: list[Entry], encoded: list[list[Any]], positions: tuple[int, ...],
                     encode: Callable[[Entry], list[Any]], *,
                     emit_events: bool) -> dict[str, list[str]]:
    """Turn the entries at ``positions`` (1-based, from the accept script) into ``suppressed``
    records (with their lifecycle event when ``emit_events``: ``WEBHOOKS_ENABLED``), clear
    every entry's check (in place, ``encoded`` too); returns the suppressed messages' ids with
    their recipients."""
    suppressed: dict[str, list[str]] = {}
    for position in positions:
        index = position - 1
        entry = entries[index]
        message_id = entry.job["id"]
        names = list(job_recipients(entry.job))
        status = {**entry.status_fields, "status": SUPPRESSED,
                  "suppressed_recipients": orjson.dumps(names).decode()}
        entries[index] = Entry(
            entry.job, status,
            event(SUPPRESSED, "every recipient is on the suppression list"),
            lifecycle_event(SUPPRESSED, message_id, owner=status.get("owner"),
                            template=status.get("template"), stream=job_stream(entry.job),
                            detail="on the suppression list at the door", recipients=names)
            if emit_events else b"")
        encoded[index] = encode(entries[index])
        suppressed[message_id] = names
    for index, entry in enumerate(entries):
        if entry.suppression_fields:
            entries[index] = replace(entry, suppression_fields=())
        encoded[index][-1] = ""
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
