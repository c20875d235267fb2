"""``/v1/webhooks``: register, list, change, rotate and delete webhook endpoints, and list the
deliveries given up on.

Creating, changing, rotating and deleting need the admin scope (``ADMIN_SCOPE``); listing and
reading need a valid token. Every caller sees only its own endpoints (those receive the events of
its own messages); endpoints declared in the chart (``WEBHOOKS_ENDPOINTS_FILE``) are listed to
admins, read-only. A secret is shown once: in the answer that created or rotated it.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailcore.config import Settings
from mailcore.timestamps import rfc3339
from mailcore.tokens import Caller
from mailcore.webhook_deadletters import WebhookDeadLetters
from mailcore.webhook_endpoints import (
    Endpoint,
    EndpointChange,
    EndpointSpec,
    WebhookStore,
    load_declared,
    parse,
)

from .auth import authenticate
from .body import read_json_object
from .errors import ApiError, JSONResponse
from .query import bounded_int

#: Largest registration body (a URL, a filter and a description fit in far less).
MAX_BODY_BYTES = 16 * 1024
_ENDPOINT_ID = re.compile(r"ep_[0-9a-f]{32}")
_DEAD_ID = re.compile(r"evt_[0-9a-f]{32}:[A-Za-z0-9_.-]{1,64}")


class WebhookState:
    """What the routes share: the store, the dead letters and the declared endpoints."""

    def __init__(self, settings: Settings, client: Any) -> None:
        self.settings = settings
        self.store = WebhookStore(client, settings.redis.key_prefix)
        self.dead = WebhookDeadLetters(client, settings.redis.key_prefix)
        hooks = settings.webhooks
        self.declared = (load_declared(hooks.endpoints_file, hooks.policy)
                         if hooks.endpoints_file else [])


def _state(request: Request) -> WebhookState:
    state: WebhookState = request.app.state.webhooks
    return state


async def _caller(request: Request, *, admin: bool) -> tuple[WebhookState, Caller]:
    state = _state(request)
    scope = state.settings.auth.admin_scope if admin else None
    return state, await authenticate(request, scope=scope)


async def _own(request: Request, state: WebhookState, caller: Caller) -> Endpoint:
    endpoint_id = request.path_params["id"]
    endpoint = None
    if _ENDPOINT_ID.fullmatch(endpoint_id):
        endpoint = await anyio.to_thread.run_sync(state.store.get, endpoint_id)
    if endpoint is None or endpoint.owner != caller.owner:
        raise ApiError(404, "not_found", "no such webhook endpoint for this caller")
    return endpoint


async def _body(request: Request, state: WebhookState) -> dict[str, Any]:
    return await read_json_object(request, MAX_BODY_BYTES,
                                  state.settings.http.body_timeout_seconds)


async def create_endpoint(request: Request) -> JSONResponse:
    state, caller = await _caller(request, admin=True)
    spec: EndpointSpec = parse(EndpointSpec, await _body(request, state))
    state.settings.webhooks.policy.check_url(spec.url)
    if await anyio.to_thread.run_sync(state.store.count, caller.owner) >= \
            state.settings.webhooks.max_endpoints:
        raise ApiError(409, "too_many_endpoints", "this caller has "
                       f"{state.settings.webhooks.max_endpoints} endpoints already "
                       "(WEBHOOKS_MAX_ENDPOINTS)")
    endpoint, secret = await anyio.to_thread.run_sync(state.store.create, caller.owner, spec)
    return JSONResponse({**endpoint.view(), "secret": secret}, status_code=201)


async def list_endpoints(request: Request) -> JSONResponse:
    state, caller = await _caller(request, admin=False)
    own = await anyio.to_thread.run_sync(state.store.owned, caller.owner)
    declared = [endpoint for endpoint in state.declared
                if state.settings.auth.admin_scope in caller.scopes
                and endpoint.owner in (None, caller.owner)]
    return JSONResponse({"endpoints": [endpoint.view() for endpoint in [*declared, *own]]})


async def get_endpoint(request: Request) -> JSONResponse:
    state, caller = await _caller(request, admin=False)
    return JSONResponse((await _own(request, state, caller)).view())


async def change_endpoint(request: Request) -> JSONResponse:
    state, caller = await _caller(request, admin=True)
    endpoint = await _own(request, state, caller)
    change: EndpointChange = parse(EndpointChange, await _body(request, state))
    if change.url is not None:
        state.settings.webhooks.policy.check_url(change.url)
    updated = await anyio.to_thread.run_sync(state.store.update, endpoint, change)
    return JSONResponse(updated.view())


async def rotate_secret(request: Request) -> JSONResponse:
    """A new secret; the previous one keeps signing for ``WEBHOOKS_ROTATION_OVERLAP_SECONDS``
    (both signatures are sent meanwhile)."""
    state, caller = await _caller(request, admin=True)
    endpoint = await _own(request, state, caller)
    overlap = state.settings.webhooks.rotation_overlap_seconds
    rotated, secret = await anyio.to_thread.run_sync(state.store.rotate, endpoint, overlap)
    expires = [exp for _, exp in rotated.secrets[1:] if exp is not None]
    return JSONResponse({**rotated.view(), "secret": secret,
                         "previous_secret_expires_at": rfc3339(expires[0]) if expires else None})


async def delete_endpoint(request: Request) -> Response:
    state, caller = await _caller(request, admin=True)
    endpoint = await _own(request, state, caller)
    await anyio.to_thread.run_sync(state.store.delete, endpoint)
    return Response(status_code=204)


async def list_dead_letters(request: Request) -> JSONResponse:
    """Deliveries to the caller's endpoints (and, for admins, the declared global ones) that
    were given up on, newest first."""
    state, caller = await _caller(request, admin=True)
    limit = bounded_int(request.query_params.get("limit", "100"), 1, 1000)
    if limit is None:
        raise ApiError(422, "invalid_request", "limit must be an integer from 1 to 1000",
                       details=[{"field": "limit", "message": "1..1000"}])
    own = await anyio.to_thread.run_sync(state.store.owned, caller.owner)
    ids = {endpoint.id for endpoint in own} | {
        endpoint.id for endpoint in state.declared if endpoint.owner in (None, caller.owner)}
    letters = await anyio.to_thread.run_sync(state.dead.list, ids, limit)
    return JSONResponse({"dead_letters": letters})


async def retry_dead_letter(request: Request) -> JSONResponse:
    """Deliver a dead-lettered event to its endpoint again, with a fresh retry schedule."""
    state, caller = await _caller(request, admin=True)
    dead_id = request.path_params["id"]
    record = None
    if _DEAD_ID.fullmatch(dead_id):
        record = await anyio.to_thread.run_sync(state.dead.get, dead_id)
    if record is not None:
        own = await anyio.to_thread.run_sync(state.store.owned, caller.owner)
        allowed = {endpoint.id for endpoint in own} | {
            endpoint.id for endpoint in state.declared if endpoint.owner in (None, caller.owner)}
        if record["endpoint_id"] not in allowed:
            record = None
    if record is None or not await anyio.to_thread.run_sync(
            state.dead.retry, record, state.settings.webhooks.queue_name):
        raise ApiError(404, "not_found", "no such webhook dead letter for this caller")
    return JSONResponse({"id": dead_id, "status": "queued"}, status_code=202)


routes = [
    Route("/v1/webhooks", create_endpoint, methods=["POST"]),
    Route("/v1/webhooks", list_endpoints, methods=["GET"]),
    Route("/v1/webhooks/dead-letters", list_dead_letters, methods=["GET"]),
    Route("/v1/webhooks/dead-letters/{id}/retry", retry_dead_letter, methods=["POST"]),
    Route("/v1/webhooks/{id}", get_endpoint, methods=["GET"]),
    Route("/v1/webhooks/{id}", change_endpoint, methods=["PATCH"]),
    Route("/v1/webhooks/{id}", delete_endpoint, methods=["DELETE"]),
    Route("/v1/webhooks/{id}/rotate-secret", rotate_secret, methods=["POST"]),
]
