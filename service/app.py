"""The ingress application: wiring settings, Redis, templates and routes together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailcore.config import Settings
from mailcore.deadletters import DeadLetters
from mailcore.errors import EmailServiceError
from mailcore.heap import freeze_startup_objects
from mailcore.redisclient import async_client, sync_client
from mailcore.store import template_store_from_settings
from mailcore.telemetry import exporting
from mailcore.templates import TemplateRegistry, builtin_templates_dir
from mailcore.tokens import JWKSKeys, TokenVerifier

from .docs import docs_routes
from .errors import ApiError, error_response, handle_http_exception, http_error
from .events import EventListener
from .mailtrap_webhook import mailtrap_routes
from .metrics import IngressMetrics, MetricsMiddleware, count_rejection, metrics_endpoint
from .routes import routes
from .scheduling import routes as scheduling_routes
from .sending import SendService
from .suppressions_api import suppression_routes
from .unsubscribe_page import unsubscribe_routes
from .webhooks_api import WebhookState
from .webhooks_api import routes as webhook_routes

log = logging.getLogger("email_service.ingress")


#: Routes that enqueue: only their Redis failures are enqueue failures.
SEND_ROUTES = frozenset({"/v1/messages", "/v1/messages/batch", "/email-service/send-reset-code",
                         "/api/order-confirmation"})


async def handle_redis_error(request: Request, exc: Exception) -> Response:
    """Redis is unreachable: nothing was written; the caller should retry."""
    log.error("redis unavailable: %s", exc)
    if getattr(request.scope.get("route"), "path", None) in SEND_ROUTES:
        request.app.state.metrics.enqueue_failures.labels("redis").inc()
    return await handle_error(request, ApiError(503, "unavailable",
                                                "the queue is unavailable; retry later",
                                                headers={"Retry-After": "5"}))


async def handle_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, EmailServiceError):  # not translated by the route: the default mapping
        exc = http_error(exc)
    assert isinstance(exc, ApiError)
    count_rejection(request, exc.code)
    return error_response(exc)


def _tracing_middleware() -> list[Middleware]:
    # The request's server span (continuing a caller's traceparent) only when spans are
    # exported: the ASGI instrumentation costs the door CPU even unrecorded. Without
    # it the enqueue span starts the trace, whose ids still tie ingress and worker logs together.
    if not exporting():
        return []
    return [Middleware(OpenTelemetryMiddleware, excluded_urls="health,ready,metrics",
                       exclude_spans=["receive", "send"])]  # one span per request, not per message


def create_app(settings: Settings, *, dev_secret: str | None = None,
               freeze_heap: bool = False) -> Starlette:
    """The Starlette app. Refuses to build without token keys outside development mode.
    ``freeze_heap``: the server freezes its start-up objects once started (mailcore/heap.py)."""
    settings.auth.require_keys()
    secret = settings.auth.secret or dev_secret
    jwks = None
    if settings.auth.jwks_url or settings.auth.jwks_file:
        jwks = JWKSKeys(url=settings.auth.jwks_url, path=settings.auth.jwks_file)
    if not secret and jwks is None:
        raise ValueError("JWT_SECRET: development mode needs a minted secret")
    registry = TemplateRegistry.from_dir(builtin_templates_dir(settings.templates.dir),
                                         store=template_store_from_settings(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = async_client(settings.redis.where, "ingress")
        admin_client = sync_client(settings.redis.where, "admin")
        service = SendService(settings, registry, client, metrics=app.state.metrics)
        app.state.redis = client
        app.state.admin_redis = admin_client  # synchronous: admin work in the worker thread
        app.state.send_service = service
        # Each stream's queue has its own dead letters (``?stream=`` on the endpoints).
        app.state.dead_letters = {
            stream: DeadLetters(admin_client, queue, settings.redis.key_prefix,
                                settings.limits.status_retention_seconds,
                                emit_events=settings.webhooks.enabled)
            for stream, queue in settings.queues.items()}
        app.state.webhooks = WebhookState(settings, admin_client)
        listener_task = None
        app.state.event_listener = None
        if settings.events.enabled:
            listener = EventListener(settings, service)
            app.state.event_listener = listener
            # run_forever restarts the listener whenever it stops; /ready reports it.
            listener_task = asyncio.create_task(listener.run_forever(),
                                                name="password-reset-events")
        app.state.event_listener_task = listener_task
        if freeze_heap:  # the server, ready to serve (mailcore/heap.py); not tests' many apps
            freeze_startup_objects()
        try:
            yield
        finally:
            if listener_task is not None:
                listener_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener_task
            await client.aclose()
            admin_client.close()

    metrics = IngressMetrics()
    app = Starlette(
        routes=[*routes, *scheduling_routes, *suppression_routes(), *unsubscribe_routes(),
                *webhook_routes, *docs_routes(),
                Route("/metrics", metrics_endpoint, methods=["GET"]),
                *mailtrap_routes(settings, metrics.registry)],
        lifespan=lifespan,
        middleware=[*_tracing_middleware(), Middleware(MetricsMiddleware, metrics=metrics)],
        exception_handlers={ApiError: handle_error, EmailServiceError: handle_error,
                            HTTPException: handle_http_exception, RedisError: handle_redis_error},
    )
    app.state.metrics = metrics
    app.state.verifier = TokenVerifier(
        secret, jwks=jwks, audience=settings.auth.audience, issuer=settings.auth.issuer,
        leeway=settings.auth.leeway_seconds, max_lifetime=settings.auth.max_lifetime,
    )
    return app
