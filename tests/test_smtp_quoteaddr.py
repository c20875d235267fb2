"""The remembered quoteaddr answers as smtplib's does, and stays bounded."""

from __future__ import annotations

import smtplib

import pytest

from mailcore.transports import smtp

ADDRESSES = ["ada@example.org", "bounce+abc=def@bounces.example.com", "<ada@example.org>",
             "Ada <ada@example.org>", "", "not an address", '"a b"@example.org',
             "a" * 400 + "@example.org"]


@pytest.mark.parametrize("address", ADDRESSES)
def test_same_answer_as_smtplib_first_time_and_again(address: str) -> None:
    expected = smtplib.quoteaddr(address)
    assert smtp.quoteaddr(address) == expected
    assert smtp.quoteaddr(address) == expected


def test_bounded() -> None:
    smtp._quoteaddr_cached.cache_clear()
    for n in range(5000):
        smtp.quoteaddr(f"r{n}@example.org")
    smtp.quoteaddr("x" * 400 + "@example.org")  # too long to keep
    assert smtp._quoteaddr_cached.cache_info().currsize == 4096
