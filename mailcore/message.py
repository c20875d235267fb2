"""The message model: what a caller may ask for, validated before anything is queued.

Everything here that later becomes a mail header (subject, display names, reply-to, custom
headers) is refused when it carries CR or LF, so header injection never reaches a worker.
Addresses are validated and normalized by :mod:`mailcore.addresses`, custom headers checked
against the allow-list in :mod:`mailcore.headers`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .addresses import normalize_address, parse_mailbox
from .attachments import MAX_ATTACHMENTS, AttachmentIn
from .headers import ALLOWED, MAX_HEADERS, MAX_VALUE, check_headers
from .locales import MAX_TAG, check_locale
from .schedule import MAX_SEND_AT
from .streams import StreamName

__all__ = [
    "ACCEPTED", "CONTENT_LABEL", "MAX_BATCH", "MAX_HEADERS", "MAX_RECIPIENTS", "BatchRequest",
    "EmailAddress",
    "HeaderText", "Recipient", "SendRequest", "error_details", "normalize_address",
    "recipient_from_text",
]

#: The status and metrics label of a message sent with its own content (no stored template);
#: not a valid template name, so it names no template.
CONTENT_LABEL = "(content)"
#: Longest caller-given html/text/mjml, in characters (the body limit usually binds first).
MAX_CONTENT = 1024 * 1024

#: Recipients (to + cc + bcc) one message may name.
MAX_RECIPIENTS = 50
#: Messages one batch request may carry (Postmark allows 500, Resend 100).
MAX_BATCH = 100
MAX_TAGS = 10
#: ``metadata``: keys, key length and value length.
MAX_METADATA_KEYS = 20
MAX_METADATA_VALUE = 500
#: Keys the service sets itself in a provider's variables.
_RESERVED_METADATA = frozenset({"email_service_id"})

_TEMPLATE_NAME = (
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?/)?"  # optional namespace/
    r"[a-z0-9](?:[a-z0-9._-]{0,251}[a-z0-9])?$"
)
# Control characters, and lone surrogates (not encodable: the message could not be written).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")


def _no_line_breaks(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain CR or LF (header injection)")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


#: Validation context of a job the ingress already validated: addresses were normalized there,
#: so the worker skips email-validator (costly per address) but still refuses line breaks.
ACCEPTED = {"accepted": True}


def _address(value: str, info: ValidationInfo) -> str:
    # The door's form is ASCII; anything else in a job (an older form, a forged job) is
    # validated again rather than re-encoded by another IDNA implementation.
    if info.context is ACCEPTED and value.isascii():
        return _no_line_breaks(value)
    return normalize_address(value)


HeaderText = Annotated[str, AfterValidator(_no_line_breaks)]
EmailAddress = Annotated[str, Field(max_length=320), AfterValidator(_address)]


class Recipient(BaseModel):
    """One mailbox: an address and an optional display name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: EmailAddress
    name: Annotated[HeaderText, Field(max_length=200)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"email": value} if isinstance(value, str) else value


def recipient_from_text(value: str) -> Recipient:
    """``addr``, ``Name <addr>`` or ``"Name" <addr>`` (a template's ``from``/``replyTo``) as a
    recipient, checked as the door checks one; ``ValueError`` saying what is wrong."""
    name, address = parse_mailbox(value)
    try:
        return Recipient.model_validate({"email": address, "name": name}, context=ACCEPTED)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{detail['field']}: {detail['message']}"
                                   for detail in error_details(exc))) from None


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str | dict) else value


RecipientList = Annotated[list[Recipient], BeforeValidator(_as_list)]


class SendRequest(BaseModel):
    """``POST /v1/messages``: send one template, or the caller's own content (``subject`` with
    ``html`` and/or ``text``, or ``mjml``: never evaluated as a template), to one or more
    recipients."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    template: Annotated[str, Field(pattern=_TEMPLATE_NAME, max_length=317)] | None = None
    html: Annotated[str, Field(min_length=1, max_length=MAX_CONTENT)] | None = None
    text: Annotated[str, Field(min_length=1, max_length=MAX_CONTENT)] | None = None
    mjml: Annotated[str, Field(min_length=1, max_length=MAX_CONTENT)] | None = None
    #: The template version to render: named by the caller (an older kept version), or set at
    #: acceptance to the version the message was validated against (the pin).
    template_version: Annotated[str, Field(max_length=16, pattern=r"^[0-9a-f]{16}$")] | None = None
    to: Annotated[RecipientList, Field(min_length=1)]
    data: dict[str, Any] = Field(default_factory=dict)
    subject: Annotated[HeaderText, Field(min_length=1, max_length=998)] | None = None
    sender: Recipient | None = Field(default=None, alias="from")
    reply_to: Recipient | None = None
    cc: RecipientList = Field(default_factory=list)
    bcc: RecipientList = Field(default_factory=list)
    headers: dict[str, Annotated[HeaderText, Field(max_length=MAX_VALUE)]] = Field(
        default_factory=dict, description=f"Custom headers, at most {MAX_HEADERS}: {ALLOWED}")
    #: A BCP 47 tag (``de``, ``pt-BR``); the template's lookup is in :mod:`mailcore.locales`.
    locale: Annotated[str, Field(max_length=MAX_TAG), AfterValidator(check_locale)] | None = None
    tags: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]] = Field(
        default_factory=list, max_length=MAX_TAGS
    )
    sandbox: bool = Field(default=False, description="Render and record, never deliver")
    metadata: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")],
        Annotated[HeaderText, Field(max_length=MAX_METADATA_VALUE)],
    ] = Field(default_factory=dict, description=(
        f"A flat map of strings kept with the message (at most {MAX_METADATA_KEYS} keys)"))
    attachments: list[AttachmentIn] = Field(
        default_factory=list, max_length=MAX_ATTACHMENTS,
        description="Files and inline images (README: Attachments)")
    #: When to send (README: Scheduled sends); checked against the clock by the validator.
    send_at: Annotated[str, Field(max_length=MAX_SEND_AT)] | None = Field(
        default=None, description="RFC 3339 date-time with an offset: send then, not now")
    #: ``transactional`` or ``bulk`` (README: Streams); else the template's, else transactional.
    stream: StreamName | None = None

    #: The store key of the pinned version (set by the validator; the job carries it).
    _template_key: str | None = PrivateAttr(default=None)
    #: When a scheduled message is due (epoch seconds; set by the validator from ``send_at``).
    _due: float | None = PrivateAttr(default=None)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return check_headers(headers)

    @model_validator(mode="after")
    def _check_recipient_count(self) -> SendRequest:
        if len(self.to) + len(self.cc) + len(self.bcc) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients (to + cc + bcc)")
        return self

    @field_validator("metadata", mode="before")
    @classmethod
    def _check_metadata(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) > MAX_METADATA_KEYS:
                raise ValueError(f"at most {MAX_METADATA_KEYS} keys")
            reserved = _RESERVED_METADATA.intersection(value)
            if reserved:
                raise ValueError(f"{min(reserved)!r} is set by the service")
        return value

    @model_validator(mode="after")
    def _template_or_content(self) -> SendRequest:
        given = [name for name in ("html", "text", "mjml") if getattr(self, name) is not None]
        if self.template is not None:
            if given:
                raise ValueError(f"{given[0]}: not allowed with a template (send either a "
                                 "template, or subject with html/text/mjml)")
            return self
        if not given:
            raise ValueError("template: required, unless the message brings its own content "
                             "(subject with html and/or text, or mjml)")
        if self.subject is None:
            raise ValueError("subject: required for a message without a template")
        if self.mjml is not None and self.html is not None:
            raise ValueError("mjml: give either mjml or html, not both")
        if self.data:
            raise ValueError("data: only for templates (content is sent as given)")
        if self.locale is not None:
            raise ValueError("locale: only for templates")
        return self

    @property
    def label(self) -> str:
        """The template's name, or :data:`CONTENT_LABEL` (statuses, logs, metrics)."""
        return self.template or CONTENT_LABEL

    @field_validator("attachments")
    @classmethod
    def _unique_content_ids(cls, attachments: list[AttachmentIn]) -> list[AttachmentIn]:
        ids = [a.content_id for a in attachments if a.content_id]
        if len(ids) != len(set(ids)):
            raise ValueError("each content_id may be used once")
        return attachments


class BatchRequest(BaseModel):
    """``POST /v1/messages/batch``: several messages, accepted all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    messages: Annotated[list[SendRequest], Field(min_length=1, max_length=MAX_BATCH)]


_NAMED = re.compile(r"^([a-z_]+): (.+)$", re.S)


def error_details(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as ``[{"field", "message"}]`` with dotted field paths (``to.0.email``)."""
    details = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        named = _NAMED.match(message) if not field else None
        if named:  # a rule across fields names the one it is about: "subject: required …"
            field, message = named.group(1), named.group(2)
        field = field or "body"
        details.append({"field": field, "message": message})
    return details
