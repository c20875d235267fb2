"""The SMTP transport against a real SMTP server: reuse, reconnects, reply classification."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailcore.config import Settings
from mailcore.message import Recipient
from mailcore.mime import Envelope, build_envelope
from mailcore.rendering import RenderedEmail
from mailcore.transports import (
    PermanentDeliveryError,
    TransientDeliveryError,
    transport_from_settings,
)
from mailcore.transports.smtp import SMTPTransport

from .support import RecordingHandler, SMTPServer, free_port


@pytest.fixture
def server() -> Iterator[SMTPServer]:
    smtp = SMTPServer()
    smtp.start()
    yield smtp
    smtp.stop()


def envelope(to: str, message_id: str = "m1") -> Envelope:
    return build_envelope(
        message_id=message_id,
        rendered=RenderedEmail(subject="Hello", html="<p>Hi</p>", text="Hi\n"),
        sender=Recipient(email="noreply@shop.example.com", name="Shop"),
        to=[Recipient(email=to)],
    )


def test_connection_is_reused_across_messages(server: SMTPServer) -> None:
    transport = SMTPTransport("127.0.0.1", server.port, security="none", timeout=5)
    for i in range(5):
        result = transport.send(envelope("a@example.com", f"m{i}"))
        assert result.response.startswith("250")
    assert len(server.handler.received) == 5
    assert len(set(server.handler.peers)) == 1
    transport.close()


def test_reconnects_after_the_server_drops_the_connection() -> None:
    port = free_port()
    first = SMTPServer(port)
    first.start()
    transport = SMTPTransport("127.0.0.1", port, security="none", timeout=5)
    transport.send(envelope("a@example.com"))
    first.stop()
    second = SMTPServer(port)
    second.start()
    try:
        transport.send(envelope("b@example.com"))
        assert len(second.handler.to("b@example.com")) == 1
    finally:
        second.stop()
        transport.close()


def test_replies_are_classified(server: SMTPServer) -> None:
    transport = SMTPTransport("127.0.0.1", server.port, security="none", timeout=5)
    server.handler.plan["soft@example.com"] = ["452 4.2.2 Mailbox full"]
    server.handler.plan["hard@example.com"] = ["554 5.7.1 Rejected"]
    with pytest.raises(TransientDeliveryError) as soft:
        transport.send(envelope("soft@example.com"))
    assert soft.value.code == 452 and "Mailbox full" in str(soft.value)
    with pytest.raises(PermanentDeliveryError) as hard:
        transport.send(envelope("hard@example.com"))
    assert hard.value.code == 554
    # The session survives refusals: the next message goes out on it.
    transport.send(envelope("ok@example.com"))
    assert len(server.handler.to("ok@example.com")) == 1
    transport.close()


def test_unreachable_server_is_transient() -> None:
    transport = SMTPTransport("127.0.0.1", free_port(), security="none", timeout=2)
    with pytest.raises(TransientDeliveryError):
        transport.send(envelope("a@example.com"))


def test_starttls_required_but_not_offered_is_permanent(server: SMTPServer) -> None:
    transport = SMTPTransport("127.0.0.1", server.port, security="starttls", timeout=5)
    with pytest.raises(PermanentDeliveryError, match="STARTTLS"):
        transport.send(envelope("a@example.com"))


# --- TLS and AUTH, as production relays require -------------------------------------------------

def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "relay.crt", tmp_path / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                   auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login, auth_data.password) == (b"relay-user", b"relay-pass")
    return AuthResult(success=ok, handled=False)


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_with_auth_against_a_private_ca(tmp_path: Path, security: str) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    handler = RecordingHandler()
    port = free_port()
    options: dict[str, Any] = {"authenticator": _authenticator, "auth_required": True}
    if security == "starttls":
        options.update(tls_context=server_ctx, require_starttls=True, auth_require_tls=True)
    else:
        # Implicit TLS: aiosmtpd cannot tell the session is encrypted, so it offers AUTH only
        # when not told to insist on STARTTLS first (and AUTH is then optional for it).
        options.update(ssl_context=server_ctx, auth_require_tls=False, auth_required=False)
    controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        settings = Settings.from_env({
            "SECRETS_DIR": "/nonexistent", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port),
            "SMTP_SECURITY": security, "SMTP_USERNAME": "relay-user",
            "SMTP_PASSWORD": "relay-pass", "SMTP_CA_FILE": str(cert), "SMTP_TIMEOUT": "5",
        })
        transport = transport_from_settings(settings)
        transport.send(envelope("tls@example.com"))
        assert len(handler.to("tls@example.com")) == 1
        transport.close()

        wrong_password = SMTPTransport(
            "127.0.0.1", port, security=security, username="relay-user",  # type: ignore[arg-type]
            password="nope", timeout=5, ssl_context=ssl.create_default_context(cafile=str(cert)))
        with pytest.raises(PermanentDeliveryError) as refused:
            wrong_password.send(envelope("wrong@example.com"))
        assert refused.value.code == 535
        # Last, as aiosmtpd serves no further STARTTLS session after a failed handshake.
        # Without trusting the private CA the certificate is refused: never sent in clear.
        untrusting = SMTPTransport("127.0.0.1", port, security=security,  # type: ignore[arg-type]
                                   username="relay-user", password="relay-pass", timeout=5)
        with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.send(envelope("untrusted@example.com"))
        assert handler.to("untrusted@example.com") == handler.to("wrong@example.com") == []
    finally:
        controller.stop()
