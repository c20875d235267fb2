"""SMTP delivery with one reused connection per worker thread, pipelined where the relay allows."""

from __future__ import annotations

import functools
import re
import smtplib
import socket
import ssl
import threading
from typing import Literal

from ..mime import Envelope
from .base import (
    ConfigurationDeliveryError,
    DeliveryResult,
    PermanentDeliveryError,
    TransientDeliveryError,
    Transport,
    UnconfirmedDeliveryError,
)

_quoteaddr_cached = functools.lru_cache(maxsize=4096)(smtplib.quoteaddr)


def quoteaddr(address: str) -> str:
    """``smtplib.quoteaddr``, remembered: it runs email.utils.parseaddr (10-20 µs an address)
    and depends on the text alone, and the sender and many recipients recur. At most 4,096
    addresses of up to 320 characters are kept (a longer one is quoted every time)."""
    if len(address) > 320:
        return smtplib.quoteaddr(address)
    return _quoteaddr_cached(address)


class SMTPTransport(Transport):
    """Delivers through an SMTP relay.

    Each thread keeps its connection open between messages and opens a new one after any error,
    so a burst pays the connect, TLS and AUTH round trips once per thread, not once per email.
    With a relay that offers PIPELINING (RFC 2920; Postfix, Exchange, SES and the hosted
    providers all do) MAIL, RCPT and DATA go out in one write, so a message costs two round
    trips instead of three plus one per recipient.

    Parameters:
      host, port: the relay.
      security: ``starttls`` (upgrade, required), ``ssl`` (implicit TLS) or ``none``.
      username, password: AUTH credentials; AUTH is skipped when both are empty.
      timeout: seconds for the connect and for each command.
      ssl_context: TLS settings; the system's trust store by default.
    """

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: Literal["starttls", "ssl", "none"] = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self.password = password
        self.timeout = timeout
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.local_hostname = local_hostname
        self._local = threading.local()
        self._all: set[smtplib.SMTP] = set()
        self._all_lock = threading.Lock()

    def send(self, envelope: Envelope) -> DeliveryResult:
        raw = envelope.as_bytes()
        reused = getattr(self._local, "conn", None) is not None
        conn: _RecordingSMTP | None = None
        try:
            conn = self._connection()
            try:
                refused = conn.transaction(envelope.sender, envelope.recipients, raw)
            except smtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                # The relay closed our idle connection before it saw the message (a drop after
                # the body went out is a different error): nothing was accepted; reconnect once.
                self._drop()
                conn = None
                conn = self._connection()
                refused = conn.transaction(envelope.sender, envelope.recipients, raw)
        except smtplib.SMTPRecipientsRefused as exc:
            self._reset()
            codes = {addr: f"{code} {_text(msg)}" for addr, (code, msg) in exc.recipients.items()}
            detail = "; ".join(f"{addr}: {reply}" for addr, reply in codes.items())
            first = min(code for code, _ in exc.recipients.values())
            if all(400 <= code < 500 for code, _ in exc.recipients.values()):
                raise TransientDeliveryError(f"all recipients refused: {detail}", first,
                                             before_accept=True) from exc
            refused_error = PermanentDeliveryError(f"all recipients refused: {detail}", first)
            refused_error.refused = codes
            raise refused_error from exc
        except BodyUnconfirmed as exc:
            self._drop()
            raise UnconfirmedDeliveryError(str(exc)) from exc
        except smtplib.SMTPAuthenticationError as exc:
            self._drop()
            if exc.smtp_code < 500:
                raise TransientDeliveryError(_text(exc.smtp_error), exc.smtp_code,
                                             before_accept=True) from exc
            raise ConfigurationDeliveryError(
                f"the relay refused our credentials (SMTP_USERNAME/SMTP_PASSWORD): "
                f"{_text(exc.smtp_error)}", exc.smtp_code, before_accept=True) from exc
        except smtplib.SMTPResponseException as exc:
            before = _before_body(conn)
            self._reset()
            if exc.smtp_code < 500:
                raise TransientDeliveryError(_text(exc.smtp_error), exc.smtp_code,
                                             before_accept=before) from exc
            raise PermanentDeliveryError(_text(exc.smtp_error), exc.smtp_code) from exc
        except (smtplib.SMTPException, OSError) as exc:
            before = _before_body(conn)
            self._drop()
            raise TransientDeliveryError(f"{type(exc).__name__}: {exc}",
                                         before_accept=before) from exc
        except BaseException:
            # Interrupted mid-conversation (Dramatiq's time limit): the session's state is
            # unknown, so it is closed without a QUIT, never reused.
            self._drop(polite=False)
            raise
        return DeliveryResult(
            transport=self.name,
            response=conn.last_reply,
            refused={addr: f"{code} {_text(msg)}" for addr, (code, msg) in refused.items()},
        )

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = list(self._all), set()
        for conn in conns:
            _quit(conn)
        self._local = threading.local()

    def _connection(self) -> _RecordingSMTP:
        conn: _RecordingSMTP | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = self._open()
        self._local.conn = conn
        with self._all_lock:
            self._all.add(conn)
        return conn

    def _open(self) -> _RecordingSMTP:
        try:
            if self.security == "ssl":
                conn: _RecordingSMTP = _RecordingSMTPSSL(
                    self.host, self.port, timeout=self.timeout,
                    local_hostname=self.local_hostname, context=self.ssl_context,
                )
            else:
                conn = _RecordingSMTP(self.host, self.port, timeout=self.timeout,
                                      local_hostname=self.local_hostname)
        except socket.gaierror as exc:
            raise TransientDeliveryError(f"cannot resolve {self.host}: {exc}") from exc
        try:
            conn.ehlo()
            if self.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise ConfigurationDeliveryError(
                        f"{self.host}:{self.port} does not offer STARTTLS "
                        "(set SMTP_SECURITY=none only for a trusted local relay)",
                        before_accept=True,
                    )
                conn.starttls(context=self.ssl_context)
                conn.ehlo()
            if self.username or self.password:
                conn.login(self.username or "", self.password or "")
        except BaseException:
            _quit(conn)
            raise
        return conn

    def _reset(self) -> None:
        """After a refused message the session is still usable once RSET succeeds."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        try:
            conn.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop(self, *, polite: bool = True) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._all_lock:
                self._all.discard(conn)
            if polite:
                _quit(conn)
            else:
                conn.close()


_BARE_EOL = re.compile(rb"\r\n|\r|\n")


class BodyUnconfirmed(OSError):
    """The connection failed after the message body went out: the relay may have it."""


class _RecordingSMTP(smtplib.SMTP):
    """An SMTP session that sends a whole transaction, pipelined when the relay offers it, and
    keeps the server's final reply (``250 ... queued as X``) for the delivery record."""

    last_reply = ""
    #: Whether the current transaction's body has started to go out (after it, a failure may
    #: leave a copy at the relay: no failover).
    body_started = False

    def transaction(self, sender: str, recipients: tuple[str, ...], raw: bytes
                    ) -> dict[str, tuple[int, bytes]]:
        """Send one message; returns the refused recipients and raises what ``sendmail`` raises
        (the caller resets the session after a refusal), or ``BodyUnconfirmed``."""
        self.body_started = False
        self.ehlo_or_helo_if_needed()
        if not self.has_extn("pipelining"):
            return self._lockstep(sender, recipients, raw)
        options = f" SIZE={len(raw)}" if self.has_extn("size") else ""
        commands = [f"MAIL FROM:{quoteaddr(sender)}{options}\r\n"]
        commands += [f"RCPT TO:{quoteaddr(rcpt)}\r\n" for rcpt in recipients]
        commands.append("DATA\r\n")
        self.send("".join(commands))
        mail_reply = self.getreply()
        refused = {}
        for rcpt in recipients:
            code, reply = self.getreply()
            if code not in (250, 251):
                refused[rcpt] = (code, reply)
        data_code, data_reply = self.getreply()
        if data_code == 354 and (mail_reply[0] != 250 or len(refused) == len(recipients)):
            # A relay that said 354 regardless gets an empty body, which it must refuse.
            self.send(".\r\n")
            self.getreply()
        if mail_reply[0] != 250:
            raise smtplib.SMTPSenderRefused(mail_reply[0], mail_reply[1], sender)
        if len(refused) == len(recipients):
            raise smtplib.SMTPRecipientsRefused(refused)
        if data_code != 354:
            raise smtplib.SMTPDataError(data_code, data_reply)
        self._body(raw)
        return refused

    def _lockstep(self, sender: str, recipients: tuple[str, ...], raw: bytes
                  ) -> dict[str, tuple[int, bytes]]:
        """One command, one reply (a relay without PIPELINING)."""
        options = [f"SIZE={len(raw)}"] if self.has_extn("size") else []
        code, reply = self.mail(sender, options)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, sender)
        refused = {}
        for rcpt in recipients:
            code, reply = self.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = (code, reply)
        if len(refused) == len(recipients):
            raise smtplib.SMTPRecipientsRefused(refused)
        code, reply = self.docmd("data")
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        self._body(raw)
        return refused

    def _body(self, raw: bytes) -> None:
        """Dot-stuff and send the body, then take the final reply."""
        crlf = raw.count(b"\r\n")
        if raw.count(b"\r") != crlf or raw.count(b"\n") != crlf:
            raw = _BARE_EOL.sub(b"\r\n", raw)
        stuffed = raw.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        ending = b".\r\n" if stuffed.endswith(b"\r\n") else b"\r\n.\r\n"
        # A failed write means the final "." never left: an ordinary transient failure. Once
        # it has, a lost reply leaves the outcome unknown.
        self.body_started = True
        self.send(stuffed + ending)
        try:
            code, reply = self.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise BodyUnconfirmed(
                f"unconfirmed: the connection was lost after the whole message was sent, before "
                f"the relay's reply; it may have been accepted ({exc})") from exc
        self.last_reply = f"{code} {_text(reply)}"
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)


class _RecordingSMTPSSL(_RecordingSMTP, smtplib.SMTP_SSL):
    pass


def _before_body(conn: _RecordingSMTP | None) -> bool:
    """Whether a failure came before any of the body went out (no session yet, or refused at
    MAIL, RCPT or DATA): the relay cannot have the message."""
    return conn is None or not conn.body_started


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _quit(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        conn.close()
