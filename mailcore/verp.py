"""VERP envelope senders: ``bounces+<token>@<BOUNCE_DOMAIN>``, one per message, HMAC-signed.

A relay that accepts a message and fails to deliver it later sends its report (a DSN) to the SMTP
envelope sender (``MAIL FROM``), not to the ``From`` header. Giving every message its own envelope
sender on our bounce domain lets ``email-service bounces`` tell which message a report is about
without trusting anything the report says: the token carries the message id and an HMAC over it,
so a report to an address we never issued (forged, altered, or for another installation) is
refused at ``RCPT`` before its body is read.

The token is the message id's 16 UUID bytes and the first 10 bytes (80 bits) of
HMAC-SHA256(``BOUNCE_SECRET``, ``b"verp1" + id bytes``), in lower-case base32 without padding:
42 characters, so the local part ``bounces+<token>`` has 50 octets (RFC 5321's limit is 64).
Lower case and base32 because some relays fold the case of local parts; nothing in it needs
quoting. A message id that is not a UUID (none is, today) gets no VERP sender.

Which *recipient* bounced comes from the report's per-recipient fields (``Final-Recipient`` /
``Original-Recipient``), accepted only when it is one of the message's own recipients: one
envelope per message, not one per recipient (see the README's Bounces section for the cost
comparison and the residual risk).
"""

from __future__ import annotations

import base64
import hmac
import uuid

#: The local part's fixed start, before ``+`` and the token.
LOCAL_PREFIX = "bounces"
#: Bytes of HMAC kept in a token (80 bits: forging one takes ~2^79 tries, each a whole SMTP
#: transaction refused at RCPT and counted).
MAC_BYTES = 10
_DOMAIN_TAG = b"verp1"
#: Length of a token (16 id bytes + MAC_BYTES, base32).
TOKEN_LENGTH = len(base64.b32encode(bytes(16 + MAC_BYTES)).rstrip(b"="))


def _mac(secret: bytes, id_bytes: bytes) -> bytes:
    return hmac.digest(secret, _DOMAIN_TAG + id_bytes, "sha256")[:MAC_BYTES]


def make_token(secret: bytes, message_id: str) -> str | None:
    """The token for ``message_id``, or None when the id is not a UUID."""
    try:
        id_bytes = uuid.UUID(message_id).bytes
    except (ValueError, AttributeError, TypeError):
        return None
    raw = id_bytes + _mac(secret, id_bytes)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def read_token(secret: bytes, token: str) -> str | None:
    """The message id a genuine token names, or None for anything else (wrong length or
    alphabet, a MAC that does not match): never raises."""
    if not isinstance(token, str) or len(token) != TOKEN_LENGTH or not token.isascii():
        return None
    padded = token.upper() + "=" * (-len(token) % 8)
    try:
        raw = base64.b32decode(padded)
    except (ValueError, TypeError):
        return None
    id_bytes, mac = raw[:16], raw[16:]
    if not hmac.compare_digest(mac, _mac(secret, id_bytes)):
        return None
    if base64.b32encode(raw).decode("ascii").rstrip("=").lower() != token.lower():
        return None  # the last character's spare bits set: not a token we issued
    return str(uuid.UUID(bytes=id_bytes))


def envelope_sender(secret: bytes, domain: str, message_id: str) -> str | None:
    """``bounces+<token>@<domain>`` for ``message_id`` (None when it gets no token)."""
    token = make_token(secret, message_id)
    return None if token is None else f"{LOCAL_PREFIX}+{token}@{domain}"


def token_of(address: str, domain: str) -> str | None:
    """The token part of a VERP address on ``domain`` (``bounces+<token>@domain``, domain and
    local part compared case-insensitively), or None when the address is not one of ours."""
    local, at, addr_domain = address.strip().strip("<>").rpartition("@")
    if not at or addr_domain.lower().rstrip(".") != domain.lower():
        return None
    prefix, plus, token = local.partition("+")
    if not plus or prefix.lower() != LOCAL_PREFIX:
        return None
    return token.lower()
