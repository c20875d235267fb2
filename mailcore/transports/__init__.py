"""Delivery transports: ``smtp`` for relays, ``outbox`` for a local folder."""

from __future__ import annotations

from ..config import Settings
from .base import (
    DeliveryError,
    DeliveryResult,
    PermanentDeliveryError,
    TransientDeliveryError,
    Transport,
    UnconfirmedDeliveryError,
)


def transport_from_settings(settings: Settings) -> Transport:
    """The transport the configuration names."""
    if settings.worker.transport == "outbox":
        from .outbox import OutboxTransport

        return OutboxTransport(settings.worker.outbox_dir)
    import ssl

    from .smtp import SMTPTransport

    context = ssl.create_default_context(
        cafile=str(settings.smtp.ca_file) if settings.smtp.ca_file else None
    )
    return SMTPTransport(
        settings.smtp.host,
        settings.smtp.port,
        security=settings.smtp.security,
        username=settings.smtp.username,
        password=settings.smtp.password,
        timeout=settings.smtp.timeout,
        ssl_context=context,
    )


__all__ = [
    "DeliveryError", "DeliveryResult", "PermanentDeliveryError", "TransientDeliveryError",
    "Transport", "UnconfirmedDeliveryError", "transport_from_settings",
]
