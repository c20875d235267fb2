"""The per-message cost of DKIM signing (``python -m bench.dkim``): an order confirmation as
the worker builds it, signed with RSA-2048, Ed25519 and both, in a loop, one thread."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailcore.config import Settings
from mailcore.dkim_signing import DkimSigner, read_key
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


def measure(messages: int = 300) -> dict[str, float]:
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
        signer.sign(raw, "example.com")  # warm
        started = time.process_time()
        for _ in range(messages):
            signer.sign(raw, "example.com")
        figures[label] = round((time.process_time() - started) / messages * 1e6)
    return figures


if __name__ == "__main__":
    print(json.dumps(measure()))
