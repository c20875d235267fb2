"""Reading a JSON request body: a size limit, a time limit, then decoding."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request

from .errors import ApiError
from .query import declared_length


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The raw body: 413 over ``limit`` bytes, 408 when it takes longer than ``timeout``
    seconds to arrive (a client trickling its body cannot hold a connection open)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        length = declared_length(declared)
        if length is None:
            raise ApiError(400, "invalid_request", "Content-Length is not a number")
        if length > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):  # a third cheaper than anyio's cancel scope
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "request_timeout",
                       f"the request body did not arrive within {timeout:g} s",
                       headers={"Connection": "close"}) from None
    return b"".join(chunks)


def decode_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object: 400 when not JSON, 422 when not an object."""
    if not body.strip():
        raise ApiError(400, "malformed_json",
                       "the request body is empty; a JSON object is expected")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json",
                       f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_request", "the request body must be a JSON object",
                       details=[{"field": "body", "message": "must be a JSON object"}])
    return value


async def read_json_object(request: Request, limit: int, timeout: float) -> dict[str, Any]:
    """:func:`read_body`, then :func:`decode_json_object`."""
    return decode_json_object(await read_body(request, limit, timeout))


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body exceeds {limit} bytes")
