"""Timestamps as the API shows them: RFC 3339 in UTC with milliseconds
(``2026-11-30T13:09:19.123Z``), one fixed width, so they also sort as text.

Redis keeps its own forms (epoch seconds in status hashes and timelines, ISO text in the
template store); only the views convert.
"""

from __future__ import annotations

import datetime


def rfc3339(epoch: float) -> str:
    """Epoch seconds as RFC 3339 UTC text."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_from_iso(text: str) -> str | None:
    """ISO 8601 text (``…+00:00``, with or without a fraction) in the same form as
    :func:`rfc3339`; ``None`` for empty or unreadable text."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return rfc3339(moment.timestamp())
