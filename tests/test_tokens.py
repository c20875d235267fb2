"""Token verification: the verified-token cache (a token accepted once is not trusted beyond
its expiry), and hostile headers and claims of every type and size refused as AuthError."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time

import jwt
import pytest

from mailcore import tokens
from mailcore.tokens import AuthError, Caller, TokenVerifier, mint_token

from .support import TEST_SECRET, wait_for


def test_a_cached_token_is_refused_once_expired() -> None:
    verifier = TokenVerifier(TEST_SECRET)
    token = mint_token(TEST_SECRET, subject="svc", ttl_seconds=2)
    first = asyncio.run(verifier.verify(f"Bearer {token}"))
    assert asyncio.run(verifier.verify(f"Bearer {token}")) is first  # served from the cache

    def refused() -> bool:
        try:
            asyncio.run(verifier.verify(f"Bearer {token}"))
        except AuthError as exc:
            return "token expired" in str(exc)
        return False

    wait_for(refused, timeout=10, interval=0.1, message="the cached token to expire")


def test_cache_is_keyed_on_the_exact_token() -> None:
    verifier = TokenVerifier(TEST_SECRET)
    token = mint_token(TEST_SECRET, subject="svc")
    asyncio.run(verifier.verify(f"Bearer {token}"))
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(AuthError):
        asyncio.run(verifier.verify(f"Bearer {tampered}"))


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "VERIFIED_CACHE_SIZE", 3)
    verifier = TokenVerifier(TEST_SECRET)
    for index in range(10):
        asyncio.run(verifier.verify(f"Bearer {mint_token(TEST_SECRET, subject=str(index))}"))
    assert len(verifier._verified) == 3


# --- hostile headers and claims: refused with AuthError, never anything else -------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: str, claims: str, secret: str = TEST_SECRET) -> str:
    """An HS256-signed token from raw JSON texts (so any type, size or escape can be put in)."""
    signing_input = f"{_b64(header.encode())}.{_b64(claims.encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


FUTURE = str(int(time.time()) + 600)
#: JSON texts of every type and awkward size or encoding.
ODD_VALUES = [
    "null", "true", "0", "-1", "1.5", "1e999", "-1e999", "NaN", "Infinity", "1" + "0" * 400,
    "-" + "9" * 5000, '""', '"' + "x" * 3000 + '"', '"\\u00e9\\u8acb"', '"\\ud800"',
    '"HS256\\""', '"a\\r\\nb"', "[]", '["HS256"]', '[1, {"a": []}]', "{}", '{"alg": "HS256"}',
    "[" * 60 + "]" * 60, '{"a": ' * 60 + "1" + "}" * 60,
]
HEADER_FIELDS = ["alg", "kid", "typ", "crit", "jku"]
CLAIM_FIELDS = ["exp", "iat", "nbf", "sub", "scope", "scp", "aud", "iss"]


def _header(field: str, value: str) -> str:
    parts = {"alg": '"HS256"', "typ": '"JWT"', field: value}
    return "{" + ", ".join(f'"{k}": {v}' for k, v in parts.items()) + "}"


def _claims(field: str, value: str) -> str:
    parts = {"sub": '"svc"', "exp": FUTURE, field: value}
    return "{" + ", ".join(f'"{k}": {v}' for k, v in parts.items()) + "}"


def _outcome(verifier: TokenVerifier, token: str) -> Caller | AuthError:
    try:
        return asyncio.run(verifier.verify(f"Bearer {token}"))
    except AuthError as exc:  # anything else fails the test
        return exc


@pytest.mark.parametrize("field", HEADER_FIELDS)
def test_odd_header_values_are_auth_errors(field: str) -> None:
    verifier = TokenVerifier(TEST_SECRET)
    for value in ODD_VALUES:
        outcome = _outcome(verifier, signed(_header(field, value), _claims("x", "1")))
        if field == "alg":
            assert isinstance(outcome, AuthError), value
        if isinstance(outcome, AuthError):
            assert outcome.message.isascii() and '"' not in outcome.message.replace("'", "")


@pytest.mark.parametrize("field", CLAIM_FIELDS)
@pytest.mark.parametrize("configured", [False, True], ids=["plain", "aud-iss-lifetime"])
def test_odd_claim_values_are_auth_errors(field: str, configured: bool) -> None:
    verifier = TokenVerifier(TEST_SECRET, audience="mail" if configured else None,
                             issuer="https://issuer" if configured else None,
                             max_lifetime=3600 if configured else None)
    for value in ODD_VALUES:
        outcome = _outcome(verifier, signed(_header("typ", '"JWT"'), _claims(field, value)))
        # A bad value in a checked claim is never a valid token (small numbers are fine
        # times for iat/nbf; aud/iss are only checked when configured).
        checked = (field == "exp" or (field in {"iat", "nbf"} and value not in {"0", "-1", "1.5"})
                   or (field in {"aud", "iss"} and configured))
        if checked:
            assert isinstance(outcome, AuthError), (field, value)
        if isinstance(outcome, Caller):
            assert outcome.subject.isprintable() and len(outcome.subject) <= 1024


@pytest.mark.parametrize("token", [
    "", "a", "a.b", "a.b.c", "....", "\u00e9.\u00e9.\u00e9", "\ud800.x.y", "x" * 9000,
    _b64(b"[]") + "." + _b64(b"{}") + ".x", _b64(b'"str"') + ".e30.x",
    _b64(b"\xff\xfe") + ".e30.x", signed("[]", "{}"), signed('{"alg": "HS256"}', "[]"),
    signed('{"alg": "HS256"}', '"claims"'), signed('{"alg": "HS256"}', "not json"),
])
def test_malformed_tokens_are_auth_errors(token: str) -> None:
    assert isinstance(_outcome(TokenVerifier(TEST_SECRET), token), AuthError)


def test_oversize_authorization_is_refused_before_decoding() -> None:
    verifier = TokenVerifier(TEST_SECRET)
    token = mint_token(TEST_SECRET, subject="svc", padding="p" * 9000)
    with pytest.raises(AuthError, match="longer than 8192 bytes"):
        asyncio.run(verifier.verify(f"Bearer {token}"))


def test_max_lifetime_bounds_exp_minus_iat_or_now() -> None:
    verifier = TokenVerifier(TEST_SECRET, max_lifetime=3600)
    assert asyncio.run(verifier.verify(f"Bearer {mint_token(TEST_SECRET, ttl_seconds=3000)}"))
    now = int(time.time())
    too_long = [
        mint_token(TEST_SECRET, ttl_seconds=7200),  # exp - iat
        jwt.encode({"sub": "s", "exp": now + 7200}, TEST_SECRET, algorithm="HS256"),  # exp - now
        jwt.encode({"sub": "s", "exp": now + 600, "iat": now - 10**6}, TEST_SECRET,
                   algorithm="HS256"),  # an old iat: valid for ~11 days in all
    ]
    for token in too_long:
        with pytest.raises(AuthError, match="JWT_MAX_LIFETIME"):
            asyncio.run(verifier.verify(f"Bearer {token}"))
    # Unbounded without the setting.
    assert asyncio.run(TokenVerifier(TEST_SECRET).verify(f"Bearer {too_long[0]}"))


def test_owners_are_tagged_by_issuer() -> None:
    verifier = TokenVerifier(TEST_SECRET)
    plain = asyncio.run(verifier.verify(f"Bearer {mint_token(TEST_SECRET, subject='events')}"))
    assert plain.owner == "jwt::events"
    issued = asyncio.run(verifier.verify(
        f"Bearer {mint_token(TEST_SECRET, subject='b:c', issuer='a')}"))
    colliding = asyncio.run(verifier.verify(
        f"Bearer {mint_token(TEST_SECRET, subject='c', issuer='a:b')}"))
    assert issued.owner == "jwt:a:b:c" and colliding.owner == "jwt:a%3Ab:c"
