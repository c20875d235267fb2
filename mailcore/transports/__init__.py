"""Delivery transports: ``smtp`` for relays, ``mailtrap`` for Mailtrap's sending API,
``outbox`` for a local folder; ``failover`` chains several (``TRANSPORTS=smtp,mailtrap``)."""

from __future__ import annotations

from ..config import Settings
from .base import (
    ConfigurationDeliveryError,
    DeliveryError,
    DeliveryResult,
    PermanentDeliveryError,
    TransientDeliveryError,
    Transport,
    UnconfirmedDeliveryError,
)


def transport_from_settings(settings: Settings) -> Transport:
    """The transport the configuration names (a failover chain when it names several)."""
    names = settings.transports
    if len(names) > 1:
        from .failover import FailoverTransport

        return FailoverTransport([_one(name, settings) for name in names],
                                 threshold=settings.transport.failover_threshold,
                                 cooldown=settings.transport.failover_cooldown_seconds)
    return _one(names[0], settings)


def _one(name: str, settings: Settings) -> Transport:
    if name == "outbox":
        from .outbox import OutboxTransport

        return OutboxTransport(settings.worker.outbox_dir)
    if name == "mailtrap":
        from .mailtrap import MailtrapTransport

        mailtrap = settings.transport
        assert mailtrap.mailtrap_api_token, "Settings.from_env requires the token"
        return MailtrapTransport(mailtrap.mailtrap_api_token, base_url=mailtrap.mailtrap_base_url,
                                 inbox_id=mailtrap.mailtrap_sandbox_inbox_id,
                                 timeout=mailtrap.mailtrap_timeout)
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
    "ConfigurationDeliveryError", "DeliveryError", "DeliveryResult", "PermanentDeliveryError",
    "TransientDeliveryError", "Transport", "UnconfirmedDeliveryError", "transport_from_settings",
]
