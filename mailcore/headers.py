"""Custom headers a caller may add: an allow-list, matched case-insensitively.

Allowed:
- ``X-*`` (letters, digits and hyphens), except the service's own ``X-Email-Service-*`` and
  X- headers that mail systems act on: spam and virus verdicts, Exchange/Microsoft/Google
  internals, trace and envelope copies (``X-Original-*``, ``X-Forwarded-*``, ``X-Received``…)
  and hosted relays' control headers (``X-SMTPAPI``, ``X-SES-*``, ``X-Mailgun-*``…).
- The list headers of RFC 2369, 2919 and 8058 (``List-Unsubscribe``, ``List-Unsubscribe-Post``,
  ``List-Id``, ``List-Help``, ``List-Subscribe``, ``List-Post``, ``List-Owner``,
  ``List-Archive``), threading (``In-Reply-To``, ``References``), ``Auto-Submitted``,
  ``Precedence`` and ``Feedback-ID``, each only in the shape its RFC gives.

Everything else — the service's own headers, addressing, ``Resent-*``, ``Received``,
``Return-Path``, authentication results and signatures, ``Content-*``, ``MIME-Version``, read
receipts — is refused. Values are single lines (no control characters but tab) of at most
``MAX_VALUE`` characters; X- values are free text, sent RFC 2047-encoded when they are not plain
ASCII or contain ``=?`` (so no one can smuggle an encoded word a client would decode).
"""

from __future__ import annotations

import re

#: Custom headers one message may carry.
MAX_HEADERS = 20
#: Longest custom header value (RFC 5322's line limit).
MAX_VALUE = 998

# Control characters, and lone surrogates (not encodable: the message could not be written).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
# re.ASCII: without it IGNORECASE lets the Kelvin sign match "k" and the long s match "s".
_X_NAME = re.compile(r"^X-[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*$", re.IGNORECASE | re.ASCII)
_MAX_NAME = 76
#: X- headers that receiving systems, filters or hosted relays act on (lower-case prefixes).
_BLOCKED_X = (
    "x-email-service-",  # ours
    "x-spam", "x-virus", "x-amavis", "x-ham-",  # filter verdicts
    "x-ms-", "x-microsoft-", "x-forefront-", "x-exchange-",  # Exchange/EOP trust these
    "x-google-", "x-gm-", "x-yahoo-", "x-apple-",  # mailbox providers' internals
    "x-original", "x-originating-", "x-forwarded-", "x-received", "x-envelope-",
    "x-apparently-to", "x-confirm-reading-to",
    "x-sender", "x-authenticated-", "x-authentication-", "x-auth-", "x-client-ip",
    "x-smtpapi", "x-ses-", "x-mailgun-", "x-mc-", "x-pm-", "x-mj-", "x-mailjet-",  # relays
)

_URI_LIST = r"<[!-;=?-~]+>(?:\s*,\s*<[!-;=?-~]+>)*"
_MSG_IDS = r"<[!-;=?-~]+@[!-;=?-~]+>(?:\s+<[!-;=?-~]+@[!-;=?-~]+>)*"
#: Named headers and the shape each value must have (RFC 2369, 2919, 8058, 5322, 3834).
_NAMED: dict[str, tuple[str, re.Pattern[str]]] = {
    name.lower(): (name, re.compile(f"^(?:{shape})$", re.ASCII | (re.IGNORECASE if name in {
        "Auto-Submitted", "Precedence"} else 0)))
    for name, shape in {
        "List-Unsubscribe": _URI_LIST,
        "List-Unsubscribe-Post": r"List-Unsubscribe=One-Click",
        "List-Id": r"(?:[A-Za-z0-9 ._'-]{1,100} )?<[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+>",
        "List-Help": _URI_LIST,
        "List-Subscribe": _URI_LIST,
        "List-Post": rf"{_URI_LIST}|NO",
        "List-Owner": _URI_LIST,
        "List-Archive": _URI_LIST,
        "In-Reply-To": _MSG_IDS,
        "References": _MSG_IDS,
        "Auto-Submitted": r"no|auto-generated|auto-replied|auto-notified",
        "Precedence": r"bulk|list|junk",
        "Feedback-ID": r"[A-Za-z0-9._-]{1,64}(?::[A-Za-z0-9._-]{0,64}){1,3}",
    }.items()
}

_EXAMPLES = {
    "list-unsubscribe": "<https://example.com/u/1>, <mailto:u@example.com>",
    "list-unsubscribe-post": "List-Unsubscribe=One-Click",
    "list-id": "Orders <orders.example.com>",
    "list-post": "<mailto:list@example.com> or NO",
    "in-reply-to": "<id@example.com>",
    "references": "<a@example.com> <b@example.com>",
    "auto-submitted": "auto-generated",
    "precedence": "bulk",
    "feedback-id": "campaign:customer:mailtype:sender",
}
for _lower in _NAMED:
    _EXAMPLES.setdefault(_lower, "<https://example.com/help>")

ALLOWED = "X-* (not X-Email-Service-* or filter/provider headers), " + ", ".join(
    name for name, _ in _NAMED.values())


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """The caller's headers, named as sent; ``ValueError`` naming the first one refused."""
    if len(headers) > MAX_HEADERS:
        raise ValueError(f"at most {MAX_HEADERS} custom headers")
    checked: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in headers.items():
        lower = name.lower()
        canonical = _check_name(name, lower)
        if lower in seen:
            raise ValueError(f"{name!r} appears more than once (names are case-insensitive)")
        seen.add(lower)
        checked[canonical] = _check_value(name, lower, value)
    return checked


def _check_name(name: str, lower: str) -> str:
    if len(name) > _MAX_NAME:
        raise ValueError(f"header names are at most {_MAX_NAME} characters")
    if lower in _NAMED:
        return _NAMED[lower][0]
    if _X_NAME.match(name):
        if lower.startswith("x-email-service-"):
            raise ValueError(f"{name!r} is set by the service and cannot be overridden")
        if lower.startswith(_BLOCKED_X):
            raise ValueError(f"{name!r} is acted on by mail systems and cannot be set")
        return name
    raise ValueError(f"{name!r} is not a header callers may set (allowed: {ALLOWED})")


def _check_value(name: str, lower: str, value: str) -> str:
    if len(value) > MAX_VALUE:
        raise ValueError(f"{name!r}: at most {MAX_VALUE} characters")
    if _CONTROL.search(value):
        raise ValueError(f"{name!r}: must not contain CR, LF or other control characters")
    if lower not in _NAMED:
        return value
    value = value.strip()
    # Sent as it stands (these are structured headers), so nothing a client might decode.
    if "=?" in value or not _NAMED[lower][1].match(value):
        raise ValueError(f"{name!r}: not in the form its RFC gives (e.g. {_EXAMPLES[lower]})")
    return value
