"""Running the receiver: the SMTP (or LMTP) listener and a small HTTP server for the probes and
Prometheus, in one event loop, until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging

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
                                               settings.limits.status_retention_seconds),
                            metrics, lmtp=bounces.lmtp)
    protocol = LMTP if bounces.lmtp else SMTP
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
