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
    if settings.transport == "outbox":
        from .outbox import OutboxTransport

        return OutboxTransport(settings.outbox_dir)
    import ssl

    from .smtp import SMTPTransport

    context = ssl.create_default_context(
        cafile=str(settings.smtp_ca_file) if settings.smtp_ca_file else None
    )
    return SMTPTransport(
        settings.smtp_host,
        settings.smtp_port,
        security=settings.smtp_security,
        username=settings.smtp_username,
        password=settings.smtp_password,
        timeout=settings.smtp_timeout,
        ssl_context=context,
    )


__all__ = [
    "DeliveryError", "DeliveryResult", "PermanentDeliveryError", "TransientDeliveryError",
    "Transport", "UnconfirmedDeliveryError", "transport_from_settings",
]
