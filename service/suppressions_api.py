"""The suppression list API: ``/v1/suppressions`` (README: Suppressions and unsubscribe).

Reads (list, get, export) need an authenticated caller; changes (add, delete, import) need the
admin scope, like the dead-letter routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from mailcore.config import Settings
from mailcore.suppression_io import JsonlImport, entry_from_json, entry_view, export_line
from mailcore.suppressions import (
    GLOBAL,
    MAX_PAGE,
    SuppressionList,
    SyncSuppressionList,
    add_to,
    suppression_address,
    validate_scope,
)

from .auth import authenticate
from .body import read_json_object
from .errors import ApiError, JSONResponse
from .offload import OFFLOAD_BYTES, off_loop
from .query import bounded_int, declared_length

#: Seconds an import body may take to arrive.
IMPORT_TIMEOUT = 60.0
#: Largest body of a single add (room for a too-long address to be refused as such, 422).
ADD_MAX_BYTES = 65536


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.send_service.settings
    return settings


def _store(request: Request) -> SuppressionList:
    settings = _settings(request)
    return SuppressionList(request.app.state.redis, settings.redis.key_prefix)


async def _admin(request: Request) -> None:
    await authenticate(request, scope=_settings(request).auth.admin_scope)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{field}: {message}",
                    details=[{"field": field, "message": message}])


def _filters(request: Request) -> tuple[str | None, str | None]:
    # Present means given: an empty value is refused like any other bad one.
    reason = request.query_params.get("reason")
    scope = request.query_params.get("scope")
    if reason is not None and reason not in ("hard_bounce", "complaint", "unsubscribe",
                                             "manual"):
        raise _invalid("reason", "one of hard_bounce, complaint, unsubscribe, manual")
    if scope is not None:
        try:
            validate_scope(scope)
        except ValueError as exc:
            raise _invalid("scope", str(exc)) from None
    return reason, scope


def _address_scope(request: Request) -> tuple[str, str]:
    scope = request.query_params.get("scope", GLOBAL)
    try:
        validate_scope(scope)
    except ValueError as exc:
        raise _invalid("scope", str(exc)) from None
    try:
        address = suppression_address(request.path_params["address"])
    except ValueError as exc:
        raise ApiError(404, "not_found", "no such suppression", details=[
            {"field": "address", "message": str(exc)}]) from None
    return address, scope


async def list_suppressions(request: Request) -> Response:
    await authenticate(request)
    reason, scope = _filters(request)
    limit = bounded_int(request.query_params.get("limit", "100"), 1, MAX_PAGE)
    if limit is None:
        raise _invalid("limit", f"an integer from 1 to {MAX_PAGE}")
    try:
        entries, cursor = await _store(request).page(
            request.query_params.get("cursor"), limit, reason=reason, scope=scope)
    except ValueError as exc:
        raise _invalid("cursor", str(exc)) from None
    return JSONResponse({"suppressions": [entry_view(e) for e in entries],
                         "next_cursor": cursor})


async def get_suppression(request: Request) -> Response:
    await authenticate(request)
    address, scope = _address_scope(request)
    entry = await _store(request).get(address, scope)
    if entry is None:
        raise ApiError(404, "not_found", "no such suppression")
    return JSONResponse(entry_view(entry))


async def add_suppression(request: Request) -> Response:
    await _admin(request)
    settings = _settings(request)
    body = await read_json_object(request, ADD_MAX_BYTES, settings.http.body_timeout_seconds)
    try:
        entry = entry_from_json(body)
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        raise ApiError(422, "invalid_request", str(exc), details=[
            {"field": field if message else "body", "message": message or str(exc)}]) from None
    await _store(request).add(entry)
    return JSONResponse(entry_view(entry), status_code=201)


async def delete_suppression(request: Request) -> Response:
    await _admin(request)
    address, scope = _address_scope(request)
    if not await _store(request).remove(address, scope):
        raise ApiError(404, "not_found", "no such suppression")
    return Response(status_code=204)


async def import_suppressions(request: Request) -> Response:
    """JSONL in, validated whole, then written in one transaction (all or nothing)."""
    await _admin(request)
    settings = _settings(request).suppressions
    declared = request.headers.get("content-length")
    length = None if declared is None else declared_length(declared)
    if declared is not None and length is None:
        raise ApiError(400, "invalid_request", "Content-Length is not a number")
    if length is not None and length > settings.import_max_bytes:
        raise _too_large(settings.import_max_bytes)
    reader = JsonlImport(max_lines=settings.import_max_lines)
    size = 0
    pending = bytearray()
    try:
        async with asyncio.timeout(IMPORT_TIMEOUT):
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.import_max_bytes:
                    raise _too_large(settings.import_max_bytes)
                pending += chunk
                if len(pending) >= OFFLOAD_BYTES:  # validating lines is CPU: off the loop
                    await off_loop(partial(reader.feed, bytes(pending)))
                    pending.clear()
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the import did not arrive within "
                       f"{IMPORT_TIMEOUT:g} s", headers={"Connection": "close"}) from None
    reader.feed(bytes(pending))
    reader.close()
    if size == 0:
        raise ApiError(400, "invalid_request", "the import body is empty; JSONL is expected")
    if reader.too_many:
        raise ApiError(413, "payload_too_large", f"more than {settings.import_max_lines} "
                       "entries; split the import (SUPPRESSION_IMPORT_MAX_LINES)")
    if reader.bad_lines:
        raise ApiError(
            422, "invalid_import",
            f"{reader.bad_lines} invalid line(s); nothing was imported",
            details=[{"field": f"line {line}", "line": line, "message": message}
                     for line, message in reader.errors])
    if reader.entries:
        store = SyncSuppressionList(request.app.state.admin_redis,
                                    _settings(request).redis.key_prefix)

        def write() -> None:  # one transaction; packing its commands is CPU: off the loop
            with store.client.pipeline(transaction=True) as pipe:
                for entry in reader.entries:
                    add_to(pipe, store.prefix, entry)
                pipe.execute()

        await off_loop(write)
    return JSONResponse({"imported": len(reader.entries)})


async def export_suppressions(request: Request) -> Response:
    """Every entry in force as JSONL, streamed page by page."""
    await authenticate(request)
    reason, scope = _filters(request)
    store = _store(request)

    async def lines() -> AsyncIterator[bytes]:
        batch: list[bytes] = []
        async for entry in store.iterate(reason=reason, scope=scope):
            batch.append(export_line(entry))
            if len(batch) >= 500:
                yield b"".join(batch)
                batch = []
        if batch:
            yield b"".join(batch)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the import exceeds {limit} bytes "
                    "(SUPPRESSION_IMPORT_MAX_BYTES)")


def suppression_routes() -> list[Any]:
    # The fixed paths first: {address:path} would match them too.
    return [
        Route("/v1/suppressions/import", import_suppressions, methods=["POST"]),
        Route("/v1/suppressions/export", export_suppressions, methods=["GET"]),
        Route("/v1/suppressions", list_suppressions, methods=["GET"]),
        Route("/v1/suppressions", add_suppression, methods=["POST"]),
        Route("/v1/suppressions/{address:path}", get_suppression, methods=["GET"]),
        Route("/v1/suppressions/{address:path}", delete_suppression, methods=["DELETE"]),
    ]
