"""Process-wide logging: one JSON object per line, the same in ingress, workers and operator.

Each line carries time, level, logger, message, the message id / template / attempt context
passed with ``extra=``, and the trace and span ids of the current span. Recipient addresses are
masked (``a***@example.org``) unless ``LOG_RECIPIENTS=true``; secrets are never logged.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any

import orjson

from .telemetry import current_ids

#: Record attributes worth printing (passed with ``extra=``).
CONTEXT_KEYS = ("message_id", "template", "version", "transport", "attempt", "source",
                "response", "code", "namespace", "name", "reason", "refused")
_ADDRESS = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")


def mask_addresses(text: str) -> str:
    """``ada.lovelace@example.org`` → ``a***@example.org``."""
    return _ADDRESS.sub(r"\1***@\2", text)


class JSONFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, *, mask: bool = True) -> None:
        super().__init__()
        self.mask = mask

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_addresses(message) if self.mask else message,
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        ids = current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            exc = self.formatException(record.exc_info)
            entry["exception"] = mask_addresses(exc) if self.mask else exc
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value…`` for humans (``LOG_FORMAT=text``)."""

    def __init__(self, *, mask: bool = True) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.mask = mask

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{key}={getattr(record, key)}" for key in CONTEXT_KEYS
                           if getattr(record, key, None) is not None)
        line = f"{line} {context}" if context else line
        return mask_addresses(line) if self.mask else line


def configure_logging(level: str = "INFO") -> None:
    """Root logging: ``level`` (``LOG_LEVEL``), ``LOG_FORMAT`` (json|text), ``LOG_RECIPIENTS``."""
    mask = os.environ.get("LOG_RECIPIENTS", "false").lower() not in {"1", "true", "yes"}
    text = os.environ.get("LOG_FORMAT", "json").lower() == "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter(mask=mask) if text else JSONFormatter(mask=mask))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
