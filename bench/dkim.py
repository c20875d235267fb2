"""The per-message cost of DKIM signing (``python -m bench.dkim``): an order confirmation as
the worker builds it, signed with RSA-2048, Ed25519 and both, in a loop, one thread; with the
service's signer (``*_us``) and, for comparison, with dkimpy alone as the service signed before
(``dkimpy_*_us``: its pure-Python RSA, the PEM parsed per message)."""

from __future__ import annotations

import base64
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailcore.config import Settings
from mailcore.dkim_signing import DkimKey, DkimSigner, read_key, signed_headers
from mailcore.message import SendRequest
from mailcore.mime import Envelope
from mailcore.templates import TemplateRegistry, builtin_templates_dir
from mailcore.transports import DeliveryResult, Transport
from workers.delivery import Deliverer

_ORDER = {"template": "order_confirmation", "to": "ada@example.com", "data": {
    "order_id": "A-1", "customer": {"name": "Ada Lovelace", "email": "ada@example.com",
                                    "address": "12 St James's Square, London"},
    "items": [{"product_id": f"p{i}", "name": f"Assam tea, 250 g ({i})", "quantity": 2,
               "price": 3.5} for i in range(5)], "total": 35.0}}


class _Keep(Transport):
    """Keeps the last envelope instead of sending it."""

    name = "keep"
    envelope: Envelope | None = None

    def send(self, envelope: Envelope) -> DeliveryResult:
        self.envelope = envelope
        return DeliveryResult(transport=self.name)


def order_confirmation() -> bytes:
    settings = Settings.from_env({"SECRETS_DIR": "/nonexistent",
                                  "SENDER_EMAIL": "shop@example.com"})
    keep = _Keep()
    request = SendRequest.model_validate(_ORDER).model_dump(mode="json", by_alias=True,
                                                            exclude_defaults=True)
    Deliverer(settings, TemplateRegistry.from_dir(builtin_templates_dir()), keep).deliver(
        {"id": str(uuid.uuid4()), "request": request, "source": "api", "accepted_at": 0})
    assert keep.envelope is not None
    return keep.envelope.raw


def dkimpy_signer(keys: Sequence[DkimKey]) -> Callable[[bytes], bytes]:
    """Signing as the service did before keys were parsed once: dkimpy end to end."""
    def form(key: DkimKey) -> bytes:
        private = key.private
        if isinstance(private, rsa.RSAPrivateKey):
            return private.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption())
        return base64.b64encode(private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption()))

    forms = [(key, form(key)) for key in keys]

    def sign(raw: bytes) -> bytes:
        signer = dkim.DKIM(raw, linesep=b"\r\n")
        include = signed_headers([name.lower() for name, _ in signer.headers])
        return b"".join(
            signer.sign(key.selector.encode(), key.domain.encode(), private,
                        signature_algorithm=key.algorithm, canonicalize=(b"relaxed", b"relaxed"),
                        include_headers=include)
            for key, private in forms) + raw
    return sign


def _per_message(sign: Callable[[bytes], bytes], raw: bytes, messages: int) -> float:
    sign(raw)  # warm
    started = time.process_time()
    for _ in range(messages):
        sign(raw)
    return round((time.process_time() - started) / messages * 1e6)


def measure(messages: int = 300, before: bool = True) -> dict[str, float]:
    raw = order_confirmation()
    folder = Path(tempfile.mkdtemp(prefix="bench-dkim-"))
    rsa_pem = folder / "rsa.pem"
    rsa_pem.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ed_pem = folder / "ed.pem"
    ed_pem.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    rsa_key = read_key(rsa_pem, "-", "example.com", "mail")
    ed_key = read_key(ed_pem, "-", "example.com", "mail-ed25519")
    figures: dict[str, float] = {"message_bytes": len(raw)}
    for label, keys in (("rsa2048_us", (rsa_key,)), ("ed25519_us", (ed_key,)),
                        ("both_us", (rsa_key, ed_key))):
        signer = DkimSigner({"example.com": keys})
        figures[label] = _per_message(partial(signer.sign, from_domain="example.com"), raw,
                                      messages)
        if before:
            # dkimpy's RSA is ~5 ms a signature: fewer rounds say as much.
            figures[f"dkimpy_{label}"] = _per_message(dkimpy_signer(keys), raw,
                                                      max(10, messages // 10))
    return figures


if __name__ == "__main__":
    print(json.dumps(measure()))
