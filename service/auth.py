"""Bearer-token authentication for every endpoint except the probes."""

from __future__ import annotations

import re

from starlette.requests import Request

from mailcore.telemetry import detail_span
from mailcore.tokens import AuthError, Caller, TokenVerifier

from .errors import ApiError

#: What RFC 6750 allows inside error_description (no quote, no backslash, ASCII only).
_NOT_DESCRIPTION = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


def challenge(error: str | None = None, description: str = "", **params: str) -> str:
    """A ``WWW-Authenticate: Bearer`` challenge (RFC 6750) that is always a well-formed header:
    the description keeps only the characters the RFC allows."""
    parts = ['Bearer realm="email-service"']
    if error:
        parts.append(f'error="{error}"')
        if description:
            parts.append(f'error_description="{_NOT_DESCRIPTION.sub("", description)[:200]}"')
    parts += [f'{name}="{_NOT_DESCRIPTION.sub("", value)}"' for name, value in params.items()]
    return ", ".join(parts)


async def authenticate(request: Request, *, scope: str | None = None) -> Caller:
    """The verified caller: 401 with ``WWW-Authenticate`` when not authenticated, 403 when the
    token lacks ``scope``."""
    verifier: TokenVerifier = request.app.state.verifier
    authorization = request.headers.get("authorization")
    try:
        with detail_span("authenticate"):
            caller = await verifier.verify(authorization)
    except AuthError as exc:
        # The challenge says only that the token was refused; the JSON body says why.
        header = (challenge("invalid_token", "the access token was refused") if authorization
                  else challenge())
        raise ApiError(401, exc.code, exc.message, headers={"WWW-Authenticate": header}
                       ) from None
    if scope and scope not in caller.scopes:
        raise ApiError(403, "insufficient_scope", f"the token lacks the {scope!r} scope",
                       headers={"WWW-Authenticate": challenge("insufficient_scope",
                                                              scope=scope)})
    return caller
