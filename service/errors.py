"""JSON errors: ``{"error": <code>, "message": <human text>, "details": [...]}``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    """An error answer.

    Parameters:
      status: the HTTP status code.
      code: a stable machine-readable code (``invalid_request``, ``unauthorized`` ...).
      message: a human sentence.
      details: per-field problems, ``[{"field", "message"}]``.
      headers: extra response headers (``WWW-Authenticate``, ``Retry-After``).
    """

    def __init__(
        self, status: int, code: str, message: str, *,
        details: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        {"error": exc.code, "message": exc.message, "details": exc.details},
        status_code=exc.status,
        headers=exc.headers,
    )


async def handle_not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return error_response(
            ApiError(405, "method_not_allowed", f"{request.method} is not allowed here")
        )
    return error_response(ApiError(404, "not_found", f"no route for {request.url.path}"))
