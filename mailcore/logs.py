"""Process-wide logging: one JSON object per line, the same in ingress, workers and operator.

Each line carries time, level, logger, message, the message id / template / attempt context
passed with ``extra=``, and the trace and span ids of the current span. Recipient addresses are
masked (``a***@example.org``) unless ``LOG_RECIPIENTS=true``; secrets are never logged.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from .blanking import blank, data_values
from .telemetry import current_ids

if TYPE_CHECKING:
    from .config import TelemetrySettings

#: Record attributes worth printing (passed with ``extra=``).
CONTEXT_KEYS = ("message_id", "template", "version", "transport", "attempt", "source",
                "response", "code", "namespace", "name", "reason", "refused")
_ADDRESS = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")


def mask_addresses(text: str) -> str:
    """``ada.lovelace@example.org`` → ``a***@example.org``."""
    return _ADDRESS.sub(r"\1***@\2", text)


def _current_job_values() -> list[str]:
    """The template data values of the job this worker thread is processing, longest first."""
    module = sys.modules.get("dramatiq.middleware.current_message")
    message = module.CurrentMessage.get_current_message() if module is not None else None
    if message is None:  # the ingress, and a worker between jobs
        return []
    args = getattr(message, "args", None) or ()
    job = args[0] if args else None
    request = job.get("request") if isinstance(job, dict) else None
    data = request.get("data") if isinstance(request, dict) else None
    # Addresses are masked on their own terms (``LOG_RECIPIENTS`` may show them).
    return data_values(data, min_length=4, limit=1000, keep=_is_address)


def _is_address(text: str) -> bool:
    # Most values hold no "@": the check spares them the regular expression.
    return "@" in text and _ADDRESS.fullmatch(text) is not None


def redact_job_data(text: str) -> str:
    """Blank out the current job's data values (a library's exception text can quote them,
    e.g. a validation error's ``input_value=…``)."""
    return blank(text, _current_job_values())


class JSONFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, *, mask: bool = True) -> None:
        super().__init__()
        self.mask = mask
        #: The last second formatted and its text: most lines share their second with the last.
        self._second: tuple[int, str] = (-1, "")

    def _time(self, record: logging.LogRecord) -> str:
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_addresses(redact_job_data(message)) if self.mask
            else redact_job_data(message),
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        ids = current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            exc = redact_job_data(self.formatException(record.exc_info))
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
        line = redact_job_data(f"{line} {context}" if context else line)
        return mask_addresses(line) if self.mask else line


def describe_job(message: Any) -> str:
    """A queue message as logs may show it: actor and ids, never its arguments (the job holds
    the template data, e.g. a password-reset code)."""
    actor = getattr(message, "actor_name", "?")
    ids = [f"message_id={message.message_id}"] if getattr(message, "message_id", None) else []
    args = getattr(message, "args", None) or ()
    job = args[0] if args else None
    if isinstance(job, dict) and isinstance(job.get("id"), str):
        ids.append(f"id={job['id']}")
    return f"{actor}({', '.join(ids)})"


class RedactJobs(logging.Filter):
    """Replace queue messages given to a log call (Dramatiq's own lines print them with
    ``%s``, arguments and all) by :func:`describe_job`, whatever library logs them."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_is_job(arg) for arg in args):
            record.args = tuple(describe_job(_unwrap(arg)) if _is_job(arg) else arg
                                for arg in args)
        elif isinstance(args, Mapping) and any(_is_job(arg) for arg in args.values()):
            record.args = {key: describe_job(_unwrap(arg)) if _is_job(arg) else arg
                           for key, arg in args.items()}
        if _is_job(record.msg):
            record.msg = describe_job(_unwrap(record.msg))
        return True


def _unwrap(value: Any) -> Any:
    return getattr(value, "_message", value)  # Dramatiq's MessageProxy wraps a Message


def _is_job(value: Any) -> bool:
    if value is None or isinstance(value, (str, int, float, bytes)):
        return False
    kind = type(value)
    return kind.__module__.startswith("dramatiq") and kind.__name__ in {"Message",
                                                                         "MessageProxy"}


def configure_logging(telemetry: TelemetrySettings) -> None:
    """Root logging: ``LOG_LEVEL``, ``LOG_FORMAT`` (json|text), ``LOG_RECIPIENTS``."""
    mask = not telemetry.log_recipients
    text = telemetry.log_format == "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactJobs())
    handler.setFormatter(TextFormatter(mask=mask) if text else JSONFormatter(mask=mask))
    # Neither formatter prints the caller's file and line, thread or process: not looked up
    # for every record (the logging HOWTO's "Optimization"; a few µs a line).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(telemetry.log_level)
