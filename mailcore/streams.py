"""Delivery streams: ``transactional`` and ``bulk`` traffic on separate Dramatiq queues.

A message's stream is the one its request names (``stream``), else its template's default
(``spec.stream`` of an EmailTemplate), else ``transactional``; the original contracts
(password reset, order confirmation, the Redis event) are always ``transactional``. Each stream
has its own queue — ``QUEUE_NAME`` for transactional, ``BULK_QUEUE_NAME`` for bulk — and its own
workers (``WORKER_STREAMS``; the chart runs one worker Deployment per stream), so a bulk
campaign queued ahead never delays a password reset.
"""

from __future__ import annotations

from typing import Literal

#: A stream's name, as requests and templates give it.
StreamName = Literal["transactional", "bulk"]
TRANSACTIONAL = "transactional"
BULK = "bulk"
#: Every stream, the default first.
STREAM_NAMES = (TRANSACTIONAL, BULK)
#: The sources (``source`` of a status) that may choose a stream: the native API.
CHOOSING_SOURCES = frozenset({"api"})


def stream_of(requested: str | None, source: str) -> str:
    """The stream of a message whose request (or template) asked for ``requested``."""
    if source not in CHOOSING_SOURCES or requested not in STREAM_NAMES:
        return TRANSACTIONAL
    return requested


def stream_queues(transactional_queue: str, bulk_queue: str) -> dict[str, str]:
    """Each stream's Dramatiq queue name."""
    return {TRANSACTIONAL: transactional_queue, BULK: bulk_queue}
