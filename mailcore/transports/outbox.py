"""Writes each message into a folder as ``.eml`` plus ``.html`` (development, previews)."""

from __future__ import annotations

import os
import re
import time
from email import message_from_bytes, policy
from pathlib import Path

from ..mime import Envelope
from .base import DeliveryResult, TransientDeliveryError, Transport

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def write_outbox_files(folder: Path, raw: bytes, message_id: str | None = None) -> Path:
    """Store a raw message as ``<stamp>-<id>.eml`` and its HTML part as ``.html``; return the .eml.

    Files are written under a temporary name and renamed, so a watcher never sees half a file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    parsed = message_from_bytes(raw, policy=policy.default)
    ident = message_id or str(parsed.get("X-Email-Service-Id") or parsed.get("Message-ID") or "")
    safe_ident = _UNSAFE.sub("_", ident).strip("_")[:80] or "message"
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_ident}"
    eml = folder / f"{stem}.eml"
    _atomic_write(eml, raw)
    html_part = parsed.get_body(preferencelist=("html",))
    if html_part is not None:
        _atomic_write(folder / f"{stem}.html", html_part.get_content().encode("utf-8"))
    return eml


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class OutboxTransport(Transport):
    """Delivers to a local folder instead of a mail server.

    Parameters:
      folder: where ``.eml`` and ``.html`` files are written.
    """

    name = "outbox"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, envelope: Envelope) -> DeliveryResult:
        try:
            path = write_outbox_files(self.folder, envelope.as_bytes(), envelope.message_id)
        except OSError as exc:
            raise TransientDeliveryError(f"cannot write outbox: {exc}") from exc
        return DeliveryResult(transport=self.name, response=f"written {path.name}")
