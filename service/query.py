"""Whole numbers from query parameters and headers, read without trusting their size.

``str.isdigit`` is true for ``"²"`` and for other scripts' digits (which ``int`` then refuses
or reads), and ``int`` refuses a string of more than 4300 digits with ``ValueError``: either
turned a hostile ``?limit=`` or ``Content-Length`` into a 500. These read ASCII digits only, and
never more of them than the largest value allowed could have.
"""

from __future__ import annotations

#: Digits of the largest Content-Length considered (far above every body limit: 1 PB).
MAX_LENGTH_DIGITS = 16


def bounded_int(raw: str, low: int, high: int) -> int | None:
    """``raw`` as an integer from ``low`` to ``high``, or ``None`` when it is not one (not
    plain ASCII digits, or out of range)."""
    if not raw.isascii() or not raw.isdigit() or len(raw.lstrip("0")) > len(str(high)):
        return None
    value = int(raw)
    return value if low <= value <= high else None


def declared_length(raw: str) -> int | None:
    """A ``Content-Length`` header's value, or ``None`` when it is not a number; an absurdly
    long one reads as larger than any limit."""
    if not raw.isascii() or not raw.isdigit():
        return None
    digits = raw.lstrip("0") or "0"
    return int(digits) if len(digits) <= MAX_LENGTH_DIGITS else 10 ** MAX_LENGTH_DIGITS
