"""The domain's rules for a send, checked before anything is queued.

A body is bounded (:mod:`mailcore.jsonlimits`), shaped (:mod:`mailcore.message`), then held
against the service's state: the template exists, ``data`` matches its variables, ``from`` is an
allowed sender. Every refusal is a typed :mod:`mailcore.errors` error; adapters translate.
"""

from __future__ import annotations

from typing import Any, cast

import redis
from pydantic import ValidationError

from .config import Settings
from .content import check_mjml_content
from .errors import (
    AttachmentTooLarge,
    InvalidData,
    InvalidRequest,
    SenderNotAllowed,
    StoreUnavailable,
    UnknownTemplate,
    UnknownTemplateVersion,
)
from .jsonlimits import check_json
from .message import BatchRequest, SendRequest, error_details
from .rendering import TemplateError
from .schedule import due_time
from .streams import STREAM_NAMES, StreamName
from .templates import TemplateRegistry


class Validator:
    """Turns decoded request bodies into checked :class:`SendRequest` objects.

    Parameters:
      settings: the sender allow-list and the service's own sender.
      registry: templates by name (unknown names are refused).
    """

    def __init__(self, settings: Settings, registry: TemplateRegistry) -> None:
        self.settings = settings
        self.registry = registry

    def parse(self, body: dict[str, Any]) -> SendRequest:
        """``POST /v1/messages``: one message."""
        check_json(body)
        request: SendRequest = _model(SendRequest, body)
        self.check(request)
        return request

    def parse_batch(self, body: dict[str, Any]) -> list[SendRequest]:
        """``{"messages": [...]}``: every message valid, or the error naming
        ``messages.N.field``."""
        check_json(body)
        batch: BatchRequest = _model(BatchRequest, body)
        for index, request in enumerate(batch.messages):
            try:
                self.check(request)
            except InvalidRequest as exc:
                raise exc.within(f"messages.{index}") from None
        messages: list[SendRequest] = batch.messages
        return messages

    def check(self, request: SendRequest) -> None:
        """Template exists (at ``template_version`` when named), data matches its variables,
        ``from`` is an allowed sender, attachments within the limits. Pins the request to the
        version it was validated against (``template_version`` and the store key); a message
        with its own content has no template."""
        self.check_attachments(request)
        self.check_schedule(request)
        if request.template is None:
            if request.template_version is not None:
                raise InvalidRequest("template_version: only with a template", details=[
                    {"field": "template_version", "message": "only with a template"}])
            self.check_content(request)
            self.check_sender(request)
            return
        try:
            resolved = self.registry.resolve(request.template, request.template_version)
        except TemplateError as exc:
            raise UnknownTemplateVersion(exc.message, details=[
                {"field": "template_version", "message": "no such kept version"}]) from None
        except (redis.RedisError, OSError):
            raise StoreUnavailable("the template store is unreachable; retry later",
                           retry_after=5) from None
        if resolved is None:
            raise UnknownTemplate(f"no template named {request.template!r}",
                                  details=[{"field": "template", "message": "unknown template"}])
        template = resolved.template
        if request.stream is None and template.source.stream in STREAM_NAMES:
            request.stream = cast(StreamName, template.source.stream)  # the template's default
        if resolved.pin is not None:
            request.template_version = resolved.pin.version
            request._template_key = resolved.pin.key
        try:
            template.validate_data(request.data)
        except TemplateError as exc:
            details = [{"field": f"data.{field}" if field else "data", "message": message}
                       for field, message in exc.violations or [(exc.field or "", exc.message)]]
            raise InvalidData(f"data does not match template {request.template!r}: "
                              f"{exc.message}", details=details) from None
        self.check_sender(request)

    def check_schedule(self, request: SendRequest) -> None:
        """``send_at``: RFC 3339 with an offset, not in the past, within the horizon."""
        if request.send_at is not None:
            schedule = self.settings.schedule
            request._due = due_time(request.send_at, horizon_seconds=schedule.horizon_seconds,
                                    clock_skew_seconds=schedule.clock_skew_seconds)

    def check_sender(self, request: SendRequest) -> None:
        """``from`` uses the sender's domain or an allowed one."""
        if request.sender is not None and not self.settings.sender.domain_allowed(
            request.sender.email
        ):
            raise SenderNotAllowed(
                f"'from' must use the domain of {self.settings.sender.email} "
                "or one in ALLOWED_SENDER_DOMAINS",
                details=[{"field": "from.email", "message": "domain not allowed"}])


    def check_content(self, request: SendRequest) -> None:
        """The caller's own content: each part within RENDER_MAX_BYTES; MJML with an <mjml>
        root, not larger or deeper than the compiler is safe with (it compiles in the worker)."""
        limit = self.settings.templates.render_max_bytes
        for name in ("html", "text", "mjml"):
            value = getattr(request, name)
            if value is not None and len(value) > limit:
                raise InvalidRequest(f"{name}: longer than {limit} characters (RENDER_MAX_BYTES)",
                                     details=[{"field": name, "message": f"at most {limit} "
                                               "characters"}])
        if request.mjml is not None:
            try:
                check_mjml_content(request.mjml)
            except TemplateError as exc:
                raise InvalidRequest(f"mjml: {exc.message}", details=[
                    {"field": "mjml", "message": exc.message}]) from None

    def check_attachments(self, request: SendRequest) -> None:
        """Count (422), each file's and all files' decoded size (413) against the settings."""
        settings, files = self.settings.limits, request.attachments
        if len(files) > settings.attachments_max_count:
            raise InvalidRequest(
                f"attachments: at most {settings.attachments_max_count} files",
                details=[{"field": "attachments",
                          "message": f"at most {settings.attachments_max_count} files"}])
        for index, item in enumerate(files):
            if item.size > settings.attachment_max_bytes:
                message = (f"{item.size} bytes; at most {settings.attachment_max_bytes} "
                           "(ATTACHMENT_MAX_BYTES)")
                raise AttachmentTooLarge(
                    f"attachments.{index}.content: {message}",
                    details=[{"field": f"attachments.{index}.content", "message": message}])
        total = sum(item.size for item in files)
        if total > settings.attachments_max_total_bytes:
            message = (f"{total} bytes together; at most {settings.attachments_max_total_bytes} "
                       "(ATTACHMENTS_MAX_TOTAL_BYTES)")
            raise AttachmentTooLarge(f"attachments: {message}",
                                     details=[{"field": "attachments", "message": message}])


def _model(model: type[SendRequest] | type[BatchRequest], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        details = error_details(exc)
        raise InvalidRequest(summary(details), details=details) from None


def summary(details: list[dict[str, Any]]) -> str:
    """The first problem, and how many more there are."""
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{first['field']}: {first['message']}{more}"
