"""Mailtrap's webhook events: verifying them and reading the bounces and complaints they report.

Mailtrap signs each webhook request: ``Mailtrap-Signature`` is the lower-case hex
HMAC-SHA256 of the raw body under the webhook's signing secret (their "Verifying the signature";
the official SDKs' ``verify_signature`` does the same). The body is ``{"events": [...]}`` or,
in the JSON Lines format, one event object per line. Each event has ``event`` (``delivery``,
``bounce``, ``soft bounce``, ``spam``, ``unsubscribe``, ``open``, ``click``, ``suspension``,
``reject``), ``email`` (the recipient), ``message_id`` (Mailtrap's own), ``event_id``,
``timestamp``, ``custom_variables`` (ours: ``email_service_id``, set by the Mailtrap transport),
and for bounces ``response``, ``response_code`` and ``bounce_category``.

Only ``bounce`` (hard), ``soft bounce`` (soft) and ``spam`` (complaint) are read; the rest are
ignored (counted). Nothing raises on hostile input: what cannot be read is reported as such.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from .dsn import COMPLAINT, HARD, MAX_DIAGNOSTIC, SOFT, RecipientReport

#: The header carrying the signature.
SIGNATURE_HEADER = "Mailtrap-Signature"
#: Most events read from one request (Mailtrap batches them).
MAX_EVENTS = 1000
#: Event names (case, ``_`` and ``-`` folded to a space) -> what they report.
KINDS = {"bounce": HARD, "hard bounce": HARD, "soft bounce": SOFT, "spam": COMPLAINT,
         "spam complaint": COMPLAINT}
#: Custom variable naming our message (mailcore.transports.mailtrap sets it).
ID_VARIABLE = "email_service_id"
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


class MalformedEvents(ValueError):
    """The body is neither ``{"events": [...]}`` nor JSON Lines of event objects."""


@dataclass(frozen=True)
class MailtrapEvent:
    """One event as read: its ``name``; and for a bounce or complaint of a message of ours, the
    ``message_id`` and the ``report`` (otherwise None)."""

    name: str
    message_id: str | None = None
    report: RecipientReport | None = None


def verify_signature(secret: str, body: bytes, signature: str | None) -> bool:
    """Whether ``signature`` (the header's value) is the body's HMAC; never raises."""
    if not secret or not signature or len(signature) != 64 or not signature.isascii():
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.strip().lower())


def sign(secret: str, body: bytes) -> str:
    """The ``Mailtrap-Signature`` of ``body`` (for tests and the README's example)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def parse_events(body: bytes) -> list[MailtrapEvent]:
    """The events of a webhook request (at most :data:`MAX_EVENTS`), or :class:`MalformedEvents`."""
    raw_events = _raw_events(body)
    return [_event(item) for item in raw_events[:MAX_EVENTS]]


def _raw_events(body: bytes) -> list[Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        lines = [line for line in body.splitlines() if line.strip()]
        if not lines:
            raise MalformedEvents("the body is empty") from None
        try:
            return [orjson.loads(line) for line in lines[:MAX_EVENTS]]
        except orjson.JSONDecodeError as exc:
            raise MalformedEvents(f"neither JSON nor JSON Lines: {exc}") from None
    if isinstance(value, dict) and isinstance(value.get("events"), list):
        events: list[Any] = value["events"]
        return events
    if isinstance(value, dict) and "event" in value:
        return [value]  # JSON Lines with a single event
    raise MalformedEvents('expected {"events": [...]} or JSON Lines of event objects')


def _event(item: Any) -> MailtrapEvent:
    if not isinstance(item, dict):
        return MailtrapEvent(name="invalid")
    name = item.get("event")
    if not isinstance(name, str):
        return MailtrapEvent(name="invalid")
    name = " ".join(name.lower().replace("_", " ").replace("-", " ").split())[:40]
    kind = KINDS.get(name)
    if kind is None:
        return MailtrapEvent(name=name)
    variables = item.get("custom_variables")
    message_id = variables.get(ID_VARIABLE) if isinstance(variables, dict) else None
    email = item.get("email")
    if not isinstance(message_id, str) or not _is_uuid(message_id) or not isinstance(
            email, str) or not 3 <= len(email) <= 254 or "@" not in email:
        return MailtrapEvent(name=name)
    response = item.get("response")
    text = " ".join(response.split())[:MAX_DIAGNOSTIC] if isinstance(response, str) else None
    found = _STATUS.search(text or "")
    status = ".".join(found.groups()) if found else None
    if status is None and isinstance(item.get("response_code"), int) and kind != COMPLAINT:
        status = f"{str(item['response_code'])[:1]}.0.0" if 400 <= item["response_code"] < 600 \
            else None
    category = item.get("bounce_category")
    diagnostic = text or (f"mailtrap: {category}" if isinstance(category, str) else None)
    local, _, domain = email.strip().rpartition("@")
    return MailtrapEvent(name=name, message_id=message_id, report=RecipientReport(
        address=f"{local}@{domain.lower()}", kind=kind, status=status,
        diagnostic=diagnostic[:MAX_DIAGNOSTIC] if diagnostic else None))


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
