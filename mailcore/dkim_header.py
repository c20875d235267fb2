"""The DKIM-Signature header fields of one message, as dkimpy writes them, signed with keys
parsed once (``cryptography``: RSA PKCS#1 v1.5 over SHA-256, and Ed25519 per RFC 8463).

dkimpy does the canonicalisation (its :class:`CanonicalizationPolicy`, header selection and
folding, reused here unchanged) but signs RSA in pure Python (~5 ms a signature) and re-parses
the PEM key on every call. This module follows ``dkim.DKIM.sign``/``gen_header`` step by step
(same tags in the same order, same folding), parses the message and hashes its body once for all
of a domain's keys, and hands the header hash to ``cryptography``: the output is the bytes
dkimpy would write for the same key and second (``tests/test_dkim_header.py`` compares them).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import (
    CanonicalizationPolicy,
    Relaxed,
    correct_empty_body,
    strip_trailing_lines,
)

RSA = b"rsa-sha256"
ED25519 = b"ed25519-sha256"
_NAME = b"DKIM-Signature"
_CRLF = b"\r\n"
_PREHASHED = utils.Prehashed(hashes.SHA256())
_PKCS1 = padding.PKCS1v15()

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class SigningKey:
    """What one signature needs: ``d=``, ``s=``, ``a=`` and the parsed private key."""

    domain: bytes
    selector: bytes
    algorithm: bytes
    private: PrivateKey


def signature_fields(raw: bytes, keys: Sequence[SigningKey],
                     include: Callable[[list[bytes]], list[bytes]],
                     canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
                     clock: Callable[[], float] = time.time) -> bytes:
    """One ``DKIM-Signature:`` field per key (CRLF-terminated, folded as dkimpy folds), to
    prepend to ``raw``. ``include`` maps the message's lower-cased header names, in order, to
    the ``h=`` list (From must be in it)."""
    headers, body = parse(raw)
    if not headers:
        raise ValueError("a message without header fields")
    policy = CanonicalizationPolicy.from_c_value(b"/".join(canonicalize))
    names = tuple(include([name.lower() for name, _ in headers]))
    if b"from" not in names:
        raise ValueError("the From header field must be signed")
    bodyhash = base64.b64encode(hashlib.sha256(canonical_body(policy, body)).digest())
    # The signed header fields hash the same for every key; each key adds its own signature
    # field to a copy.
    prefix = hashlib.sha256()
    for name, value in dkim.select_headers(policy.canonicalize_headers(headers), names):
        prefix.update(name)
        prefix.update(b":")
        prefix.update(value)
    stamp = str(int(clock())).encode("ascii")
    return b"".join(_field(key, policy, names, bodyhash, prefix, stamp) for key in keys)


def parse(raw: bytes) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse(raw)``: the header fields and the CRLF body. dkimpy splits the
    whole message into lines to turn bare LFs into CRLFs and joins the body again (a third
    of the cost); a message with none, as ours are, parses its head alone."""
    end = raw.find(b"\r\n\r\n")
    if end <= 0 or raw.count(b"\n") != raw.count(b"\r\n"):
        return dkim.rfc822_parse(raw)  # type: ignore[no-any-return]
    headers, _ = dkim.rfc822_parse(raw[:end + 2])
    return headers, raw[end + 4:]


def canonical_body(policy: Any, body: bytes) -> bytes:
    """``policy.canonicalize_body(body)``. Relaxed rewrites whitespace with two regular
    expressions over the whole body (another third): they change nothing without a tab, a
    space before a line break or two spaces in a row, so such a body (base64 parts, most
    text) goes straight to the steps after them."""
    if (policy.body_algorithm is Relaxed and b"\t" not in body and b" \r\n" not in body
            and b"  " not in body):
        return correct_empty_body(strip_trailing_lines(body))  # type: ignore[no-any-return]
    return policy.canonicalize_body(body)  # type: ignore[no-any-return]


def _field(key: SigningKey, policy: Any, names: tuple[bytes, ...], bodyhash: bytes,
           prefix: Any, stamp: bytes) -> bytes:
    fields = [
        (b"v", b"1"), (b"a", key.algorithm), (b"c", policy.to_c_value()), (b"d", key.domain),
        (b"i", b"@" + key.domain), (b"q", b"dns/txt"), (b"s", key.selector), (b"t", stamp),
        (b"h", b" : ".join(names)), (b"bh", bodyhash),
        # dkimpy's placeholder makes b= fold onto a line of its own.
        (b"b", b"0" * 60),
    ]
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_NAME),
                      linesep=_CRLF)
    value = dkim.RE_BTAG.sub(b"\\1", value)
    hasher = prefix.copy()
    # The signature field itself, b= empty and without its trailing CRLF, ends the hash.
    for name, canonical in policy.canonicalize_headers([(_NAME, b" " + value)]):
        hasher.update(name)
        hasher.update(b":")
        hasher.update(canonical.rstrip())
    digest = hasher.digest()
    private = key.private
    if isinstance(private, rsa.RSAPrivateKey):
        signature = private.sign(digest, _PKCS1, _PREHASHED)
    else:
        signature = private.sign(digest)
    fields[-1] = (b"b", base64.b64encode(signature))
    value = b"; ".join(b"=".join(f) for f in fields) + _CRLF
    folded: bytes = dkim.fold(value, namelen=len(_NAME), linesep=_CRLF)
    return _NAME + b": " + folded
