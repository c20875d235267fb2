"""Delivery transports: ``smtp`` for relays, ``mailtrap`` for Mailtrap's sending API,
``outbox`` for a local folder; ``failover`` chains several (``TRANSPORTS=smtp,mailtrap``)."""

from __future__ import annotations

from ..config import Settings, TransportName
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
    if len(settings.transports) > 1:
        from .failover import FailoverTransport

        return FailoverTransport([_one(name, settings) for name in settings.transports],
                                 threshold=settings.failover_threshold,
                                 cooldown=settings.failover_cooldown_seconds)
    return _one(settings.transports[0], settings)


def _one(name: TransportName, settings: Settings) -> Transport:
    if name == "outbox":
        from .outbox import OutboxTransport

        return OutboxTransport(settings.outbox_dir)
    if name == "mailtrap":
        from .mailtrap import MailtrapTransport

        assert settings.mailtrap_api_token, "Settings.from_env requires the token"
        return MailtrapTransport(settings.mailtrap_api_token, base_url=settings.mailtrap_base_url,
                                 inbox_id=settings.mailtrap_sandbox_inbox_id,
                                 timeout=settings.mailtrap_timeout)
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
    "ConfigurationDeliveryError", "DeliveryError", "DeliveryResult", "PermanentDeliveryError",
    "TransientDeliveryError", "Transport", "UnconfirmedDeliveryError", "transport_from_settings",
]
