"""The SMTP transport against a real SMTP server: reuse, reconnects, reply classification."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
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

from mailcore.message import Recipient
from mailcore.mime import Envelope, build_envelope
from mailcore.rendering import RenderedEmail
from mailcore.transports import (
    PermanentDeliveryError,
    TransientDeliveryError,
    UnconfirmedDeliveryError,
    transport_from_settings,
)
from mailcore.transports.smtp import SMTPTransport

from .support import DroppingHandler, RecordingHandler, SMTPServer, free_port, make_settings


@pytest.fixture
def server() -> Iterator[SMTPServer]:
    smtp = SMTPServer()
    smtp.start()
    yield smtp
    smtp.stop()


def envelope(*to: str, message_id: str = "m1") -> Envelope:
    return build_envelope(
        message_id=message_id,
        rendered=RenderedEmail(subject="Hello", html="<p>Hi</p>", text="Hi\n"),
        sender=Recipient(email="noreply@shop.example.com", name="Shop"),
        to=[Recipient(email=address) for address in to],
    )


def test_connection_is_reused_across_messages(server: SMTPServer) -> None:
    transport = SMTPTransport("127.0.0.1", server.port, security="none", timeout=5)
    for i in range(5):
        result = transport.send(envelope("a@example.com", message_id=f"m{i}"))
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
    assert soft.value.smtp_code == 452 and "Mailbox full" in str(soft.value)
    assert not soft.value.before_accept  # refused after the body went out: no failover
    with pytest.raises(PermanentDeliveryError) as hard:
        transport.send(envelope("hard@example.com"))
    assert hard.value.smtp_code == 554
    # The session survives refusals: the next message goes out on it.
    transport.send(envelope("ok@example.com"))
    assert len(server.handler.to("ok@example.com")) == 1
    transport.close()


def test_unreachable_server_is_transient() -> None:
    transport = SMTPTransport("127.0.0.1", free_port(), security="none", timeout=2)
    with pytest.raises(TransientDeliveryError) as refused:
        transport.send(envelope("a@example.com"))
    assert refused.value.before_accept  # a failover chain may hand it on


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("stage", ["MAIL", "RCPT"])
def test_a_4xx_before_data_is_before_accept(stage: str, pipelining: bool) -> None:
    class Busy(RecordingHandler):
        async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                              mail_options: list[str]) -> str:
            if stage == "MAIL":
                return "451 4.3.0 busy"
            envelope.mail_from = address
            return "250 OK"

        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                              rcpt_options: list[str]) -> str:
            return "451 4.3.0 busy"

    port = free_port()
    controller = Controller(Busy(pipelining=pipelining), hostname="127.0.0.1", port=port)
    controller.start()
    transport = SMTPTransport("127.0.0.1", port, security="none", timeout=2)
    try:
        with pytest.raises(TransientDeliveryError) as busy:
            transport.send(envelope("a@example.com"))
        assert busy.value.smtp_code == 451 and busy.value.before_accept
    finally:
        transport.close()
        controller.stop()


def test_starttls_required_but_not_offered_is_permanent(server: SMTPServer) -> None:
    transport = SMTPTransport("127.0.0.1", server.port, security="starttls", timeout=5)
    with pytest.raises(PermanentDeliveryError, match="STARTTLS") as refused:
        transport.send(envelope("a@example.com"))
    assert refused.value.before_accept


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
        settings = make_settings(SMTP_HOST="127.0.0.1", SMTP_PORT=str(port),
                                 SMTP_SECURITY=security, SMTP_USERNAME="relay-user",
                                 SMTP_PASSWORD="relay-pass", SMTP_CA_FILE=str(cert),
                                 SMTP_TIMEOUT="5")
        transport = transport_from_settings(settings)
        transport.send(envelope("tls@example.com"))
        assert len(handler.to("tls@example.com")) == 1
        transport.close()

        wrong_password = SMTPTransport(
            "127.0.0.1", port, security=security, username="relay-user",  # type: ignore[arg-type]
            password="nope", timeout=5, ssl_context=ssl.create_default_context(cafile=str(cert)))
        with pytest.raises(PermanentDeliveryError) as refused:
            wrong_password.send(envelope("wrong@example.com"))
        assert refused.value.smtp_code == 535
        # Last, as aiosmtpd serves no further STARTTLS session after a failed handshake.
        # Without trusting the private CA the certificate is refused: never sent in clear.
        untrusting = SMTPTransport("127.0.0.1", port, security=security,  # type: ignore[arg-type]
                                   username="relay-user", password="relay-pass", timeout=5)
        with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.send(envelope("untrusted@example.com"))
        assert handler.to("untrusted@example.com") == handler.to("wrong@example.com") == []
    finally:
        controller.stop()


# --- PIPELINING (RFC 2920) and the body on the wire ---------------------------------------------

class WithholdingRelay:
    """A relay that offers PIPELINING and answers nothing until DATA has arrived: a client that
    waits for each reply (no pipelining) stalls against it and times out."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.refuse = refuse
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.envelopes: list[list[bytes]] = []
        self.bodies: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 relay ready\r\n")
            lines.readline()  # EHLO
            conn.sendall(b"250-relay\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
            while True:
                commands = [lines.readline()]
                if commands[0].upper().startswith(b"QUIT"):
                    conn.sendall(b"221 bye\r\n")
                    return
                while commands[-1] and commands[-1] != b"DATA\r\n":
                    commands.append(lines.readline())
                self.envelopes.append(commands)
                replies = [b"250 sender ok\r\n"]
                for command in commands[1:-1]:
                    address = command.decode().partition("<")[2].rstrip(">\r\n")
                    replies.append(b"550 no such user\r\n" if address in self.refuse
                                   else b"250 recipient ok\r\n")
                conn.sendall(b"".join(replies) + b"354 go ahead\r\n")
                body = b""
                while not body.endswith(b"\r\n.\r\n"):
                    body += lines.readline()
                self.bodies.append(body)
                conn.sendall(b"250 2.0.0 queued as P1\r\n")

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=5)


def test_envelope_commands_are_pipelined_in_one_write() -> None:
    relay = WithholdingRelay(refuse=frozenset({"gone@example.com"}))
    transport = SMTPTransport("127.0.0.1", relay.port, security="none", timeout=3)
    message = envelope("a@example.com", "gone@example.com", message_id="p1")
    try:
        result = transport.send(message)
    finally:
        transport.close()
        relay.close()
    assert result.response == "250 2.0.0 queued as P1"
    assert result.refused == {"gone@example.com": "550 no such user"}
    [commands] = relay.envelopes
    mail_from = f"MAIL FROM:<noreply@shop.example.com> SIZE={len(message.raw)}\r\n"
    assert commands == [mail_from.encode(), b"RCPT TO:<a@example.com>\r\n",
                        b"RCPT TO:<gone@example.com>\r\n", b"DATA\r\n"]
    assert relay.bodies == [message.raw + b".\r\n"]


@pytest.mark.parametrize("pipelining", [True, False])
def test_body_is_dot_stuffed_and_line_ends_made_crlf(pipelining: bool) -> None:
    smtp = SMTPServer()
    smtp.handler.pipelining = pipelining
    smtp.start()
    raw = b"Subject: dots\r\n\r\n.starts with a dot\r\n.\r\n..two\r\nbare\nlf and bare\rcr"
    transport = SMTPTransport("127.0.0.1", smtp.port, security="none", timeout=5)
    try:
        transport.send(Envelope(message_id="d1", sender="s@example.com",
                                recipients=("d@example.com",), raw=raw))
    finally:
        transport.close()
        smtp.stop()
    [received] = smtp.handler.to("d@example.com")
    # What arrives is the message itself: stuffing undone by the server, every line end CRLF.
    assert received.data.rstrip(b"\r\n") == (b"Subject: dots\r\n\r\n.starts with a dot\r\n.\r\n"
                                             b"..two\r\nbare\r\nlf and bare\r\ncr")


@pytest.mark.parametrize("pipelining", [True, False])
def test_partly_and_wholly_refused_recipients(pipelining: bool) -> None:
    class Refusing(RecordingHandler):
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                              rcpt_options: list[str]) -> str:
            if address.startswith("gone"):
                return "550 5.1.1 no such user"
            if address.startswith("later"):
                return "450 4.2.1 try later"
            envelope.rcpt_tos.append(address)
            return "250 OK"

    handler = Refusing(pipelining=pipelining)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    transport = SMTPTransport("127.0.0.1", port, security="none", timeout=5)
    try:
        result = transport.send(envelope("ok@example.com", "gone@example.com", message_id="r1"))
        assert result.refused == {"gone@example.com": "550 5.1.1 no such user"}
        assert [m.rcpt_tos for m in handler.received] == [["ok@example.com"]]
        with pytest.raises(PermanentDeliveryError, match="no such user") as hard:
            transport.send(envelope("gone@example.com"))
        assert hard.value.smtp_code == 550
        with pytest.raises(TransientDeliveryError, match="try later"):
            transport.send(envelope("later@example.com"))
        # The session is still good after the refusals.
        transport.send(envelope("ok@example.com", message_id="r4"))
        assert len(handler.to("ok@example.com")) == 2
        assert len(set(handler.peers)) == 1
    finally:
        transport.close()
        controller.stop()


# --- The ambiguous outcome: the whole message went out, the reply never came -------------------

@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("how", ["close", "abort", "silent"])
def test_a_reply_lost_after_the_final_dot_is_unconfirmed(how: str, pipelining: bool) -> None:
    handler = DroppingHandler(pipelining=pipelining, drop={"a@example.com": [how]})
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    transport = SMTPTransport("127.0.0.1", port, security="none", timeout=1)
    message = envelope("a@example.com", message_id="u1")
    try:
        with pytest.raises(UnconfirmedDeliveryError, match="unconfirmed") as lost:
            transport.send(message)
        assert isinstance(lost.value, TransientDeliveryError)  # retried...
        assert lost.value.outcome == "unconfirmed"  # ...and recorded as such
        assert not lost.value.before_accept  # ...and never handed to another transport
        # The relay did have the whole message.
        [kept] = handler.dropped
        assert kept.data.rstrip(b"\r\n") == message.raw.rstrip(b"\r\n")
        # The session was dropped; the next message goes out on a new one.
        transport.send(envelope("a@example.com", message_id="u2"))
        assert [m.message["Message-ID"] for m in handler.to("a@example.com")] == [
            "<u2@shop.example.com>"]
    finally:
        transport.close()
        controller.stop()


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_connection_lost_before_the_message_went_out_is_an_ordinary_failure(
        pipelining: bool) -> None:
    class DropsAtRcpt(RecordingHandler):
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                              rcpt_options: list[str]) -> str:
            server.transport.close()
            return "250 OK"

    port = free_port()
    controller = Controller(DropsAtRcpt(pipelining=pipelining), hostname="127.0.0.1", port=port)
    controller.start()
    transport = SMTPTransport("127.0.0.1", port, security="none", timeout=2)
    try:
        with pytest.raises(TransientDeliveryError) as failed:
            transport.send(envelope("a@example.com"))
        assert not isinstance(failed.value, UnconfirmedDeliveryError)
        assert failed.value.outcome is None and failed.value.before_accept
    finally:
        transport.close()
        controller.stop()
