"""Idempotency keys: a caller's retry of the same request is answered, not queued again."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import InvalidIdempotencyKey

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True)
class Idempotency:
    """A caller's ``Idempotency-Key`` (scoped to its owner) and the fingerprint of what it was
    sent with."""

    key: str
    fingerprint: str

    @classmethod
    def from_request(cls, header: str | None, owner: str, path: str, body: dict[str, Any]
                     ) -> Idempotency | None:
        if header is None:
            return None
        if not _IDEMPOTENCY_KEY.match(header):
            raise InvalidIdempotencyKey(
                "Idempotency-Key must be 1-255 printable ASCII characters")
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        fingerprint = hashlib.sha256(path.encode() + b"\n" + canonical).hexdigest()
        scoped = hashlib.sha256(f"{owner}\0{header}".encode()).hexdigest()
        return cls(key=scoped, fingerprint=fingerprint)
