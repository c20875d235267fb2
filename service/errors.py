"""JSON errors: ``{"error": <code>, "message": <human text>, "details": [...]}``, and the one
table that maps the domain's errors (:mod:`mailcore.errors`) to HTTP statuses."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from mailcore.errors import (
    AttachmentTooLarge,
    EmailServiceError,
    IdempotencyConflict,
    InvalidIdempotencyKey,
    InvalidRequest,
    NotCancellable,
    QueueFull,
    RateLimited,
    RecipientRateLimited,
    TryLater,
    Unauthenticated,
)
from mailcore.ratelimit import retry_after


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


#: HTTP status of each domain error, most specific class first (the first match wins).
#: ``InvalidRequest`` answers 422 on the native API; the reset-code contract answers 400.
HTTP_STATUS: tuple[tuple[type[EmailServiceError], int], ...] = (
    (InvalidIdempotencyKey, 400),
    (AttachmentTooLarge, 413),
    (InvalidRequest, 422),
    (Unauthenticated, 401),
    (IdempotencyConflict, 409),
    (NotCancellable, 409),
    (RateLimited, 429),
    (RecipientRateLimited, 429),
    (QueueFull, 503),
    (TryLater, 503),
)


def http_error(exc: EmailServiceError, *, invalid_status: int = 422) -> ApiError:
    """The answer for a domain error; ``invalid_status`` for requests of the wrong shape."""
    status = 500
    for kind, mapped in HTTP_STATUS:
        if isinstance(exc, kind):
            status = mapped
            break
    if invalid_status != 422 and isinstance(exc, InvalidRequest):
        # The reset-code contract answers every refusal of a request's shape alike.
        status = invalid_status
    headers = {"Retry-After": retry_after(exc.retry_after)} if isinstance(exc, TryLater) else {}
    return ApiError(status, exc.code, exc.message, details=exc.details, headers=headers)


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        {"error": exc.code, "message": exc.message, "details": exc.details},
        status_code=exc.status,
        headers=exc.headers,
    )


#: Codes of the statuses Starlette raises as ``HTTPException`` (routing, request parsing).
_HTTP_EXCEPTION_CODES = {
    400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 413: "payload_too_large", 431: "headers_too_large",
}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals, each answered with its real status as a JSON error."""
    status = int(getattr(exc, "status_code", 500))
    if status == 404:
        message = f"no route for {request.url.path}"
    elif status == 405:
        message = f"{request.method} is not allowed here"
    else:
        message = str(getattr(exc, "detail", "")) or "the request was refused"
    headers = dict(getattr(exc, "headers", None) or {})
    code = _HTTP_EXCEPTION_CODES.get(status, "invalid_request" if status < 500 else "error")
    return error_response(ApiError(status, code, message, headers=headers))
