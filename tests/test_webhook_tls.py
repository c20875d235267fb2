"""HTTPS webhook targets: the connection goes to the checked address while TLS is verified for
the URL's host (server name and certificate), never for the address."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailcore.webhook_targets import IPAddress, TargetPolicy, parse_networks
from workers.webhook_http import post

HOST = "hooks.example.com"
POLICY = TargetPolicy((HOST, "other.example.com"), (), parse_networks("127.0.0.1/32"))


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (also its own CA): (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str | None, str | None]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        sni = getattr(self.server, "last_sni", None)
        self.seen.append((self.headers.get("host"), sni))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[ThreadingHTTPServer, Path]]:
    cert, key = _certificate(tmp_path, HOST)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)

    def remember(sock: ssl.SSLObject, name: str, ctx: ssl.SSLContext) -> None:
        server.last_sni = name  # type: ignore[attr-defined]

    context.sni_callback = remember
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _Handler.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, cert
    server.shutdown()
    server.server_close()


def _loopback(host: str, port: int) -> list[IPAddress]:
    return [ipaddress.ip_address("127.0.0.1")]


def test_https_goes_to_the_checked_address_verified_for_the_host(
        tls_receiver: tuple[ThreadingHTTPServer, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    server, ca = tls_receiver
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the receiver's CA is trusted
    result = post(POLICY, f"https://{HOST}:{server.server_address[1]}/in", b"{}", {},
                  connect_timeout=2, read_timeout=2, resolver=_loopback)
    assert result.delivered and result.status == 204, result
    assert _Handler.seen == [(f"{HOST}:{server.server_address[1]}", HOST)]


def test_an_untrusted_or_mismatched_certificate_fails_the_attempt(
        tls_receiver: tuple[ThreadingHTTPServer, Path], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    server, ca = tls_receiver
    port = server.server_address[1]
    # The system's CAs do not know the receiver's.
    untrusted = post(POLICY, f"https://{HOST}:{port}/in", b"{}", {}, connect_timeout=2,
                     read_timeout=2, resolver=_loopback)
    assert not untrusted.delivered and not untrusted.permanent
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.error or "SSL" in untrusted.error
    # Trusted, but for another name than the URL's: refused too.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    other = post(POLICY, f"https://other.example.com:{port}/in", b"{}", {}, connect_timeout=2,
                 read_timeout=2, resolver=_loopback)
    assert not other.delivered and not other.permanent
    assert _Handler.seen == []
