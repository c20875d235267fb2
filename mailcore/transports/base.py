"""The transport plug-in point: one small base class, one module per way of delivering."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..mime import Envelope


class DeliveryError(Exception):
    """Delivery failed.

    Parameters:
      message: what happened, for logs and status.
      code: the server's reply code (SMTP or HTTP) when there was one.
    """

    #: Whether trying again later may succeed.
    transient = True
    #: What became of the attempt, when that is more than "failed" (see subclasses).
    outcome: str | None = None

    def __init__(self, message: str, code: int | None = None, *,
                 before_accept: bool = False, retry_after: float | None = None) -> None:
        super().__init__(f"{code} {message}" if code else message)
        self.code = code
        self.text = message
        #: The server cannot have accepted the message (it was refused before the body went
        #: out, or never reached it): another transport may take it in the same attempt.
        self.before_accept = before_accept
        #: Seconds the server asked us to wait (HTTP ``Retry-After``), when it said.
        self.retry_after = retry_after
        #: Transports that failed before this error, in a failover chain.
        self.failures: tuple[tuple[str, DeliveryError], ...] = ()
        #: The transport that raised it, when a chain knows (see ``Envelope.only_via``).
        self.via: str | None = None


class TransientDeliveryError(DeliveryError):
    """Try again later: connection trouble, timeouts, 4xx replies."""


class UnconfirmedDeliveryError(TransientDeliveryError):
    """The whole message went out but the relay's reply never came (the connection broke or
    timed out after the final ``.``): the relay may have accepted it. Retried like any transient
    failure — with the same Message-ID, so a copy the relay did accept can be recognised — and
    recorded as ``unconfirmed``."""

    #: The attempt's outcome, for the status timeline.
    outcome = "unconfirmed"

    def __init__(self, message: str, code: int | None = None) -> None:
        # Never "before accept": failing over now could deliver the message twice.
        super().__init__(message, code)


class PermanentDeliveryError(DeliveryError):
    """Do not try again: the server refused the message for good (5xx replies)."""

    transient = False


class ConfigurationDeliveryError(PermanentDeliveryError):
    """The transport's own configuration is wrong (a refused API token): every message will
    fail the same way until an operator fixes it, so it is logged and counted loudly."""

    outcome = "misconfigured"


@dataclass(frozen=True)
class DeliveryResult:
    """The accepted outcome of a send.

    Parameters:
      transport: the transport's name.
      response: the server's final reply (e.g. ``250 2.0.0 Ok: queued as ...``).
      refused: recipients the server refused while accepting the others.
      failures: earlier transports that failed before accepting (failover).
    """

    transport: str
    response: str = ""
    refused: dict[str, str] = field(default_factory=dict)
    #: Transports that failed before this one delivered (failover), with their errors.
    failures: tuple[tuple[str, DeliveryError], ...] = ()


class Transport(ABC):
    """Delivers envelopes. Implementations must be safe to call from several threads."""

    #: Short name used in logs, status and configuration.
    name: str = "base"

    @abstractmethod
    def send(self, envelope: Envelope) -> DeliveryResult:
        """Deliver, or raise :class:`TransientDeliveryError` / :class:`PermanentDeliveryError`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (worker shutdown)."""
