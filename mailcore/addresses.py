"""Addresses: one representation from the door to RCPT TO.

Every address is validated once, by email-validator (IDNA 2008 with UTS #46 mapping), and from
then on carried in its ASCII form: the domain as A-labels (``straße.de`` → ``xn--strae-oqa.de``),
exactly the domain the caller named. Nothing downstream re-encodes it; the standard library's
IDNA 2003 codec (which maps ``straße.de`` to ``strasse.de``, another domain) is never used.

The part before the ``@`` must be ASCII: such a mailbox needs SMTPUTF8 (RFC 6531) end to end,
which this service does not use, so it is refused at the door rather than accepted to fail later.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from email_validator import EmailNotValidError, validate_email

#: The longest address SMTP carries (RFC 5321 path limit, less the angle brackets).
MAX_ADDRESS = 254
#: The longest part before the ``@`` (RFC 5321 4.5.3.1.1); relays refuse longer ones.
MAX_LOCAL_PART = 64

# ``addr``, ``Name <addr>`` or ``"Name" <addr>``: one mailbox, nothing else (no groups, lists or
# comments), so a template's sender override means exactly one thing.
_MAILBOX = re.compile(
    r'^\s*(?:(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<name>[^<>"]*?))\s*<(?P<addr>[^<>\s]+)>'
    r"|(?P<bare>[^<>\s\"]+))\s*$"
)


#: Valid addresses remembered by :func:`normalize_address`: a few MB at most (an entry is a key
#: of at most ``_CACHED_INPUT`` characters, its answer of at most 254, and the LRU's links).
CACHE_SIZE = 4096
# Longer inputs (none valid from the door, whose field allows 320) are checked every time.
_CACHED_INPUT = 320


def normalize_address(value: str) -> str:
    """The address as it is sent (ASCII, A-label domain), or ``ValueError`` saying what is wrong.

    email-validator costs tens of µs an address and its answer depends on the text alone (no
    settings, no DNS), so valid answers are remembered: a recipient written to again is not
    parsed again. A refusal raises, and ``lru_cache`` never stores one, so hostile input cannot
    fill the cache; valid input can only push older entries out.
    """
    if len(value) > _CACHED_INPUT:
        return _normalize(value)
    return _normalize_cached(value)


def _normalize(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain CR or LF (header injection)")
    try:
        valid = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        message = str(exc)
        if "before the @-sign are not supported" in message:
            message = ("the part before the @ must be ASCII (this service does not send with "
                       "SMTPUTF8); internationalised domains are fine")
        raise ValueError(f"not a valid email address: {message}") from None
    ascii_email = valid.ascii_email
    assert ascii_email is not None  # allow_smtputf8=False guarantees it
    if len(ascii_email) > MAX_ADDRESS:
        raise ValueError(f"not a valid email address: longer than {MAX_ADDRESS} characters")
    if len(valid.local_part) > MAX_LOCAL_PART:
        raise ValueError(f"not a valid email address: the part before the @ is longer than "
                         f"{MAX_LOCAL_PART} characters")
    return ascii_email


_normalize_cached = functools.lru_cache(maxsize=CACHE_SIZE)(_normalize)


def ascii_domain(domain: str) -> str:
    """A domain name in the form addresses carry (A-labels, lower case)."""
    return normalize_address(f"postmaster@{domain}").rpartition("@")[2]


def parse_mailbox(value: str) -> tuple[str | None, str]:
    """``addr``, ``Name <addr>`` or ``"Name" <addr>`` → (display name or None, normalized addr).

    Raises ``ValueError`` for anything else (several addresses, groups, a bad address).
    """
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain CR or LF (header injection)")
    found = _MAILBOX.match(value)
    if found is None:
        raise ValueError("expected addr@example.com or Name <addr@example.com>")
    quoted = found.group("quoted")
    name = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else found.group("name")
    address = found.group("addr") or found.group("bare")
    return (name.strip() or None) if name else None, normalize_address(address)


def mailbox_key(address: str) -> str:
    """One key per mailbox, whatever the spelling: for per-recipient limits, never for sending.

    Folds case, Unicode compatibility forms (NFKC) and U-label/A-label domains, and drops a
    ``+tag`` subaddress (``ada+x@example.com`` is ``ada@example.com``), since nearly every
    provider delivers those to one inbox. Provider-specific aliases (Gmail's dots) are not folded.
    """
    local, _, domain = address.rpartition("@")
    if not address.isascii():
        try:
            domain = ascii_domain(domain)
        except ValueError:
            domain = unicodedata.normalize("NFKC", domain)
        local = unicodedata.normalize("NFKC", local)
    local = local.casefold().partition("+")[0]
    return f"{local}@{domain.lower()}"
