"""normalize_address remembers valid answers only: the same answer as email-validator gives, a
refusal every time (never cached, so hostile input cannot fill the cache), and a bound."""

from __future__ import annotations

import pytest

from mailcore import addresses
from mailcore.addresses import CACHE_SIZE, normalize_address


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    addresses._normalize_cached.cache_clear()


@pytest.mark.parametrize("value", ["ada@example.org", "Ada@STRAßE.DE", "ada@ΣΟΦΊΑ.gr",
                                   "a.b+c@sub.example.com"])
def test_a_remembered_answer_is_the_uncached_one(value: str) -> None:
    first = normalize_address(value)
    assert normalize_address(value) == first == addresses._normalize(value)
    assert addresses._normalize_cached.cache_info().hits == 1


@pytest.mark.parametrize("value", ["not-an-address", "ada@", "ådå@example.org",
                                   "ada@example.org\r\nBcc: x@example.org", "ada@localhost"])
def test_a_refusal_is_never_remembered(value: str) -> None:
    for _ in range(3):
        with pytest.raises(ValueError, match=r"CR or LF|not a valid email address"):
            normalize_address(value)
    assert addresses._normalize_cached.cache_info().currsize == 0


def test_the_cache_is_bounded() -> None:
    for n in range(CACHE_SIZE + 10):
        normalize_address(f"r{n}@example.org")
    assert addresses._normalize_cached.cache_info().currsize == CACHE_SIZE


def test_long_input_is_checked_every_time_not_kept() -> None:
    long = "a" * 64 + "@" + ".".join(["b" * 60] * 5) + ".org"  # refused: over 254 characters
    with pytest.raises(ValueError, match="not a valid email address"):
        normalize_address(long)
    padded = " " * 400 + "ada@example.org"
    with pytest.raises(ValueError):
        normalize_address(padded)
    assert addresses._normalize_cached.cache_info().currsize == 0
