"""Suppression entries as the API and JSONL files carry them, read strictly.

One JSON object per entry::

    {"address": "ada@example.com", "reason": "manual", "scope": "global",
     "source_message_id": null, "created_at": "2026-11-30T13:09:19.123Z", "expires_at": null}

Only ``address`` is required (``reason`` defaults to ``manual``, ``scope`` to ``global``,
``created_at`` to now). Times are RFC 3339 with an offset; ``expires_at`` must be in the future.
Unknown fields, wrong types and nested values are refused, naming the field.

Imports are validated whole before anything is written (all or nothing): a body with any bad
line is refused listing every bad line by number (the first :data:`MAX_REPORTED`), and nothing
is stored. The JSONL reader is incremental: it holds one line at a time, bounded by
:data:`MAX_LINE_BYTES`; blank lines are skipped; a UTF-8 byte order mark is accepted at the very
start only; lines must be UTF-8 (other encodings are refused per line).
"""

from __future__ import annotations

import datetime
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from .suppressions import GLOBAL, REASONS, Suppression, suppression_address, validate_scope
from .timestamps import rfc3339

#: The longest JSONL line (one entry).
MAX_LINE_BYTES = 4096
#: Bad lines listed in an import's refusal (all are counted).
MAX_REPORTED = 100
_FIELDS = ("address", "reason", "scope", "source_message_id", "created_at", "expires_at")
_BOM = b"\xef\xbb\xbf"
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z")


def entry_view(entry: Suppression) -> dict[str, Any]:
    """The API (and export) form: times as RFC 3339."""
    return {"address": entry.address, "reason": entry.reason, "scope": entry.scope,
            "source_message_id": entry.source_message_id,
            "created_at": rfc3339(entry.created_at),
            "expires_at": rfc3339(entry.expires_at) if entry.expires_at is not None else None}


def _time(value: Any, name: str) -> float:
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError(f"{name}: must be an RFC 3339 time such as 2026-12-01T00:00:00Z")
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: not an RFC 3339 time: {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"{name}: needs an offset (Z or +hh:mm)")
    epoch = moment.timestamp()
    if not math.isfinite(epoch) or epoch < 0:
        raise ValueError(f"{name}: out of range")
    return epoch


def entry_from_json(value: Any, *, now: float | None = None) -> Suppression:
    """An entry from its JSON form; ``ValueError`` naming the field for anything else."""
    at = time.time() if now is None else now
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    unknown = [str(key)[:40] for key in value if key not in _FIELDS]
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "address" not in value:
        raise ValueError("address: required")
    for name in _FIELDS:
        item = value.get(name)
        if item is not None and not isinstance(item, str):
            raise ValueError(f"{name}: must be a string")
    try:
        address = suppression_address(value["address"])
    except ValueError as exc:
        raise ValueError(f"address: {exc}") from None
    reason = value.get("reason") or "manual"
    if reason not in REASONS:
        raise ValueError(f"reason: must be one of {', '.join(REASONS)}")
    scope = value.get("scope") or GLOBAL
    try:
        validate_scope(scope)
    except ValueError as exc:
        raise ValueError(f"scope: {exc}") from None
    source = value.get("source_message_id")
    if source is not None and not 0 < len(source) <= 200:
        raise ValueError("source_message_id: 1 to 200 characters")
    created = _time(value["created_at"], "created_at") if value.get("created_at") else at
    expires = None
    if value.get("expires_at") is not None:
        expires = _time(value["expires_at"], "expires_at")
        if expires <= at:
            raise ValueError("expires_at: must be in the future")
    return Suppression(address=address, reason=reason, scope=scope, source_message_id=source,
                       created_at=created, expires_at=expires)


@dataclass
class JsonlImport:
    """Reads a JSONL body chunk by chunk into entries and numbered errors.

    Parameters:
      max_lines: the most entries accepted; more is an error (of the whole body).
    """

    max_lines: int
    entries: list[Suppression] = field(default_factory=list)
    #: ``(line number, message)`` of the first :data:`MAX_REPORTED` bad lines.
    errors: list[tuple[int, str]] = field(default_factory=list)
    bad_lines: int = 0
    too_many: bool = False
    _line: int = 0
    _pending: bytearray = field(default_factory=bytearray)
    _skipping: bool = False
    _started: bool = False
    _now: float = field(default_factory=time.time)

    def feed(self, chunk: bytes) -> None:
        if not self._started and chunk:
            self._pending += chunk
            if len(self._pending) < len(_BOM) and _BOM.startswith(bytes(self._pending)):
                return  # the first bytes of a possible BOM: wait for more
            self._started = True
            chunk, self._pending = bytes(self._pending), bytearray()
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._keep(chunk[start:])
                return
            self._keep(chunk[start:end])
            self._finish_line()
            start = end + 1

    def close(self) -> None:
        """The body ended: the last line needs no newline."""
        if not self._started and self._pending:
            self._started = True
            pending, self._pending = bytes(self._pending), bytearray()
            self.feed(pending)
        if self._pending or self._skipping:
            self._finish_line()

    def _keep(self, part: bytes) -> None:
        if self._skipping:
            return
        if len(self._pending) + len(part) > MAX_LINE_BYTES:
            self._skipping = True  # reported when the line ends; its bytes are not kept
            self._pending = bytearray()
            return
        self._pending += part

    def _finish_line(self) -> None:
        self._line += 1
        raw, self._pending = bytes(self._pending), bytearray()
        if self._skipping:
            self._skipping = False
            self._error(f"longer than {MAX_LINE_BYTES} bytes")
            return
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw.strip():
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._error("not UTF-8")
            return
        if "\ufeff" in text:
            self._error("a byte order mark inside the body (only its very start may have one)")
            return
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self._error(f"not valid JSON: {str(exc)[:120]}")
            return
        try:
            entry = entry_from_json(value, now=self._now)
        except ValueError as exc:
            self._error(str(exc))
            return
        if len(self.entries) >= self.max_lines:
            self.too_many = True
            return
        self.entries.append(entry)

    def _error(self, message: str) -> None:
        self.bad_lines += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append((self._line, message))


def export_line(entry: Suppression) -> bytes:
    return orjson.dumps(entry_view(entry)) + b"\n"
