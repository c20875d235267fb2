"""One-click unsubscribe (RFC 8058): the signed token in ``List-Unsubscribe`` links.

A token binds one mailbox, the scope it unsubscribes from (the message's stream) and the message
it came in, so the suppression records its source::

    <payload>.<mac>    payload = base64url("1\\x1f<scope>\\x1f<mailbox>\\x1f<message id>")
                       mac     = base64url(HMAC-SHA256(secret, payload bytes)[:16])

Compact (about 110 characters for a typical address), URL-safe (no padding), verified in
constant time against every configured secret (rotation: the first secret signs, all verify).
Every bad token (tampered, truncated, signed with another secret, malformed in any way) gets
one and the same answer, ``None``: the endpoint cannot be used to tell them apart.
Tokens do not expire: an old newsletter's link keeps working while its secret is configured.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .addresses import mailbox_key
from .suppressions import SCOPE_PATTERN

VERSION = "1"
#: Bytes of the HMAC kept (128 bits).
MAC_BYTES = 16
#: Longer tokens are refused before any decoding.
MAX_TOKEN = 600
_SEPARATOR = "\x1f"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{22}\Z")
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")


@dataclass(frozen=True)
class Unsubscribe:
    """What a valid token stands for."""

    address: str
    scope: str
    message_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:MAC_BYTES]


def make_token(secret: str, address: str, scope: str, message_id: str) -> str:
    """A token for ``address`` (a validated address; stored as its mailbox key)."""
    if not SCOPE_PATTERN.match(scope) or not _MESSAGE_ID.match(message_id):
        raise ValueError("bad scope or message id for an unsubscribe token")
    payload = _SEPARATOR.join((VERSION, scope, mailbox_key(address), message_id)).encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify_token(secrets: Sequence[str], token: str) -> Unsubscribe | None:
    """What ``token`` stands for, or ``None`` for every kind of bad token."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or not _TOKEN.match(token):
        return None
    encoded, _, mac_text = token.partition(".")
    try:
        payload, mac = _unb64(encoded), _unb64(mac_text)
    except (binascii.Error, ValueError):
        return None
    valid = False
    for secret in secrets:  # every secret is tried: the time does not say which matched
        valid |= hmac.compare_digest(_mac(secret, payload), mac)
    if not valid:
        return None
    try:
        version, scope, address, message_id = payload.decode("ascii").split(_SEPARATOR)
    except (UnicodeDecodeError, ValueError):
        return None
    if version != VERSION or not SCOPE_PATTERN.match(scope) or "@" not in address or \
            not _MESSAGE_ID.match(message_id):
        return None
    return Unsubscribe(address=address, scope=scope, message_id=message_id)


def unsubscribe_headers(base_url: str, secret: str, address: str, scope: str,
                        message_id: str) -> dict[str, str]:
    """The two RFC 8058 headers for one recipient."""
    token = make_token(secret, address, scope, message_id)
    return {"List-Unsubscribe": f"<{base_url}/u/{token}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
