"""A recording SMTP server (aiosmtpd, in this process) that can be told to refuse."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from .ports import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that records what arrives and can be told to refuse.

    ``plan[address]`` is a list of replies given to successive DATA attempts for a message whose
    recipients include ``address`` (e.g. ``["451 4.3.0 busy"]`` refuses once, then accepts).
    """

    received: list[Received] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    plan: dict[str, list[str]] = field(default_factory=dict)
    #: Client (host, port) of each accepted message: distinct values = distinct connections.
    peers: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Offer PIPELINING (RFC 2920) as production relays do; aiosmtpd reads pipelined commands
    #: in order but does not advertise the extension itself.
    pipelining: bool = True

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.attempts[rcpt] = self.attempts.get(rcpt, 0) + 1
            for rcpt in envelope.rcpt_tos:
                if self.plan.get(rcpt):
                    return self.plan[rcpt].pop(0)
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
            )
            self.peers.append(tuple(session.peer))
        return "250 2.0.0 Ok: queued"

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.received if address in m.rcpt_tos]


@dataclass
class DroppingHandler(RecordingHandler):
    """The recording relay, able to lose its reply to a message it has received.

    ``drop[address]`` lists what happens to successive messages for ``address``: ``close``
    (FIN), ``abort`` (RST) or ``silent`` (no reply until the client gives up). Each such message
    is read to its final ``.`` and kept in ``dropped`` — the relay has it — then not answered.
    """

    drop: dict[str, list[str]] = field(default_factory=dict)
    dropped: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            how = next((self.drop[rcpt].pop(0) for rcpt in envelope.rcpt_tos
                        if self.drop.get(rcpt)), None)
            if how is not None:
                self.dropped.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                             bytes(envelope.content)))
        if how is None:
            return await super().handle_DATA(server, session, envelope)
        if how == "abort":
            server.transport.abort()
        elif how == "close":
            server.transport.close()
        await asyncio.Event().wait()  # until aiosmtpd cancels us: the connection is gone
        raise AssertionError("unreachable")


class SMTPServer:
    """:class:`RecordingHandler` listening on a free port (``handler`` has what arrived)."""

    def __init__(self, port: int | None = None) -> None:
        self.handler = RecordingHandler()
        self.port = port or free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
