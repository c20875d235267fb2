"""The environment of a service process started against a private Redis and SMTP server."""

from __future__ import annotations

import os

#: Variables of the calling shell that must not leak into a service under test.
_FOREIGN = ("REDIS_", "SMTP_", "JWT_", "SENDER_", "EMAIL_SERVICE_", "MAILTRAP_", "TRANSPORT",
            "WEBHOOKS_",
            "DKIM_", "FAILOVER_", "EMAIL_SENDER", "COMPANY_NAME", "SUPPORT_EMAIL", "SANDBOX_",
            "RECIPIENT_ALLOWLIST", "REDIRECT_ALL_TO", "BOUNCE", "SCHEDULE_", "WORKER_STREAMS",
            "BULK_QUEUE_NAME")


def service_env(redis_url: str, smtp_port: int, secret: str, **overrides: str) -> dict[str, str]:
    """This process's environment without stray service settings, pointed at ``redis_url`` and
    a plain SMTP server on ``smtp_port``, with ``secret`` as the JWT secret and no secret
    files; ``overrides`` last."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_FOREIGN)}
    env.update(
        REDIS_URL=redis_url,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        SMTP_SECURITY="none",
        SENDER_EMAIL="noreply@shop.example.com",
        SENDER_NAME="Shop",
        JWT_SECRET=secret,
        SECRETS_DIR="/nonexistent",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env
