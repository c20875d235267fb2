"""Build the MIME message: multipart/alternative with a text and an HTML part."""

from __future__ import annotations

from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

from .message import Recipient
from .rendering import RenderedEmail


@dataclass(frozen=True)
class Envelope:
    """What a transport delivers: SMTP envelope addresses and the message itself."""

    message_id: str
    sender: str
    recipients: tuple[str, ...]
    message: EmailMessage

    def as_bytes(self) -> bytes:
        return self.message.as_bytes(policy=SMTP)


def _address(recipient: Recipient) -> Address:
    local, _, domain = recipient.email.rpartition("@")
    return Address(display_name=recipient.name or "", username=local, domain=domain)


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
) -> Envelope:
    """Assemble headers and both parts; Bcc recipients go to the envelope only."""
    cc = cc or []
    bcc = bcc or []
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(sender)
    msg["To"] = [_address(r) for r in to]
    if cc:
        msg["Cc"] = [_address(r) for r in cc]
    if reply_to is not None:
        msg["Reply-To"] = _address(reply_to)
    msg["Subject"] = rendered.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    domain = sender.email.rpartition("@")[2]
    msg["Message-ID"] = f"<{message_id}@{domain}>"
    msg["X-Email-Service-Id"] = message_id
    if tags:
        msg["X-Email-Service-Tags"] = ", ".join(tags)
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    recipients = tuple(dict.fromkeys(r.email for r in [*to, *cc, *bcc]))
    return Envelope(message_id=message_id, sender=sender.email, recipients=recipients, message=msg)
