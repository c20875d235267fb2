"""The OpenAPI description of ``/v1/webhooks`` and of the webhooks themselves (OpenAPI 3.1's
``webhooks``: what a receiver is sent), merged into ``service.openapi``'s document."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mailcore.webhook_endpoints import EndpointChange, EndpointSpec, EventType


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookSecret(_Out):
    expires_at: datetime | None = Field(description="When a rotated-out secret stops signing; "
                                                    "null: the current secret.")


class WebhookEndpoint(_Out):
    id: str
    url: str
    events: list[EventType]
    description: str
    enabled: bool
    source: str = Field(description="`api`, or `config` for the chart's endpoints (read-only).")
    global_: bool = Field(alias="global", description="Receives every owner's events (declared "
                                                       "in the chart only).")
    created_at: datetime
    updated_at: datetime
    secrets: list[WebhookSecret] = Field(description="The valid secrets (never their values).")


class WebhookEndpointCreated(WebhookEndpoint):
    secret: str = Field(description="`whsec_...`: shown this once.")


class WebhookSecretRotated(WebhookEndpointCreated):
    previous_secret_expires_at: datetime | None


class WebhookEndpointList(_Out):
    endpoints: list[WebhookEndpoint]


class WebhookEvent(BaseModel):
    """A lifecycle event: the ``data`` of a webhook, and of a dead letter's ``event``."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="`evt_...`, also the `webhook-id` header: the same on every "
                                "delivery of this event (drop duplicates by it).")
    type: str = Field(description="`message.<event>`: message.queued, message.sent, "
                                  "message.failed, message.dead, message.bounced, "
                                  "message.complained, message.suppressed, "
                                  "message.unsubscribed, message.cancelled, message.scheduled.")
    timestamp: datetime = Field(description="When it happened.")
    message_id: str | None
    owner: str | None = None
    template: str | None = None
    recipients: list[str] | None = None
    recipient: str | None = None
    metadata: dict[str, str] | None = Field(None, description="The sender's metadata.")
    detail: str | None = None
    transport: str | None = None


class WebhookPayload(_Out):
    type: str
    timestamp: datetime
    data: WebhookEvent


class WebhookDeadLetter(_Out):
    id: str = Field(description="`<event id>:<endpoint id>`.")
    endpoint_id: str
    owner: str | None
    event: WebhookEvent
    attempts: int
    last_error: str
    first_attempt_at: datetime
    dead_at: datetime


class WebhookDeadLetterList(_Out):
    dead_letters: list[WebhookDeadLetter]


class WebhookRequeued(_Out):
    id: str
    status: str = Field(description="`queued`: delivered again with a fresh retry schedule.")


MODELS: list[type[BaseModel]] = [
    EndpointSpec, EndpointChange, WebhookEndpoint, WebhookEndpointCreated, WebhookSecretRotated,
    WebhookEndpointList, WebhookPayload, WebhookDeadLetterList, WebhookRequeued,
]

Helper = Callable[..., dict[str, Any]]


def webhook_paths(json: Helper, errors: Helper, body: Helper, path_param: Helper
                  ) -> dict[str, Any]:
    """The ``/v1/webhooks`` paths, built with the main document's helpers."""
    one = [path_param("id")]
    return {
        "/v1/webhooks": {
            "post": {"summary": "Register a webhook endpoint for the caller's messages (admin "
                                "scope); the answer holds its secret, shown once",
                     "operationId": "createWebhook", "requestBody": body(EndpointSpec),
                     "responses": {"201": json(WebhookEndpointCreated, "Registered"),
                                   **errors(400, 401, 403, 408, 409, 413, 422)}},
            "get": {"summary": "The caller's webhook endpoints (and, for admins, the chart's)",
                    "operationId": "listWebhooks",
                    "responses": {"200": json(WebhookEndpointList, "Endpoints"),
                                  **errors(401)}},
        },
        "/v1/webhooks/dead-letters": {"get": {
            "summary": "Deliveries to the caller's endpoints given up on, newest first (admin "
                       "scope)", "operationId": "listWebhookDeadLetters",
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
            "responses": {"200": json(WebhookDeadLetterList, "Dead letters"),
                          **errors(401, 403, 422)}}},
        "/v1/webhooks/dead-letters/{id}/retry": {"post": {
            "summary": "Deliver a dead-lettered event to its endpoint again (admin scope)",
            "operationId": "retryWebhookDeadLetter", "parameters": one,
            "responses": {"202": json(WebhookRequeued, "Queued again"),
                          **errors(401, 403, 404)}}},
        "/v1/webhooks/{id}": {
            "get": {"summary": "One of the caller's endpoints", "operationId": "getWebhook",
                    "parameters": one,
                    "responses": {"200": json(WebhookEndpoint, "The endpoint"),
                                  **errors(401, 404)}},
            "patch": {"summary": "Change an endpoint's URL, events, description or enabled "
                                 "(admin scope)", "operationId": "changeWebhook",
                      "parameters": one, "requestBody": body(EndpointChange),
                      "responses": {"200": json(WebhookEndpoint, "Changed"),
                                    **errors(400, 401, 403, 404, 408, 413, 422)}},
            "delete": {"summary": "Delete an endpoint; its pending deliveries are dropped "
                                  "(admin scope)", "operationId": "deleteWebhook",
                       "parameters": one,
                       "responses": {"204": {"description": "Deleted"},
                                     **errors(401, 403, 404)}},
        },
        "/v1/webhooks/{id}/rotate-secret": {"post": {
            "summary": "A new secret; the previous one keeps signing for "
                       "WEBHOOKS_ROTATION_OVERLAP_SECONDS (admin scope)",
            "operationId": "rotateWebhookSecret", "parameters": one,
            "responses": {"200": json(WebhookSecretRotated, "Rotated"),
                          **errors(401, 403, 404)}}},
    }


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": True, "description": description,
            "schema": {"type": "string"}}


def receiver_webhooks(body: Helper) -> dict[str, Any]:
    """OpenAPI 3.1 ``webhooks``: the POST a receiver gets (Standard Webhooks)."""
    return {"lifecycleEvent": {"post": {
        "summary": "A message lifecycle event, signed per Standard Webhooks; answer 2xx "
                   "within WEBHOOKS_READ_TIMEOUT, anything else is retried",
        "operationId": "lifecycleEvent",
        "parameters": [
            _header("webhook-id", "The event id: the same on retries and duplicates."),
            _header("webhook-timestamp", "Seconds since the epoch, of this attempt."),
            _header("webhook-signature", "`v1,<base64 HMAC-SHA256>` of "
                    "`<webhook-id>.<webhook-timestamp>.<body>` per valid secret, "
                    "space-separated (two during a rotation)."),
        ],
        "requestBody": body(WebhookPayload),
        "responses": {"200": {"description": "Accepted (any 2xx)"}},
    }}}
