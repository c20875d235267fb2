"""Running the receiver: the SMTP (or LMTP) listener and a small HTTP server for the probes and
Prometheus, in one event loop, until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import uvicorn
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailcore.bounce_record import Recording
from mailcore.config import ConfigError, Settings
from mailcore.redisclient import async_client

from .handler import BounceHandler
from .metrics import BounceMetrics

log = logging.getLogger("email_service.bounces")
SERVICE = "email-service-bounces"
#: Seconds an SMTP client may stay silent before it is disconnected.
IDLE_TIMEOUT = 60.0


class _Sessions:
    """Open SMTP/LMTP sessions of this process, against ``limit``."""

    def __init__(self, limit: int, metrics: BounceMetrics) -> None:
        self.limit = limit
        self.open = 0
        self.metrics = metrics


def bounded(protocol: type[Any], sessions: _Sessions) -> type[Any]:
    """``protocol`` (aiosmtpd's SMTP or LMTP) admitting at most ``sessions.limit`` sessions at
    once: one more is told ``421`` (the relay tries again later) and closed before a greeting."""

    class Bounded(protocol):  # type: ignore[misc]
        _admitted = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if sessions.open >= sessions.limit:
                sessions.metrics.reports.labels("too_busy").inc()
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(b"421 4.3.2 Too many connections, try again later\r\n")
                transport.close()
                return
            self._admitted = True
            sessions.open += 1
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._admitted:
                return
            self._admitted = False
            sessions.open -= 1
            super().connection_lost(exc)

    return Bounded


def probe_app(client: Redis, metrics: BounceMetrics) -> Starlette:
    """``/health`` (the process runs), ``/ready`` (and Redis answers), ``/metrics``."""

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "healthy", "service": SERVICE})

    async def ready(request: Request) -> JSONResponse:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            return JSONResponse({"status": "unavailable", "service": SERVICE,
                                 "reason": f"redis: {exc}"}, status_code=503)
        return JSONResponse({"status": "ready", "service": SERVICE})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[Route("/health", health), Route("/ready", ready),
                             Route("/metrics", metrics_endpoint)])


async def serve(settings: Settings, *, host: str | None = None, port: int | None = None,
                http_port: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT."""
    bounces = settings.bounces
    if not bounces.domain:
        raise ConfigError("BOUNCE_DOMAIN: required by `email-service bounces` (the domain of "
                          "the envelope senders it receives reports for)")
    client = async_client(settings.redis.where, "ingress")
    metrics = BounceMetrics()
    handler = BounceHandler(bounces, Recording(client, settings.redis.key_prefix,
                                               settings.limits.status_retention_seconds,
                                               emit_events=settings.webhooks.enabled),
                            metrics, lmtp=bounces.lmtp)
    protocol = bounded(LMTP if bounces.lmtp else SMTP,
                       _Sessions(bounces.max_connections, metrics))
    loop = asyncio.get_running_loop()
    smtp_server = await loop.create_server(
        lambda: protocol(handler, data_size_limit=bounces.max_message_bytes,
                         enable_SMTPUTF8=False, decode_data=False, timeout=IDLE_TIMEOUT,
                         hostname=bounces.domain, loop=loop),
        host=host or bounces.host, port=port or bounces.port)
    http = uvicorn.Server(uvicorn.Config(
        probe_app(client, metrics), host=host or bounces.host,
        port=http_port or bounces.http_port, log_config=None, access_log=False))
    log.info("receiving bounce reports for %s on %s:%d (%s)", bounces.domain,
             host or bounces.host, port or bounces.port, "LMTP" if bounces.lmtp else "SMTP")
    try:
        await http.serve()  # returns on SIGTERM/SIGINT (uvicorn's signal handling)
    finally:
        smtp_server.close()
        with contextlib.suppress(TimeoutError):  # sessions still open are cut
            await asyncio.wait_for(smtp_server.wait_closed(), 5)
        await client.aclose()
