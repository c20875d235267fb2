"""JWT verification for callers (and minting, for development and tests).

HS256 tokens are checked with the shared secret; RS256/ES256 tokens with public keys from a JWKS
(URL or file) chosen by ``kid``. Each algorithm only ever meets its own kind of key, so ``none``
and RS/HS confusion tokens are refused.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import jwt

from .errors import Unauthenticated
from .owners import token_owner

#: Algorithms by key kind; anything else is refused before a key is looked at.
SECRET_ALGORITHMS = frozenset({"HS256"})
PUBLIC_KEY_ALGORITHMS = {"RS256": "RSA", "ES256": "EC"}
#: Longest ``Authorization`` header read at all; longer ones are refused before decoding.
MAX_AUTHORIZATION_BYTES = 8 * 1024
_ALGORITHM_NAME = re.compile(r"[A-Za-z0-9]{1,16}")
#: Longest subject and issuer accepted (they name the caller in Redis keys and logs).
MAX_NAME_LENGTH = 1024


class AuthError(Unauthenticated):
    """The request is not authenticated; the message says why from a fixed vocabulary, never
    echoing the token or anything in it."""


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's subject, its scopes and all its claims.

    ``owner`` is the name its messages are filed under (:mod:`mailcore.owners`); it defaults to
    the owner of a token with no issuer.
    """

    subject: str
    claims: dict[str, Any]
    scopes: frozenset[str] = field(default_factory=frozenset)
    owner: str = ""

    def __post_init__(self) -> None:
        if not self.owner:
            object.__setattr__(self, "owner", token_owner(None, self.subject))


class JWKSKeys:
    """Public keys by ``kid`` from a JWKS URL or file, cached and refreshed on an unknown ``kid``.

    Parameters:
      url: where to fetch the JWKS (``https://issuer/.well-known/jwks.json``).
      path: a JWKS file (e.g. a mounted Secret, re-read when a new ``kid`` shows up).
      max_age: seconds after which the set is refreshed anyway (rotation).
      min_refresh_interval: refreshes for unknown ``kid`` values happen at most this often, so
        forged ``kid`` values cannot turn the service into a JWKS-fetching amplifier.
    """

    def __init__(
        self, *, url: str | None = None, path: Path | None = None, max_age: float = 600,
        min_refresh_interval: float = 10,
    ) -> None:
        if (url is None) == (path is None):
            raise ValueError("exactly one of url or path")
        self.url = url
        self.path = path
        self.max_age = max_age
        self.min_refresh_interval = min_refresh_interval
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at = 0.0
        self._lock = anyio.Lock()

    async def get(self, kid: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = now - self._loaded_at > self.max_age
        if kid not in self._keys or stale:
            async with self._lock:
                may_refresh = time.monotonic() - self._loaded_at >= self.min_refresh_interval
                if (kid not in self._keys and may_refresh) or stale:
                    await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        try:
            raw = await anyio.to_thread.run_sync(self._read)
            key_set = jwt.PyJWKSet.from_dict(json.loads(raw))
        except (OSError, ValueError, jwt.PyJWKSetError) as exc:
            self._loaded_at = time.monotonic()  # back off; keep the keys we have
            raise AuthError(f"signing keys unavailable: {exc}") from None
        self._keys = {key.key_id: key for key in key_set.keys if key.key_id}
        self._loaded_at = time.monotonic()

    def _read(self) -> bytes:
        if self.path is not None:
            return self.path.read_bytes()
        assert self.url is not None
        with urllib.request.urlopen(self.url, timeout=5) as response:  # noqa: S310 - configured
            return bytes(response.read(1024 * 1024))


#: Verified tokens remembered per ingress process, and for how long at most.
VERIFIED_CACHE_SIZE = 4096
VERIFIED_CACHE_SECONDS = 60.0


class TokenVerifier:
    """Checks ``Authorization: Bearer`` tokens.

    Parameters:
      secret: the HS256 shared secret (optional when a JWKS is given).
      jwks: public keys for RS256/ES256 tokens.
      audience, issuer: enforced when set.
      leeway: seconds of clock skew tolerated on ``exp``/``nbf``/``iat``.
      max_lifetime: refuse tokens valid for longer than this many seconds (``exp - iat``, or
        ``exp - now`` without ``iat``); no bound when ``None``.
    """

    def __init__(
        self, secret: str | None = None, *, jwks: JWKSKeys | None = None,
        audience: str | None = None, issuer: str | None = None, leeway: float = 0,
        max_lifetime: int | None = None,
    ) -> None:
        if not secret and jwks is None:
            raise ValueError("a JWT secret or a JWKS is required")
        self._secret = secret
        self._jwks = jwks
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        #: token -> (caller, valid until): callers reuse one token for many requests, and a
        #: signature check is a large share of the ingress's CPU per send.
        self._verified: OrderedDict[str, tuple[Caller, float]] = OrderedDict()

    async def verify(self, authorization: str | None) -> Caller:
        token = _bearer(authorization)
        cached = self._verified.get(token)
        if cached is not None:
            if time.time() < cached[1]:
                self._verified.move_to_end(token)
                return cached[0]
            del self._verified[token]
        try:
            caller = await self._verify(token)
        except AuthError:
            raise
        except Exception:
            # Whatever a hostile header or claim set makes the JWT library or the checks below
            # trip over, the answer is the same: not a valid token.
            raise AuthError("invalid token") from None
        # Remembered until it expires, and at most VERIFIED_CACHE_SECONDS, so a key removed
        # from the JWKS stops being honoured soon after (``exp`` was checked to be a number).
        until = min(caller.claims["exp"] + self._leeway, time.time() + VERIFIED_CACHE_SECONDS)
        self._verified[token] = (caller, float(until))
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return caller

    async def _verify(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):
            raise AuthError("token algorithm is not allowed")
        if not _ALGORITHM_NAME.fullmatch(algorithm):
            raise AuthError("token algorithm is not allowed")
        key: Any
        if algorithm in SECRET_ALGORITHMS and self._secret:
            key = self._secret
        elif algorithm in PUBLIC_KEY_ALGORITHMS and self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid or len(kid) > MAX_NAME_LENGTH:
                raise AuthError("token has no 'kid' header (or not a usable one)")
            jwk = await self._jwks.get(kid)
            if jwk is None:
                raise AuthError("token signed with an unknown key")
            if jwk.key_type != PUBLIC_KEY_ALGORITHMS[algorithm]:
                raise AuthError(f"the token's key cannot verify {algorithm}")
            key = jwk.key
        else:  # a short alphanumeric name (checked above), safe to name
            raise AuthError(f"token algorithm {algorithm!r} is not allowed")
        claims = self._decode(token, key, algorithm)
        self._check_times(claims)
        subject = _name(claims.get("sub"), "subject") or "anonymous"
        issuer = _name(claims.get("iss"), "issuer")
        return Caller(subject=subject, claims=claims, scopes=_scopes(claims),
                      owner=token_owner(issuer, subject))

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        """``exp`` (and ``iat``/``nbf`` when present) are finite numbers; the lifetime is
        bounded when ``max_lifetime`` is set."""
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if name in claims and not _finite_number(value):
                raise AuthError(f"token {name!r} claim must be a number")
        if self._max_lifetime is None:
            return
        start = claims["iat"] if "iat" in claims else time.time()
        if claims["exp"] - start > self._max_lifetime + self._leeway:
            raise AuthError("token lifetime exceeds JWT_MAX_LIFETIME")

    def _decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[algorithm], audience=self._audience,
                issuer=self._issuer, leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            claim = exc.claim if exc.claim in {"exp", "iat", "nbf", "aud", "iss", "sub"} else ""
            raise AuthError(f"token lacks the {claim!r} claim" if claim
                            else "token lacks a required claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature is invalid") from None
        except jwt.InvalidTokenError:
            raise AuthError("invalid token") from None
        return claims


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # Within ±2**53 seconds: past the year 285 million and still exact as a float.
    return abs(value) <= 2**53


def _name(value: Any, what: str) -> str | None:
    """A subject or issuer claim as text: a string (or an integer subject, as before) of at
    most MAX_NAME_LENGTH printable characters."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and what == "subject":
        if abs(value) >= 10**MAX_NAME_LENGTH:
            raise AuthError(f"token {what} is too long")
        value = str(value)
    if not isinstance(value, str):
        raise AuthError(f"token {what} must be a string")
    if len(value) > MAX_NAME_LENGTH:
        raise AuthError(f"token {what} is too long")
    if not value.isprintable():
        # The subject names the caller in Redis keys, statuses and logs: a control
        # character or a lone surrogate (which has no UTF-8 form) has no place there.
        raise AuthError(f"token {what} must be printable text")
    return value


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing Authorization header")
    if len(authorization) > MAX_AUTHORIZATION_BYTES:
        raise AuthError(f"Authorization header longer than {MAX_AUTHORIZATION_BYTES} bytes")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return token.strip()


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """``scope`` (space-separated) and ``scp`` (a list, or a string): strings only."""
    scopes: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            scopes.update(value)
        else:
            raise AuthError(f"token {name!r} claim must be a string or a list of strings")
    return frozenset(scopes)


def mint_token(
    secret: str, *, subject: str = "dev", ttl_seconds: int = 3600, audience: str | None = None,
    issuer: str | None = None, **extra: Any,
) -> str:
    """An HS256 token for development and tests."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + ttl_seconds, **extra}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
