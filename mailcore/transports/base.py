"""The transport plug-in point: one small base class, one module per way of delivering."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..errors import (
    ConfigurationDeliveryError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnconfirmedDeliveryError,
)
from ..mime import Envelope

# The delivery errors live in the domain's one hierarchy (mailcore.errors); transports import
# them from here, beside the base class they raise them from.
__all__ = ["ConfigurationDeliveryError", "DeliveryError", "DeliveryResult",
           "PermanentDeliveryError", "TransientDeliveryError", "Transport",
           "UnconfirmedDeliveryError"]


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
