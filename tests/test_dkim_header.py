"""mailcore.dkim_header: the DKIM-Signature fields written with keys parsed once are byte for
byte the ones dkimpy writes itself, for many messages (hostile shapes included), both
algorithms and every canonicalisation, and dkim.verify accepts them."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Iterator
from functools import cache

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailcore.dkim_header import ED25519, RSA, SigningKey, canonical_body, parse, signature_fields
from mailcore.dkim_signing import signed_headers

_NOW = 1_764_500_000.0
_CANONS = [(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple"),
           (b"simple", b"relaxed")]


@cache
def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def _ed() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _dkimpy_private(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """The key as dkimpy takes it: PKCS#1 PEM, or the base64 Ed25519 seed."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    return base64.b64encode(key.private_bytes(serialization.Encoding.Raw,
                                              serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption()))


def _record(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


def _messages() -> Iterator[tuple[str, bytes]]:
    """Messages of many shapes: ours, folded and repeated headers, whitespace that relaxed
    canonicalisation rewrites, bare LFs, empty and blank-line bodies, long lines, 8-bit."""
    head = (b"From: Shop <shop@example.com>\r\nTo: Ada <ada@example.org>\r\n"
            b"Subject: Your order A-1\r\nDate: Mon, 30 Nov 2026 12:00:00 +0000\r\n"
            b"Message-ID: <1@example.com>\r\nX-Email-Service-Id: 1\r\n"
            b"List-Unsubscribe: <https://shop.example.com/u/1>\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n")
    yield "plain", head + b"\r\nThanks, Ada\r\n"
    yield "no body", head + b"\r\n"
    yield "blank lines at the end", head + b"\r\nHi\r\n\r\n\r\n\r\n"
    yield "only blank lines", head + b"\r\n\r\n\r\n"
    yield "no final CRLF", head + b"\r\nHi"
    yield "tabs and runs of spaces", head + b"\r\nA\t\tb  c \t\r\n  d\r\n\t\r\n"
    yield "trailing space", head + b"\r\nline \r\nnext\r\n"
    yield "bare LF", head.replace(b"\r\n", b"\n") + b"\nline one\nline two \n"
    yield "mixed line ends", head + b"\r\none\ntwo\r\nthree\n"
    yield "bare CR", head + b"\r\none\rtwo\r\n"
    yield "folded headers", head.replace(
        b"Subject: Your order A-1\r\n",
        b"Subject: Your\r\n order\r\n\t  A-1   \r\n") + b"\r\nHi\r\n"
    yield "repeated headers", (b"To: a@example.org\r\n" + head + b"To: b@example.org\r\n"
                               b"Cc: c@example.org\r\nCc: d@example.org\r\n\r\nHi\r\n")
    yield "header case", head.replace(b"Subject:", b"SUBJECT:").replace(
        b"From:", b"fRoM:") + b"\r\nHi\r\n"
    yield "8-bit", head + "\r\nGrüße, Ada — ça va ✓\r\n".encode()
    yield "long lines", head + b"\r\n" + b"x" * 5000 + b"\r\n" + b"word " * 2000 + b"\r\n"
    yield "long subject", head.replace(b"Subject: Your order A-1",
                                       b"Subject: " + b"long " * 60) + b"\r\nHi\r\n"
    yield "NUL and controls", head + b"\r\na\x00b\x01c\x7f\r\n"
    rng = random.Random(15)  # noqa: S311 - shapes, not secrets
    alphabet = b"ab \t\r\n\r\n=-.:\xc3\xa9"
    for n in range(40):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))
        yield f"random body {n}", head + b"\r\n" + body


_MESSAGES = list(_messages())


def _theirs(raw: bytes, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
            canonicalize: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch) -> bytes:
    signer = dkim.DKIM(raw, linesep=b"\r\n")
    include = signed_headers([name.lower() for name, _ in signer.headers])
    monkeypatch.setattr(time, "time", lambda: _NOW)
    try:
        return bytes(signer.sign(
            b"mail", b"example.com", _dkimpy_private(key),
            signature_algorithm=RSA if isinstance(key, rsa.RSAPrivateKey) else ED25519,
            canonicalize=canonicalize, include_headers=include))
    finally:
        monkeypatch.undo()


def _ours(raw: bytes, keys: list[rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey],
          canonicalize: tuple[bytes, bytes]) -> bytes:
    signing = [SigningKey(b"example.com", b"mail",
                          RSA if isinstance(key, rsa.RSAPrivateKey) else ED25519, key)
               for key in keys]
    return signature_fields(raw, signing, signed_headers, canonicalize, clock=lambda: _NOW)


@pytest.mark.parametrize("canonicalize", _CANONS, ids=lambda c: b"/".join(c).decode())
@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_signatures_are_byte_for_byte_dkimpys_and_verify(
        canonicalize: tuple[bytes, bytes], algorithm: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    key = _rsa() if algorithm == "rsa" else _ed()
    published = _record(key)
    for label, raw in _MESSAGES:
        ours = _ours(raw, [key], canonicalize)
        assert ours == _theirs(raw, key, canonicalize, monkeypatch), label
        assert dkim.verify(ours + raw, dnsfunc=lambda name, timeout=5: published), label


def test_both_keys_sign_the_same_as_two_dkimpy_signatures(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for label, raw in _MESSAGES[:20]:
        both = _ours(raw, [_rsa(), _ed()], (b"relaxed", b"relaxed"))
        assert both == (_theirs(raw, _rsa(), (b"relaxed", b"relaxed"), monkeypatch)
                        + _theirs(raw, _ed(), (b"relaxed", b"relaxed"), monkeypatch)), label


@pytest.mark.parametrize(("label", "raw"), _MESSAGES, ids=[label for label, _ in _MESSAGES])
def test_the_short_cuts_parse_and_canonicalise_as_dkimpy(label: str, raw: bytes) -> None:
    assert parse(raw) == dkim.rfc822_parse(raw)
    for canonicalize in _CANONS:
        policy = dkim.CanonicalizationPolicy.from_c_value(b"/".join(canonicalize))
        body = parse(raw)[1]
        assert canonical_body(policy, body) == policy.canonicalize_body(body)


@pytest.mark.parametrize("raw", [
    b"", b"\r\n", b"\r\n\r\nbody", b"no colon here\r\n\r\nbody", b"Subject: x\r\n\r\nbody",
    b"\x80\x81: x\r\n\r\nbody", b" continuation first\r\n\r\nbody", b"From: a@b\r\n",
    b"From: a@b", b"From a@b Mon Nov 30\r\nFrom: a@b\r\n\r\nx",
    b"From : a@b\r\n\r\nx",
], ids=["empty", "crlf", "no head", "not a header", "no From", "8-bit name", "continuation",
        "no blank line", "no CRLF", "mbox From line",
        "space before colon"])
def test_hostile_heads_fare_as_with_dkimpy(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """What dkimpy refuses we refuse; what it signs we sign the same, except a message with no
    header field at all (nothing to sign, not even a From), which we refuse."""
    def outcome(sign: object) -> object:
        try:
            return sign()  # type: ignore[operator]
        except (dkim.DKIMException, ValueError, TypeError, IndexError):
            return "refused"

    ours = outcome(lambda: _ours(raw, [_ed()], (b"relaxed", b"relaxed")))
    theirs = outcome(lambda: _theirs(raw, _ed(), (b"relaxed", b"relaxed"), monkeypatch))
    if ours == "refused" and theirs != "refused":
        assert dkim.rfc822_parse(raw)[0] == []
    else:
        assert ours == theirs


def test_one_signer_serves_many_threads_at_once() -> None:
    """A worker's threads share the keys parsed at start-up: signatures made concurrently are
    the ones made alone."""
    from concurrent.futures import ThreadPoolExecutor

    raws = [raw for _, raw in _MESSAGES]
    alone = [_ours(raw, [_rsa(), _ed()], (b"relaxed", b"relaxed")) for raw in raws]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(
            lambda raw: _ours(raw, [_rsa(), _ed()], (b"relaxed", b"relaxed")), raws * 4))
    assert together == alone * 4
