"""DKIM test keys made with ``cryptography`` and a DNS stand-in publishing their records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailcore.dkim_signing import DkimKey


def write_rsa_key(path: Path, bits: int = 2048) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    # PKCS#8, as `openssl genpkey` writes it (the README's recipe).
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def write_ed25519_key(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def public_record(path: Path) -> str:
    """The ``v=DKIM1; k=…; p=…`` TXT record of a PEM key file, computed here independently of
    :class:`DkimKey` (so a wrong ``p=`` there cannot verify against itself)."""
    import base64

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def dns_stub(records: dict[str, str]) -> Callable[..., bytes]:
    """A ``dnsfunc`` for ``dkim.verify``: ``{"sel._domainkey.example.com": record}``."""
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode().rstrip("."), "").encode()
    return lookup


def records_of(keys: list[tuple[str, Path]]) -> dict[str, str]:
    """``[(dns name, key file)]`` -> the records to publish."""
    return {name: public_record(path) for name, path in keys}


__all__ = ["DkimKey", "dns_stub", "public_record", "records_of", "write_ed25519_key",
           "write_rsa_key"]
