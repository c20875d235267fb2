"""Build the MIME message: multipart/alternative with a text and an HTML part.

The message is written straight to bytes. The standard library's ``EmailMessage`` parses every
header it is given back into a token tree and re-folds it when serialising, which was most of a
worker's CPU per email (the benchmark's profile shows the cost). Everything
written here is already validated (addresses by email-validator, no CR/LF in any header value),
so a small writer suffices: RFC 2047 encoded-words for non-ASCII header text (``email.header``),
``formataddr`` for mailboxes, a quoted-printable text part and a base64 HTML part (both in C)
and CRLF line ends.

Addresses are written exactly as validated (ASCII, A-label domains: see ``mailcore.addresses``).
Text that contains ``=?`` — a display name, the subject, an X- header — is always written as an
encoded word itself, so a client shows it literally instead of decoding a caller's encoded word
into, say, a spoofed sender name.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.charset import Charset
from email.header import Header
from email.utils import encode_rfc2231, formataddr, formatdate

from .message import Recipient
from .rendering import RenderedEmail

#: Longest header line we emit unfolded (RFC 5322 recommends 78 characters).
_FOLD_AT = 78
_UTF8 = Charset("utf-8")
#: Characters no header may carry raw: controls (tab aside) and lone surrogates.
_UNWRITABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
#: Longest display name written as one encoded word; longer ones are folded, so that no line
#: exceeds RFC 5322's 998 characters.
_LONGEST_WORD = 600


@dataclass(frozen=True)
class Attachment:
    """A file carried with the message (validated at the door: name, type, size).

    Parameters:
      filename: the sanitised file name.
      content: the file's bytes.
      content_type: its MIME type.
      disposition: ``attachment``, or ``inline`` for an image the HTML shows by ``cid:``.
      content_id: the ``cid:`` an inline image is referenced by.
    """

    filename: str
    content: bytes
    content_type: str
    disposition: str = "attachment"
    content_id: str | None = None


@dataclass(slots=True)  # not frozen: built for every message, a frozen init costs more
class Content:
    """The message as parts, for transports that take fields rather than MIME (HTTP APIs).

    Parameters:
      sender, to, cc, bcc, reply_to: mailboxes as validated (ASCII, A-label domains).
      subject, html, text: the rendered message.
      headers: the caller's custom headers (allow-listed).
      tags: the caller's tags; metadata: the caller's flat string map.
    """

    sender: Recipient
    to: Sequence[Recipient]
    cc: Sequence[Recipient]
    bcc: Sequence[Recipient]
    reply_to: Recipient | None
    subject: str
    html: str
    text: str
    headers: Mapping[str, str] = field(default_factory=dict)
    tags: Sequence[str] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    attachments: Sequence[Attachment] = ()


@dataclass(frozen=True)
class Envelope:
    """What a transport delivers: SMTP envelope addresses and the message itself (as MIME
    bytes, and as parts for HTTP transports)."""

    message_id: str
    sender: str
    recipients: tuple[str, ...]
    raw: bytes
    content: Content | None = None
    #: Deliver through this transport only (an earlier attempt's outcome there is unknown: a
    #: copy through another would be a duplicate Message-ID dedup cannot catch).
    only_via: str | None = None

    def as_bytes(self) -> bytes:
        return self.raw


def _mailbox(recipient: Recipient) -> str:
    name = recipient.name
    if name and ("=?" in name or not name.isascii()):
        # Always encoded: formataddr would pass an ASCII encoded word through for the client
        # to decode. One word while it fits a line (some parsers space out split words).
        encoded = _UTF8.header_encode(name)
        if len(encoded) > _LONGEST_WORD:
            encoded = Header(name, "utf-8").encode(linesep="\r\n")
        return f"{encoded} <{recipient.email}>"
    return formataddr((name or "", recipient.email))


def _header(name: str, value: str) -> str:
    """One header line (folded if long); non-ASCII text and text containing ``=?`` become
    RFC 2047 encoded-words."""
    if _UNWRITABLE.search(value):
        # A rendered subject carries what the data carried: no NUL or escape reaches the wire.
        value = _UNWRITABLE.sub("\ufffd", value)
    literal = "=?" not in value
    if literal and value.isascii() and len(name) + 2 + len(value) <= _FOLD_AT:
        return f"{name}: {value}"
    charset = "us-ascii" if literal and value.isascii() else "utf-8"
    folded = Header(value, charset, header_name=name).encode(linesep="\r\n")
    return f"{name}: {folded}"


def _address_header(name: str, recipients: list[Recipient]) -> str:
    # One mailbox per folded line keeps long recipient lists within the line limit.
    return f"{name}: " + ",\r\n ".join(_mailbox(r) for r in recipients)


def _lf_bytes(body: str) -> bytes:
    """UTF-8 with every line end (CRLF, CR, LF) as LF; encoded first, as bytes replace faster."""
    data = body.encode("utf-8")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data


def _quoted_printable(body: str) -> bytes:
    return binascii.b2a_qp(_lf_bytes(body), istext=True).replace(b"\n", b"\r\n")


def _base64(body: str) -> bytes:
    # Text in base64 is encoded in its canonical form, CRLF line ends (RFC 2045 6.8).
    return _base64_lines(_lf_bytes(body).replace(b"\n", b"\r\n"))


#: Characters per base64 line (RFC 2045 6.8: at most 76).
_BASE64_LINE = 76


def _base64_lines(data: bytes) -> bytes:
    """``data`` in base64, 76-character lines ending in CRLF: the bytes of
    ``base64.encodebytes`` with CRLF, in about half its time (one C call for the whole body,
    where it made one per 57 input bytes)."""
    if not data:
        return b""
    encoded = binascii.b2a_base64(data, newline=False)
    return b"\r\n".join([encoded[i:i + _BASE64_LINE]
                          for i in range(0, len(encoded), _BASE64_LINE)]) + b"\r\n"


def _part(boundary: str, subtype: str, body: str) -> bytes:
    """The text part in quoted-printable, readable as it stands; the HTML part in base64.

    HTML is markup nobody reads raw, and MJML writes it in lines of kilobytes full of ``=``:
    quoted-printable was the largest CPU cost of a delivery after its round trips. Base64 is
    several times cheaper, for a third more bytes. SpamAssassin's MIME_BASE64_TEXT does
    not apply to UTF-8 parts.
    """
    encoding, encoded = (("base64", _base64(body)) if subtype == "html"
                         else ("quoted-printable", _quoted_printable(body)))
    return (f"--{boundary}\r\nContent-Type: text/{subtype}; charset=\"utf-8\"\r\n"
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n").encode("ascii") + \
        encoded + b"\r\n"


def build_envelope(
    *,
    message_id: str,
    rendered: RenderedEmail,
    sender: Recipient,
    to: list[Recipient],
    cc: list[Recipient] | None = None,
    bcc: list[Recipient] | None = None,
    reply_to: Recipient | None = None,
    headers: dict[str, str] | None = None,
    tags: list[str] | None = None,
    only_via: str | None = None,
    attachments: tuple[Attachment, ...] = (),
    metadata: Mapping[str, str] | None = None,
) -> Envelope:
    """Assemble headers and both parts; Bcc recipients go to the envelope only."""
    cc = cc or []
    bcc = bcc or []
    domain = sender.email.rpartition("@")[2]
    boundary = f"=_{os.urandom(12).hex()}"  # "=_" occurs in neither encoding
    lines = [f"From: {_mailbox(sender)}", _address_header("To", to)]
    if cc:
        lines.append(_address_header("Cc", cc))
    if reply_to is not None:
        lines.append(f"Reply-To: {_mailbox(reply_to)}")
    lines += [
        _header("Subject", rendered.subject),
        f"Date: {formatdate(localtime=False, usegmt=True)}",
        f"Message-ID: <{message_id}@{domain}>",
        f"X-Email-Service-Id: {message_id}",
    ]
    if tags:
        lines.append(_header("X-Email-Service-Tags", ", ".join(tags)))
    lines += [_header(name, value) for name, value in (headers or {}).items()]
    alternative = b"".join([
        _part(boundary, "plain", rendered.text),
        # A message of text alone (own content without HTML) has no HTML part.
        _part(boundary, "html", rendered.html) if rendered.html else b"",
        f"--{boundary}--\r\n".encode("ascii"),
    ])
    content_type = f'multipart/alternative; boundary="{boundary}"'
    if attachments:
        content_type, alternative = _with_files(content_type, alternative, attachments)
    lines += ["MIME-Version: 1.0", f"Content-Type: {content_type}"]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + alternative
    recipients = tuple(dict.fromkeys(r.email for r in [*to, *cc, *bcc]))
    content = Content(sender, to, cc, bcc, reply_to, rendered.subject, rendered.html,
                      rendered.text, headers or {}, tags or (), metadata or {}, attachments)
    return Envelope(message_id=message_id, sender=sender.email,
                    recipients=recipients, raw=raw, content=content, only_via=only_via)


def _with_files(content_type: str, body: bytes, files: tuple[Attachment, ...]
                ) -> tuple[str, bytes]:
    """Wrap the alternative part: inline images beside it in multipart/related (so ``cid:``
    resolves), other files after that in multipart/mixed."""
    inline = [f for f in files if f.disposition == "inline"]
    attached = [f for f in files if f.disposition != "inline"]
    for subtype, group in (("related", inline), ("mixed", attached)):
        if not group:
            continue
        boundary = f"=_{os.urandom(12).hex()}"
        parts = [f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii"),
                 body]
        parts += [_file_part(boundary, item) for item in group]
        parts.append(f"--{boundary}--\r\n".encode("ascii"))
        content_type, body = f'multipart/{subtype}; boundary="{boundary}"', b"".join(parts)
    return content_type, body


def _file_part(boundary: str, item: Attachment) -> bytes:
    name = _parameter("name", item.filename)
    filename = _parameter("filename", item.filename)
    lines = [f"--{boundary}", f"Content-Type: {item.content_type}; {name}",
             f"Content-Disposition: {item.disposition}; {filename}",
             "Content-Transfer-Encoding: base64"]
    if item.content_id:
        lines.append(f"Content-ID: <{item.content_id}>")
    encoded = _base64_lines(item.content)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + encoded + b"\r\n"


def _parameter(key: str, value: str) -> str:
    """A MIME parameter: quoted ASCII, or RFC 2231 UTF-8 for anything else (file names were
    checked at the door: no controls, no line breaks)."""
    if value.isascii() and '"' not in value and "\\" not in value and len(value) < 70:
        return f'{key}="{value}"'
    encoded = encode_rfc2231(value, "utf-8")
    if len(encoded) < 70:
        return f"{key}*={encoded}"
    # RFC 2231 continuations keep each line short (a 200-character name is up to 2.4 KB
    # percent-encoded); a chunk never splits a %XX.
    chunks, start = [], 0
    while start < len(encoded):
        end = min(start + 60, len(encoded))
        if "%" in encoded[end - 2:end] and end < len(encoded):
            end = start + encoded[start:end].rindex("%")
        chunks.append(encoded[start:end])
        start = end
    return ";\r\n ".join(f"{key}*{i}*={chunk}" for i, chunk in enumerate(chunks))
