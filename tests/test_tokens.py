"""The verified-token cache: a token accepted once is not trusted beyond its expiry."""

from __future__ import annotations

import asyncio

import pytest

from mailcore import tokens
from mailcore.tokens import AuthError, TokenVerifier, mint_token

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
