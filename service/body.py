"""Reading a JSON request body with a size limit."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from .errors import ApiError


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object.

    413 over ``limit`` bytes, 400 when not JSON, 422 when not an object.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
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


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body exceeds {limit} bytes")
