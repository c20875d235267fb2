"""What a worker process holds: broker, templates, transport and the deliverer using them."""

from __future__ import annotations

from dataclasses import dataclass

from dramatiq import Broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware, default_middleware

from mailcore.config import Settings
from mailcore.redaction import install as install_redacting_encoder
from mailcore.status import StatusStore
from mailcore.store import template_store_from_settings
from mailcore.telemetry import shutdown_tracing
from mailcore.templates import TemplateRegistry, builtin_templates_dir
from mailcore.transports import Transport, transport_from_settings

from .broker import make_broker
from .delivery import Deliverer
from .heartbeat import Heartbeat


class CloseConnections(Middleware):
    """Quit SMTP sessions politely and close the status connections once the worker threads
    have finished their sends."""

    def __init__(self, transport: Transport, status: StatusStore) -> None:
        self.transport = transport
        self.status = status

    def after_worker_shutdown(self, broker: Broker, worker: object) -> None:
        self.transport.close()
        self.status.close()
        shutdown_tracing()  # flush spans still buffered


@dataclass
class WorkerRuntime:
    broker: RedisBroker
    deliverer: Deliverer
    status: StatusStore


def build_runtime(settings: Settings) -> WorkerRuntime:
    install_redacting_encoder()  # jobs hold template data: their repr must not (logs)
    registry = TemplateRegistry.from_dir(builtin_templates_dir(settings.templates.dir),
                                         store=template_store_from_settings(settings))
    transport = transport_from_settings(settings)
    status = StatusStore.from_url(settings.redis.url, settings.redis.key_prefix,
                                  settings.limits.status_retention_seconds)
    middleware = [m() for m in default_middleware]
    middleware += [CurrentMessage(), CloseConnections(transport, status),
                   Heartbeat(settings.worker.heartbeat_dir, settings.worker.heartbeat_seconds)]
    broker = make_broker(
        settings.redis.url, middleware=middleware,
        heartbeat_timeout_ms=settings.worker.queue_heartbeat_timeout_ms,
        maintenance_chance=settings.worker.queue_maintenance_chance,
    )
    return WorkerRuntime(broker=broker, deliverer=Deliverer(settings, registry, transport),
                         status=status)
