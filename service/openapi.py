"""The OpenAPI 3.1 description of every endpoint, built from the same models that validate."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from mailcore.locales import MAX_TAG, check_locale
from mailcore.message import BatchRequest, SendRequest
from mailcore.status import STATUSES

from .legacy import OrderConfirmation, ResetCodeRequest
from .mailtrap_webhook import openapi_paths as mailtrap_openapi_paths
from .suppressions_openapi import MODELS as SUPPRESSION_MODELS
from .suppressions_openapi import suppression_paths
from .webhooks_openapi import MODELS as WEBHOOK_MODELS
from .webhooks_openapi import receiver_webhooks, webhook_paths


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Out):
    field: str
    message: str
    line: int | None = Field(None, description="The line of a JSONL import at fault")


#: Every ``error`` code the API answers with (README: Errors).
ERROR_CODES = (
    "malformed_json", "invalid_idempotency_key", "unauthorized", "insufficient_scope",
    "not_found", "method_not_allowed", "request_timeout", "idempotency_conflict",
    "payload_too_large", "attachment_too_large", "headers_too_large", "invalid_request",
    "unknown_template",
    "invalid_data", "sender_not_allowed", "recipient_not_allowed", "batch_too_large",
    "render_error", "render_timeout",
    "rate_limited", "recipient_rate_limited", "unavailable", "queue_full",
    "unknown_template_version", "store_unavailable", "invalid_import",
    "invalid_send_at", "send_at_out_of_range", "not_cancellable",
    "invalid_webhook_url", "too_many_endpoints",
)


class Error(_Out):
    error: str = Field(description=(
        "Stable machine-readable code: " + ", ".join(ERROR_CODES) + ". `invalid_data`: "
        "`data` does not match the template's variables schema (sending or rendering); "
        "`render_error`: the template fails on data the schema admits (rendering only)."))
    message: str = Field(description="What went wrong, for humans.")
    details: list[ErrorDetail]


class Queued(_Out):
    id: str = Field(description="The message id; also sent as X-Email-Service-Id.")
    status: Literal["queued", "scheduled", "suppressed"] = Field(description=(
        "`scheduled`: the message has `send_at` (README: Scheduled sends); `suppressed`: every "
        "recipient is on the suppression list; recorded, never sent"))
    suppressed_recipients: list[str] | None = Field(
        None, description="With `suppressed`: the recipients on the list")


class Cancelled(_Out):
    id: str
    status: Literal["cancelled"]


class BatchQueued(_Out):
    messages: list[Queued] = Field(description="One entry per message, in the request's order.")


class ResetCodeSent(_Out):
    message: Literal["Password reset code sent successfully"]


class OrderConfirmationSent(_Out):
    status: Literal["success"]
    message: Literal["Order confirmation email sent"]


class Health(_Out):
    status: Literal["healthy"]
    service: Literal["email-service"]


class Ready(BaseModel):
    status: str
    service: Literal["email-service"]
    reason: str | None = None


#: Every timestamp the API answers with: RFC 3339 text in UTC, e.g. 2026-11-30T13:09:19.123Z.
Timestamp = datetime


class TimelineEvent(BaseModel):
    at: Timestamp
    status: str
    detail: str | None = None
    code: str | None = None
    transport: str | None = None
    attempt: str | None = None
    recipient: str | None = Field(None, description="Bounces and complaints: about whom")
    bounce_type: Literal["hard", "soft"] | None = None
    source: Literal["dsn", "mailtrap"] | None = Field(
        None, description="Bounces and complaints: a delivery report received by "
                          "`email-service bounces`, or a Mailtrap webhook event")


class MessageContent(_Out):
    subject: str
    html: str
    text: str


class LastError(_Out):
    code: int | None
    message: str


class MessageStatus(_Out):
    id: str | None
    status: Literal[STATUSES]  # type: ignore[valid-type]
    template: str | None
    template_version: str | None
    transport: str | None
    attempts: int
    recipients: list[str]
    metadata: dict[str, str] = Field(description="The caller's metadata, as sent")
    sandbox: bool = Field(description="Rendered and recorded, never delivered")
    withheld_recipients: list[str] = Field(
        description="Not on RECIPIENT_ALLOWLIST: not sent to")
    redirected_from: list[str] = Field(description="The recipients REDIRECT_ALL_TO replaced")
    suppressed_recipients: list[str] = Field(
        description="On the suppression list (at the door or at send time): not sent to")
    source: str | None
    stream: Literal["transactional", "bulk"] = Field(
        description="The delivery stream (README: Streams)")
    send_at: Timestamp | None = Field(description="When a scheduled message is due")
    last_error: LastError | None
    response: str | None
    bounce_type: Literal["hard", "soft"] | None = Field(
        description="Reported undeliverable after acceptance: `hard` when any recipient "
                    "failed permanently (5.x.x), else `soft` (README: Bounces)")
    bounces: dict[str, Literal["hard", "soft", "complaint"]] = Field(
        description="What was reported per recipient, after the relay accepted the message")
    created_at: Timestamp
    updated_at: Timestamp
    timeline: list[TimelineEvent]


class TemplateInfo(_Out):
    name: str = Field(description="The name to send with; a stored template is listed once, "
                                  "under its bare name when that resolves to it (ns/name also "
                                  "works).")
    version: str
    source: dict[str, Any] | None = Field(
        description='Where it comes from: {"kind": "builtin"} or the EmailTemplate resource '
                    '({"kind", "namespace", "name", …, "updated_at": RFC 3339}).')
    locales: list[str]
    variables: dict[str, Any] | None


class TemplateDetail(TemplateInfo):
    subject: str
    sample_data: dict[str, Any]


class TemplateList(_Out):
    templates: list[TemplateInfo]


class TemplateVersion(_Out):
    version: str = Field(description="The content hash (16 hex digits).")
    serving: bool
    stored_at: str | None = Field(default=None, description="When this version was stored.")
    history_at: str | None = Field(default=None,
                                   description="When it last became the newest.")
    origin: dict[str, Any] = Field(description=(
        'Who/what stored it: {"kind": "EmailTemplate", "namespace", "name", "uid", '
        '"generation", "changeCause"?}, {"kind": "EmailTemplate", "path"} from the dev sync, '
        'or {"kind": "builtin"}.'))


class TemplateVersions(_Out):
    template: str
    key: str | None = Field(default=None, description="The store key (absent: a built-in).")
    serving: str
    versions: list[TemplateVersion] = Field(description="Kept versions, newest first.")


class TemplateVersionDetail(TemplateVersion):
    template: str
    key: str | None
    source: dict[str, Any] = Field(description="subject, mjml/html, text, variables, "
                                               "sample_data, locales, fallback_locale")


class PreviewRequest(_Out):
    data: dict[str, Any] | None = None
    locale: Annotated[str, Field(max_length=MAX_TAG), AfterValidator(check_locale)] | None = None


class Preview(_Out):
    template: str
    version: str
    subject: str
    html: str
    text: str


class DeadLetter(_Out):
    id: str
    redis_id: str
    died_at: Timestamp
    template: str | None
    recipients: list[str]
    status: str | None
    attempts: int
    last_error: LastError | None


class DeadLetterList(_Out):
    dead_letters: list[DeadLetter]


class DeadLetterDetail(DeadLetter):
    status_record: MessageStatus | None
    request: dict[str, Any] | None
    traceback: str | None


class RetryAll(_Out):
    retried: int


class Purged(_Out):
    purged: int


_MODELS: list[type[BaseModel]] = [
    SendRequest, BatchRequest, ResetCodeRequest, OrderConfirmation, Error, Queued, BatchQueued,
    ResetCodeSent,
    OrderConfirmationSent, Health, Ready, MessageStatus, MessageContent, TemplateList,
    TemplateDetail, PreviewRequest, Preview, TemplateVersions, TemplateVersionDetail,
    DeadLetterList, DeadLetterDetail, RetryAll, Purged, Cancelled, *SUPPRESSION_MODELS,
    *WEBHOOK_MODELS,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {400: "Malformed request", 401: "Missing or invalid token",
             403: "Token lacks the required scope", 404: "Not found",
             408: "The body did not arrive in time (HTTP_BODY_TIMEOUT_SECONDS)",
             409: "Idempotency-Key reused with a different body, or a limit reached",
             413: "Body too large",
             422: "Invalid field (details name it)", 429: "Rate limited (see Retry-After)",
             503: "Redis unavailable or queue full (see Retry-After)"}
    return {str(code): _json(Error, texts[code]) for code in codes}


_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
                "description": "Same key + same body within 24 h returns the original answer "
                               "and sends nothing; another body answers 409.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                           "pattern": "^[!-~]+$"}}
_SEND_ERRORS = (400, 401, 403, 408, 409, 413, 422, 429, 503)


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


#: ``?stream=`` of the dead-letter endpoints: each stream's queue has its own dead letters.
_STREAM = {"name": "stream", "in": "query", "required": False,
           "description": "Whose dead letters (README: Streams); default transactional",
           "schema": {"enum": ["transactional", "bulk"], "default": "transactional"}}


def _cancel(operation_id: str) -> dict[str, Any]:
    return {
        "summary": "Cancel a scheduled message (its owner only) while it is still scheduled",
        "operationId": operation_id, "parameters": [_path_param("id")],
        "responses": {"200": _json(Cancelled, "Cancelled: it will never be sent"),
                      "409": _json(Error, "`not_cancellable`: no longer scheduled (dispatched, "
                                          "sent or cancelled already); details[0] (field "
                                          "`status`) gives its current status"),
                      **_errors(401, 403, 404, 503)},
    }


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


@functools.cache
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema([(m, "validation") for m in _MODELS],
                                    ref_template="#/components/schemas/{model}")
    components = schemas.get("$defs", {})
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    paths: dict[str, Any] = {
        "/health": {"get": {"summary": "Liveness", "security": [], "operationId": "health",
                            "responses": {"200": _json(Health, "Alive")}}},
        "/ready": {"get": {"summary": "Readiness (Redis answers)", "security": [],
                           "operationId": "ready",
                           "responses": {"200": _json(Ready, "Ready"),
                                         "503": _json(Ready, "Redis unavailable")}}},
        "/v1/messages": {"post": {
            "summary": "Send a template to one or more recipients", "operationId": "send",
            "parameters": [_IDEMPOTENCY], "requestBody": _body(SendRequest),
            "responses": {"202": _json(Queued, "Accepted and queued (or scheduled)"),
                          **_errors(*_SEND_ERRORS)},
        }},
        "/v1/messages/batch": {"post": {
            "summary": "Send up to 100 messages in one request: all are queued, or none",
            "operationId": "sendBatch",
            "parameters": [_IDEMPOTENCY], "requestBody": _body(BatchRequest),
            "responses": {"202": _json(BatchQueued, "All accepted and queued"),
                          **_errors(*_SEND_ERRORS)},
        }},
        "/v1/messages/{id}": {"get": {
            "summary": "Status and timeline of a message sent under the caller's subject",
            "operationId": "getMessage", "parameters": [_path_param("id")],
            "responses": {"200": _json(MessageStatus, "The status"), **_errors(401, 404)},
        }, "delete": _cancel("cancelMessage")},
        "/v1/messages/{id}/cancel": {"post": _cancel("cancelMessagePost")},
        "/v1/messages/{id}/content": {"get": {
            "summary": "What a sandboxed message would have been (sandboxed messages only)",
            "operationId": "getMessageContent", "parameters": [_path_param("id")],
            "responses": {"200": _json(MessageContent, "Subject, html and text"),
                          **_errors(401, 404)},
        }},
        "/v1/templates": {"get": {
            "summary": "Templates and their versions", "operationId": "listTemplates",
            "responses": {"200": _json(TemplateList, "Templates"), **_errors(401)},
        }},
        "/v1/templates/{name}": {"get": {
            "summary": "One template: version, source, variables, subject, sample data",
            "operationId": "getTemplate", "parameters": [_path_param("name")],
            "responses": {"200": _json(TemplateDetail, "The template"), **_errors(401, 404)},
        }},
        "/v1/templates/{name}/render": {"post": {
            "summary": "Render a template for given data and locale without sending",
            "operationId": "renderTemplate",
            "parameters": [_path_param("name")], "requestBody": _body(PreviewRequest),
            "responses": {"200": _json(Preview, "Rendered"),
                          **_errors(400, 401, 404, 408, 413, 422)},
        }},
        "/v1/templates/{name}/versions": {"get": {
            "summary": "The kept versions of a template, newest first, with who stored each",
            "operationId": "listTemplateVersions", "parameters": [_path_param("name")],
            "responses": {"200": _json(TemplateVersions, "Versions"), **_errors(401, 404)},
        }},
        "/v1/templates/{name}/versions/{version}": {"get": {
            "summary": "One kept version of a template, with its source",
            "operationId": "getTemplateVersion",
            "parameters": [_path_param("name"), _path_param("version")],
            "responses": {"200": _json(TemplateVersionDetail, "The version"),
                          **_errors(401, 404)},
        }},
        "/v1/dead-letters": {
            "get": {"summary": "List dead letters (admin scope)", "operationId": "listDead",
                    "parameters": [{"name": "limit", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 1,
                                               "maximum": 1000}}, _STREAM],
                    "responses": {"200": _json(DeadLetterList, "Dead letters"),
                                  **_errors(401, 403, 422)}},
            "delete": {"summary": "Purge dead letters (admin scope)", "operationId": "purgeDead",
                       "parameters": [_STREAM], "responses": {"200": _json(Purged, "Purged"),
                                                              **_errors(401, 403, 422)}},
        },
        "/v1/dead-letters/retry": {"post": {
            "summary": "Retry every dead letter (admin scope)", "operationId": "retryAllDead",
            "description": "Each is queued again as by `POST /v1/dead-letters/{id}/retry` "
                           "(with its `message.queued` event when `WEBHOOKS_ENABLED`).",
            "parameters": [_STREAM], "responses": {"202": _json(RetryAll, "Requeued"),
                                                   **_errors(401, 403, 422)},
        }},
        "/v1/dead-letters/{id}": {"get": {
            "summary": "A dead letter with its history (admin scope)", "operationId": "showDead",
            "parameters": [_path_param("id"), _STREAM],
            "responses": {"200": _json(DeadLetterDetail, "The dead letter"),
                          **_errors(401, 403, 404, 422)},
        }},
        "/v1/dead-letters/{id}/retry": {"post": {
            "summary": "Retry one dead letter, keeping its id (admin scope)",
            "description": "Queued again under the same id, its timeline kept; with "
                           "`WEBHOOKS_ENABLED`, a `message.queued` webhook event (`detail`: "
                           "`retried from the dead-letter queue`) is written in the same step.",
            "operationId": "retryDead", "parameters": [_path_param("id"), _STREAM],
            "responses": {"202": _json(Queued, "Requeued"), **_errors(401, 403, 404, 422)},
        }},
        "/email-service/send-reset-code": {"post": {
            "summary": "Original contract: send a password-reset code",
            "operationId": "sendResetCode", "parameters": [_IDEMPOTENCY],
            "requestBody": _body(ResetCodeRequest),
            "responses": {"200": _json(ResetCodeSent, "Queued"), **_errors(*_SEND_ERRORS)},
        }},
        "/api/order-confirmation": {"post": {
            "summary": "Original contract: send an order confirmation",
            "operationId": "orderConfirmation", "parameters": [_IDEMPOTENCY],
            "requestBody": _body(OrderConfirmation),
            "responses": {"200": _json(OrderConfirmationSent, "Queued"),
                          **_errors(*_SEND_ERRORS)},
        }},
        **webhook_paths(_json, _errors, _body, _path_param),
        **mailtrap_openapi_paths(_errors(400, 401, 404, 408, 413, 503)),
    }
    paths.update(suppression_paths(_json, _errors, _ref))
    return {
        "openapi": "3.1.0",
        "info": {"title": "email-service", "version": "1",
                 "description": "Transactional email: authenticated sends, queued delivery."},
        "paths": paths,
        "webhooks": receiver_webhooks(_body),
        "security": secured,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
        },
    }
