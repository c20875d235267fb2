"""Bearer-token authentication for every endpoint except the probes."""

from __future__ import annotations

from starlette.requests import Request

from mailcore.telemetry import detail_span
from mailcore.tokens import AuthError, Caller, TokenVerifier

from .errors import ApiError


async def authenticate(request: Request, *, scope: str | None = None) -> Caller:
    """The verified caller: 401 with ``WWW-Authenticate`` when not authenticated, 403 when the
    token lacks ``scope``."""
    verifier: TokenVerifier = request.app.state.verifier
    try:
        with detail_span("authenticate"):
            caller = await verifier.verify(request.headers.get("authorization"))
    except AuthError as exc:
        challenge = 'Bearer realm="email-service"'
        if request.headers.get("authorization"):
            challenge += f', error="invalid_token", error_description="{exc}"'
        raise ApiError(401, "unauthorized", str(exc), headers={"WWW-Authenticate": challenge}
                       ) from None
    if scope and scope not in caller.scopes:
        raise ApiError(403, "insufficient_scope", f"the token lacks the {scope!r} scope",
                       headers={"WWW-Authenticate": f'Bearer realm="email-service", '
                                                    f'error="insufficient_scope", scope="{scope}"'})
    return caller
