"""Scheduled sends and streams at the door: the accept entry of a message (its stream's queue,
``scheduled`` with its due time when it has ``send_at``), and cancelling a scheduled message
(``DELETE /v1/messages/{id}``, ``POST /v1/messages/{id}/cancel``). The rules are in
:mod:`mailcore.schedule` and :mod:`mailcore.streams`."""

from __future__ import annotations

import re
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.routing import Route

from mailcore.config import Settings
from mailcore.errors import EmailServiceError, NotCancellable, StoreUnavailable
from mailcore.lifecycle import SCHEDULED as SCHEDULED_EVENT
from mailcore.lifecycle import lifecycle_event
from mailcore.message import SendRequest
from mailcore.owners import owns
from mailcore.queue import Entry
from mailcore.schedule import cancel
from mailcore.status import CANCELLED, QUEUED, SCHEDULED, event, status_key
from mailcore.streams import TRANSACTIONAL, stream_of
from mailcore.timestamps import rfc3339

from .auth import authenticate
from .errors import ApiError, JSONResponse, http_error
from .suppression_door import door_fields

_MESSAGE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def accept_entry(job: dict[str, Any], fields: dict[str, str], request: SendRequest,
                 settings: Settings) -> Entry:
    """The accept step's entry for ``request``: on its stream's queue, or in the schedule, its
    recipients checked against the suppression list (service/suppression_door.py)."""
    stream = stream_of(request.stream, job["source"])
    fields["stream"] = stream
    # The job names the stream it travels on (send-time suppression reads it there).
    if stream != TRANSACTIONAL:
        job["request"]["stream"] = stream
    else:
        job["request"].pop("stream", None)
    queue = settings.queues[stream]
    due = request._due
    if due is None:
        return Entry(job, fields, event(QUEUED, f"accepted via {job['source']}"),
                     suppression_fields=door_fields(job), queue_name=queue)
    fields["status"] = SCHEDULED
    fields["send_at"] = str(due)
    # Like ``queued``, announced only when webhooks are on (no per-message cost otherwise).
    announced = lifecycle_event(
        SCHEDULED_EVENT, job["id"], owner=fields["owner"], template=fields["template"],
        stream=stream, send_at=rfc3339(due)) if settings.webhooks.enabled else b""
    return Entry(job, fields, event(SCHEDULED, f"accepted via {job['source']}; due at "
                                               f"{rfc3339(due)}"),
                 announced,
                 suppression_fields=door_fields(job), queue_name=queue, due=due)


async def cancel_message(request: Request) -> JSONResponse:
    """Cancel a scheduled message (its owner only): ``200 {"id", "status": "cancelled"}``,
    ``409 not_cancellable`` with the current ``status`` when dispatch (or a cancel) came first."""
    service = request.app.state.send_service
    settings: Settings = service.settings
    caller = await authenticate(request, scope=settings.auth.required_scope)
    message_id = request.path_params["id"]
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ApiError(404, "not_found", "no such message for this caller")
    prefix = settings.redis.key_prefix
    try:
        owner, template, stream = await service.client.hmget(
            status_key(prefix, message_id), ["owner", "template", "stream"])
        stored = owner.decode("utf-8", "replace") if owner else ""
        if not owner or not owns(stored, caller.owner, caller.subject):
            raise ApiError(404, "not_found", f"no message {message_id!r} for this caller")
        await cancel(service.client, prefix, message_id, owner=stored,
                     template=template.decode() if template else None,
                     stream=stream.decode() if stream else None,
                     retention_seconds=settings.limits.status_retention_seconds,
                     emit_events=settings.webhooks.enabled)
    except LookupError:
        raise ApiError(404, "not_found", f"no message {message_id!r} for this caller") from None
    except NotCancellable as exc:
        raise http_error(exc) from None
    except (RedisError, OSError):
        error: EmailServiceError = StoreUnavailable("Redis is unreachable; retry later",
                                                    retry_after=5)
        raise http_error(error) from None
    return JSONResponse({"id": message_id, "status": CANCELLED})


routes = [
    Route("/v1/messages/{id}", cancel_message, methods=["DELETE"]),
    Route("/v1/messages/{id}/cancel", cancel_message, methods=["POST"]),
]
