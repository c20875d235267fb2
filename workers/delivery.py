"""One delivery: job payload → template → rendered MIME → transport. No Dramatiq here."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis
from opentelemetry import trace
from pydantic import ValidationError

from mailcore.attachments import decode
from mailcore.config import Settings
from mailcore.content import render_content
from mailcore.dkim_signing import DkimSigner
from mailcore.message import (
    ACCEPTED,
    CONTENT_LABEL,
    Recipient,
    SendRequest,
    error_details,
    recipient_from_text,
)
from mailcore.mime import Attachment, build_envelope
from mailcore.rendering import CompiledTemplate, RenderedEmail, TemplateError
from mailcore.send_time_suppression import job_stream
from mailcore.telemetry import detail_span
from mailcore.templates import Pin, TemplateRegistry
from mailcore.transports import (
    DeliveryError,
    DeliveryResult,
    PermanentDeliveryError,
    TransientDeliveryError,
    Transport,
    UnconfirmedDeliveryError,
)
from mailcore.unsubscribe import unsubscribe_headers
from mailcore.verp import envelope_sender

from . import metrics

log = logging.getLogger("email_service.worker")


class InvalidJobError(PermanentDeliveryError):
    """The job itself is unusable (no id, a request that fails validation, a sender override
    that does not parse): trying again cannot help, so it fails at once, saying why."""


@dataclass(frozen=True)
class Delivered:
    result: DeliveryResult
    template: str
    version: str
    #: How long the transport took (observed by :meth:`Deliverer.report`).
    send_seconds: float = 0.0
    #: A sandboxed message: what would have been sent (nothing was).
    sandboxed: RenderedEmail | None = None


class Deliverer:
    """Renders and delivers send jobs.

    Parameters:
      settings: sender identity and brand values.
      registry: compiled templates (each version compiled once per process).
      transport: where messages go.
      signer: DKIM-signs the MIME bytes after they are built (``None``: unsigned).
    """

    def __init__(
        self, settings: Settings, registry: TemplateRegistry, transport: Transport,
        signer: DkimSigner | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.transport = transport
        self.signer = signer
        self._brand = asdict(settings.brand)
        self._default_sender = Recipient(email=settings.sender.email, name=settings.sender.name)
        bounces = settings.bounces
        #: (key, domain) of VERP envelope senders; None: the From address is the envelope's.
        self._verp = (bounces.secret_bytes, bounces.domain) if bounces.domain else None

    def deliver(self, job: dict[str, Any], only_via: str | None = None,
                withheld: tuple[str, ...] = ()) -> Delivered:
        """Raises ``TemplateError`` or ``InvalidJobError`` (permanent) or a ``DeliveryError``
        from the transport; ``only_via`` pins a failover chain to one transport; ``withheld``
        recipients (suppressed) are left out."""
        request = withhold(parse_job(job), withheld)
        span = trace.get_current_span()
        rendered, name, version, template_from, template_reply_to, unsubscribe = self._render(
            job, request)
        if request.sandbox:
            # Rendered like any message, handed to no transport.
            return Delivered(result=DeliveryResult(transport="sandbox",
                                                   response="sandboxed: rendered, not delivered"),
                             template=name, version=version, sandboxed=rendered)
        envelope = build_envelope(
            message_id=job["id"],
            rendered=rendered,
            sender=(request.sender or _override("from", template_from)
                    or self._default_sender),
            to=request.to,
            cc=request.cc,
            bcc=request.bcc,
            reply_to=request.reply_to or _override("replyTo", template_reply_to),
            headers=self._list_headers(job, request, unsubscribe),
            tags=request.tags,
            only_via=only_via,
            metadata=request.metadata,
            attachments=tuple(
                Attachment(filename=a.filename, content=decode(a.content),
                           content_type=a.content_type, disposition=a.disposition,
                           content_id=a.content_id) for a in request.attachments),
        )
        if self.signer is not None:
            envelope = self.signer.sign_envelope(envelope)
        if self._verp is not None:
            # Bounces come back to a per-message, signed address (README: Bounces).
            verp = envelope_sender(*self._verp, job["id"])
            if verp is not None:
                envelope = dataclasses.replace(envelope, sender=verp)
        if self.settings.telemetry.trace_recipients:
            span.set_attribute("email.recipients", list(envelope.recipients))
        started = time.perf_counter()
        with detail_span(
            "transport.send", kind=trace.SpanKind.CLIENT,
            attributes={"email.transport": self.transport.name, "email.message_id": job["id"]},
        ) as send_span:
            try:
                result = self.transport.send(envelope)
            except DeliveryError as exc:
                metrics.SEND_SECONDS.labels(self.transport.name).observe(
                    time.perf_counter() - started)
                if exc.smtp_code is not None:
                    send_span.set_attribute("smtp.code", exc.smtp_code)
                if isinstance(exc, UnconfirmedDeliveryError):
                    metrics.UNCONFIRMED.labels(self.transport.name).inc()
                raise
            # The relay has the message. Until the worker records it as sent, a crash sends it
            # again: nothing here but the span's code; logs and metrics wait for report().
            if result.response[:3].isdigit():
                send_span.set_attribute("smtp.code", int(result.response[:3]))
        return Delivered(result=result, template=name, version=version,
                         send_seconds=time.perf_counter() - started)

    def _list_headers(self, job: dict[str, Any], request: SendRequest,
                      template_wants: bool) -> dict[str, str]:
        """The request's headers, plus RFC 8058 one-click unsubscribe headers when its template
        or stream asks for them (README: Suppressions and unsubscribe)."""
        config = self.settings.suppressions
        stream = job_stream(job)
        if not (template_wants or stream in config.unsubscribe_streams) or \
                not config.unsubscribe_enabled or not config.public_base_url:
            return request.headers
        if any(name.lower() == "list-unsubscribe" for name in request.headers):
            return request.headers  # the caller runs its own list
        recipients = {r.email for r in [*request.to, *request.cc, *request.bcc]}
        if len(recipients) != 1:
            return request.headers  # a token names one address
        return {**request.headers, **unsubscribe_headers(
            config.public_base_url, config.unsubscribe_secrets[0], recipients.pop(), stream,
            job["id"])}

    def _render(self, job: dict[str, Any], request: SendRequest
                ) -> tuple[RenderedEmail, str, str, str | None, str | None, bool]:
        """The rendered message, its template's name and version, the template's
        ``from``/``replyTo`` overrides and whether it wants unsubscribe headers; a message with
        its own content is not a template (never evaluated, only its MJML compiled)."""
        span = trace.get_current_span()
        started = time.perf_counter()
        if request.template is None:
            with detail_span("render", attributes={"email.template": CONTENT_LABEL}):
                rendered = render_content(request.subject or "", html=request.html,
                                          text=request.text, mjml=request.mjml)
            metrics.RENDER_SECONDS.labels(CONTENT_LABEL).observe(time.perf_counter() - started)
            return rendered, CONTENT_LABEL, "", None, None, False
        template = self._template(job, request)
        span.set_attribute("email.template", template.name)
        span.set_attribute("email.template_version", template.version)
        with detail_span("render", attributes={
                "email.template": template.name, "email.template_version": template.version}):
            rendered = template.render(request.data, brand=self._brand, locale=request.locale,
                                       limits=self.settings.templates.render_limits)
        metrics.RENDER_SECONDS.labels(template.name).observe(time.perf_counter() - started)
        if request.subject:
            rendered = type(rendered)(subject=request.subject, html=rendered.html,
                                      text=rendered.text)
        return (rendered, template.name, template.version, template.source.sender,
                template.source.reply_to, template.source.unsubscribe)

    def report(self, message_id: str, delivered: Delivered) -> None:
        """Log and measure a delivery, once it is recorded as sent."""
        result = delivered.result
        metrics.SEND_SECONDS.labels(self.transport.name).observe(delivered.send_seconds)
        log.info("delivered", extra={"message_id": message_id, "template": delivered.template,
                                     "version": delivered.version, "transport": result.transport,
                                     "response": result.response})
        if result.refused:
            log.warning("some recipients refused", extra={"message_id": message_id,
                                                          "refused": len(result.refused)})


    def _template(self, job: dict[str, Any], request: SendRequest) -> CompiledTemplate:
        """The version the message was accepted with (its pin), whatever serves now; a
        built-in (never pinned) as this worker ships it."""
        key = job.get("template_key")
        if isinstance(key, str) and request.template_version is not None:
            try:
                pinned = self.registry.pinned(Pin(key, request.template_version))
            except (redis.RedisError, OSError) as exc:
                raise TransientDeliveryError(f"the template store is unreachable: {exc}") from None
            if pinned is None:
                raise TemplateError(
                    "UnknownTemplateVersion",
                    f"version {request.template_version} of {key!r} is no longer kept")
            return pinned
        template = self.registry.get(request.template) if request.template else None
        if template is None:
            raise TemplateError("UnknownTemplate", f"no template named {request.template!r}")
        return template


def parse_job(job: Any) -> SendRequest:
    """The job's request, or ``InvalidJobError`` naming what is wrong with the job."""
    if not isinstance(job, dict) or not isinstance(job.get("id"), str) or not job["id"]:
        raise InvalidJobError("invalid job: no message id")
    try:
        return SendRequest.model_validate(job.get("request"), context=ACCEPTED)
    except ValidationError as exc:
        details = "; ".join(f"{d['field']}: {d['message']}" for d in error_details(exc)[:5])
        raise InvalidJobError(f"invalid job: request {details}") from None


def withhold(request: SendRequest, withheld: tuple[str, ...]) -> SendRequest:
    """``request`` without the ``withheld`` recipients (in To, Cc and Bcc)."""
    if not withheld:
        return request
    gone = set(withheld)
    return request.model_copy(update={
        name: [r for r in getattr(request, name) if r.email not in gone]
        for name in ("to", "cc", "bcc")})


def job_template(job: dict[str, Any]) -> str:
    """The template a job names, or "" (for metric labels, before the job is validated)."""
    request = job.get("request")
    template = request.get("template") if isinstance(request, dict) else None
    return template if isinstance(template, str) else ""


def _override(field: str, value: str | None) -> Recipient | None:
    """A template resource's ``from``/``replyTo`` (``"Name <addr>"`` or ``"addr"``)."""
    if not value:
        return None
    try:
        return _recipient(value)
    except ValueError as exc:
        raise InvalidJobError(
            f"the template's {field} {value[:100]!r} is not a usable mailbox: {exc}") from None


# Templates carry few distinct overrides; parse each once, not once per message.
_recipient = functools.lru_cache(maxsize=256)(recipient_from_text)
