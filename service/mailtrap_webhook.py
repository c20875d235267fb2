"""``POST /v1/webhooks/mailtrap``: Mailtrap's webhook events (bounces, spam complaints).

Enabled by ``MAILTRAP_WEBHOOK_SECRET`` (404 otherwise). Each request's ``Mailtrap-Signature``
must be the HMAC of its raw body under that secret (401 otherwise, before the body is parsed);
bounces and complaints of messages of ours (``custom_variables.email_service_id``) to one of
their recipients are recorded as DSNs are (:func:`mailcore.bounce_record.record`). Everything else
is acknowledged and counted, so Mailtrap does not retry it; Redis unreachable answers 503, which
Mailtrap retries.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter
from starlette.requests import Request
from starlette.routing import Route

from mailcore.bounce_record import RECORDED, Recording, record
from mailcore.config import Settings
from mailcore.mailtrap_events import (
    SIGNATURE_HEADER,
    MalformedEvents,
    parse_events,
    verify_signature,
)

from .body import read_body
from .errors import ApiError, JSONResponse

PATH = "/v1/webhooks/mailtrap"


def mailtrap_routes(settings: Settings, registry: CollectorRegistry) -> list[Route]:
    """The endpoint, with its counter ``email_mailtrap_events_total{event,outcome}`` in the
    ingress's registry."""
    events = Counter("email_mailtrap_events", "Mailtrap webhook events, by event and outcome",
                     ["event", "outcome"], registry=registry)
    secret = settings.bounces.mailtrap_webhook_secret

    async def receive(request: Request) -> JSONResponse:
        if not secret:
            raise ApiError(404, "not_found", "Mailtrap webhooks are not enabled "
                                             "(MAILTRAP_WEBHOOK_SECRET)")
        body = await read_body(request, settings.http.max_body_bytes,
                               settings.http.body_timeout_seconds)
        if not verify_signature(secret, body, request.headers.get(SIGNATURE_HEADER)):
            events.labels("-", "bad_signature").inc()
            raise ApiError(401, "unauthorized", f"missing or invalid {SIGNATURE_HEADER}")
        try:
            parsed = parse_events(body)
        except MalformedEvents as exc:
            events.labels("-", "malformed").inc()
            raise ApiError(400, "malformed_json", str(exc)) from None
        recording = Recording(request.app.state.redis, settings.redis.key_prefix,
                              settings.limits.status_retention_seconds,
                              emit_events=settings.webhooks.enabled)
        recorded = 0
        for item in parsed:
            label = item.name if item.name in _KNOWN else "other"
            if item.report is None or item.message_id is None:
                events.labels(label, "ignored").inc()
                continue
            outcome = await record(recording, item.message_id, item.report, source="mailtrap")
            events.labels(label, outcome).inc()
            recorded += outcome == RECORDED
        return JSONResponse({"received": len(parsed), "recorded": recorded})

    return [Route(PATH, receive, methods=["POST"])]


#: Event names used as metric labels (anything else is ``other``: bounded cardinality).
_KNOWN = frozenset({"delivery", "bounce", "soft bounce", "spam", "unsubscribe", "open", "click",
                    "suspension", "reject", "invalid"})


def openapi_paths(errors: dict[str, Any]) -> dict[str, Any]:
    """The endpoint in the OpenAPI document (``errors``: the shared error answers)."""
    event = {"type": "object", "required": ["event"], "properties": {
        "event": {"type": "string", "description": "`bounce`, `soft bounce` and `spam` are "
                  "recorded; `delivery`, `open`, `click`, `unsubscribe`, `suspension`, "
                  "`reject` are acknowledged and counted"},
        "email": {"type": "string", "description": "The recipient"},
        "message_id": {"type": "string", "description": "Mailtrap's own id"},
        "event_id": {"type": "string"}, "timestamp": {"type": "integer"},
        "custom_variables": {"type": "object", "description": "`email_service_id`: ours, as "
                             "the Mailtrap transport sent it"},
        "response": {"type": "string"}, "response_code": {"type": "integer"},
        "bounce_category": {"type": "string"}}}
    return {PATH: {"post": {
        "summary": "Mailtrap's webhook events: bounces and spam complaints of messages sent "
                   "through Mailtrap (enabled by MAILTRAP_WEBHOOK_SECRET)",
        "operationId": "mailtrapEvents", "security": [],
        "parameters": [{"name": SIGNATURE_HEADER, "in": "header", "required": True,
                        "description": "Lower-case hex HMAC-SHA256 of the raw body under the "
                                       "webhook's signing secret", "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"type": "object", "required": ["events"],
                                            "properties": {"events": {
                                                "type": "array", "items": event}}}},
            "application/jsonl": {"schema": {"type": "string",
                                             "description": "One event object per line"}}}},
        "responses": {"200": {"description": "Read: how many events, and how many recorded",
                              "content": {"application/json": {"schema": {
                                  "type": "object", "required": ["received", "recorded"],
                                  "additionalProperties": False,
                                  "properties": {"received": {"type": "integer"},
                                                 "recorded": {"type": "integer"}}}}}},
                      **errors},
    }}}
