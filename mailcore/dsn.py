"""Reading delivery reports: RFC 3464 DSNs, RFC 5965 feedback reports, and the rest.

:func:`parse_report` turns the bytes of a received report into what it says about which
recipients: ``hard`` (permanent: ``Action: failed`` with a 5.x.x status, or no status),
``soft`` (transient: a 4.x.x status, or ``Action: delayed``) or ``complaint`` (an ARF report).
Standard reports are read field by field; anything else goes through flufl.bounce's detectors
(Exim, qmail, Yahoo, Microsoft and others' home-grown formats), which name addresses only.

Nothing here trusts the report: which message it is about comes from the signed address it was
sent to (:mod:`mailcore.verp`), and the recipients it names are only believed when they are that
message's own (:mod:`mailcore.bounce_record`). Every input is bounded: the caller limits the size;
here MIME nesting (:data:`MAX_DEPTH`), parts (:data:`MAX_PARTS`) and recipients (``limit``), and
no malformed input raises: it reads as :data:`NOT_A_REPORT` or :data:`MALFORMED`.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import logging
import re
from dataclasses import dataclass
from email.message import Message

HARD = "hard"
SOFT = "soft"
COMPLAINT = "complaint"

#: What the report is (``Report.kind``).
DSN = "dsn"
FEEDBACK = "feedback"
HEURISTIC = "heuristic"
NOT_A_REPORT = "not_a_report"
MALFORMED = "malformed"

#: Deepest MIME nesting looked into (reports have 2-3 levels).
MAX_DEPTH = 8
#: Most MIME parts looked at.
MAX_PARTS = 64
#: Longest diagnostic text kept.
MAX_DIAGNOSTIC = 300
#: Longest address believed (RFC 5321's path limit).
_MAX_ADDRESS = 254

# flufl.bounce logs every detector it runs (INFO) and every one that trips over hostile input
# (a traceback): a flood, from input anyone can send. What became of a report is counted instead.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

_STATUS = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})")
_ADDRESS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}\Z")


@dataclass(frozen=True)
class RecipientReport:
    """What a report says about one recipient.

    Parameters:
      address: the recipient (``Final-Recipient``, lower-cased domain).
      original: ``Original-Recipient``, when the report gives one.
      kind: ``hard``, ``soft`` or ``complaint``.
      status: the enhanced status code (``5.1.1``), when given.
      diagnostic: the remote server's words (``Diagnostic-Code``), shortened.
    """

    address: str
    kind: str
    original: str | None = None
    status: str | None = None
    diagnostic: str | None = None


@dataclass(frozen=True)
class Report:
    """A parsed report: its ``kind`` (``dsn``, ``feedback``, ``heuristic``, ``not_a_report``,
    ``malformed``) and the recipients it reports (delivered or relayed ones are left out)."""

    kind: str
    recipients: tuple[RecipientReport, ...] = ()


def parse_report(raw: bytes, *, limit: int = 50) -> Report:
    """The report in ``raw`` (at most ``limit`` recipients read); never raises."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        parts = _parts(message)
    except (RecursionError, ValueError, TypeError, LookupError, IndexError, AttributeError):
        return Report(MALFORMED)
    try:
        for part in parts:
            ctype = part.get_content_type()
            if ctype == "message/delivery-status":
                return Report(DSN, _dsn_recipients(part, limit))
            if ctype == "message/feedback-report":
                return Report(FEEDBACK, _feedback_recipients(part, limit))
        return _heuristic(message, limit)
    except (RecursionError, ValueError, TypeError, LookupError, IndexError, AttributeError):
        return Report(MALFORMED)


def _parts(message: Message) -> list[Message]:
    """Every MIME part, breadth first, within :data:`MAX_DEPTH` and :data:`MAX_PARTS`
    (iterative: a hostile nesting cannot exhaust the stack)."""
    found: list[Message] = []
    level: list[Message] = [message]
    for _ in range(MAX_DEPTH):
        following: list[Message] = []
        for part in level:
            if len(found) >= MAX_PARTS:
                return found
            found.append(part)
            if part.get_content_type() == "message/delivery-status":
                continue  # its "parts" are field blocks, read by _dsn_recipients
            payload = part.get_payload()
            if isinstance(payload, list):
                following += [p for p in payload if isinstance(p, Message)]
        level = following
        if not level:
            break
    return found


def _blocks(part: Message) -> list[Message]:
    """The field blocks of a ``message/delivery-status`` (or feedback) part: Python's parser
    gives them as sub-messages; a part it could not split is parsed here."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = payload if isinstance(payload, str) else ""
    chunks = re.split(r"\r?\n\s*\r?\n", text.strip())
    return [email.message_from_string(chunk + "\n", policy=email.policy.compat32)
            for chunk in chunks if chunk.strip()]


def _field(block: Message, name: str) -> str | None:
    value = block.get(name)
    if value is None:
        return None
    text = str(value)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split()) or None


def _address(value: str | None) -> str | None:
    """The address of an ``rfc822; addr`` field value, or None when it is no plain address."""
    if not value:
        return None
    _, semicolon, rest = value.partition(";")
    address = (rest if semicolon else value).strip().strip("<>").strip()
    if len(address) > _MAX_ADDRESS or not _ADDRESS.match(address):
        return None
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower().rstrip('.')}"


def _dsn_recipients(part: Message, limit: int) -> tuple[RecipientReport, ...]:
    blocks = _blocks(part)
    found: list[RecipientReport] = []
    for block in blocks[1:]:  # the first block is about the message, the rest per recipient
        if len(found) >= limit:
            break
        address = _address(_field(block, "Final-Recipient"))
        action = (_field(block, "Action") or "").lower()
        if address is None or action not in ("failed", "delayed"):
            continue
        status_field = _field(block, "Status") or ""
        status_match = _STATUS.match(status_field)
        status = ".".join(status_match.groups()) if status_match else None
        if action == "delayed" or (status is not None and status.startswith("4")):
            kind = SOFT
        else:
            kind = HARD
        diagnostic = _field(block, "Diagnostic-Code")
        found.append(RecipientReport(
            address=address, kind=kind, original=_address(_field(block, "Original-Recipient")),
            status=status, diagnostic=diagnostic[:MAX_DIAGNOSTIC] if diagnostic else None))
    return tuple(found)


def _feedback_recipients(part: Message, limit: int) -> tuple[RecipientReport, ...]:
    found: list[RecipientReport] = []
    for block in _blocks(part):
        for value in block.get_all("Original-Rcpt-To") or []:
            address = _address(str(value))
            if address is not None and len(found) < limit:
                feedback = _field(block, "Feedback-Type") or "abuse"
                found.append(RecipientReport(address=address, kind=COMPLAINT,
                                             diagnostic=f"feedback-type {feedback}"[
                                                 :MAX_DIAGNOSTIC]))
    return tuple(found)


def _heuristic(message: Message, limit: int) -> Report:
    """flufl.bounce's detectors for the formats that are not RFC 3464."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a detector tripping over hostile input (they are heuristics)
        return Report(MALFORMED)
    found: list[RecipientReport] = []
    for kind, addresses in ((HARD, permanent), (SOFT, temporary)):
        for raw in sorted(addresses):
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            address = _address(text)
            if address is not None and len(found) < limit and not any(
                    r.address == address for r in found):
                found.append(RecipientReport(address=address, kind=kind))
    return Report(HEURISTIC if found else NOT_A_REPORT, tuple(found))
