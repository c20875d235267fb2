"""What a worker process holds: broker, templates, transport and the deliverer using them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from dramatiq import Broker
from dramatiq.common import q_name
from dramatiq.middleware import CurrentMessage, Middleware, Retries, TimeLimit, default_middleware

from mailcore.config import Settings
from mailcore.dkim_signing import signer_for
from mailcore.heap import freeze_startup_objects
from mailcore.queue import holding
from mailcore.redaction import install as install_redacting_encoder
from mailcore.redisclient import sync_client
from mailcore.schedule import Dispatcher
from mailcore.status import Holding, StatusStore
from mailcore.store import template_store_from_settings
from mailcore.streams import BULK
from mailcore.suppressions import SyncSuppressionList
from mailcore.telemetry import shutdown_tracing
from mailcore.templates import TemplateRegistry, builtin_templates_dir
from mailcore.transports import Transport, transport_from_settings

from .broker import RecoveringRedisBroker, make_broker
from .delivery import Deliverer
from .dispatcher import DispatcherThread
from .hard_bounces import HardBounces
from .heartbeat import Heartbeat
from .sweeper import Sweeper, SweeperThread


class CloseConnections(Middleware):
    """Quit SMTP sessions politely and close the status connections once the worker threads
    have finished their sends."""

    def __init__(self, transport: Transport, status: StatusStore, *,
                 also: Transport | None = None) -> None:
        self.transport = transport
        self.status = status
        self.also = also  # the bulk stream's transport, when it has its own

    def after_worker_shutdown(self, broker: Broker, worker: object) -> None:
        self.transport.close()
        if self.also is not None:
            self.also.close()
        self.status.close()
        shutdown_tracing()  # flush spans still buffered


class FreezeAfterBoot(Middleware):
    """Freezes the process's start-up objects once its threads run (mailcore/heap.py); last
    in the middleware list, so what the others made at boot is frozen too."""

    def after_worker_boot(self, broker: Broker, worker: object) -> None:
        freeze_startup_objects()


@dataclass
class WorkerRuntime:
    broker: RecoveringRedisBroker
    deliverer: Deliverer
    status: StatusStore
    #: Where this process holds the messages it works on (its acks set and the queue's keys),
    #: by queue (one per stream: mailcore/streams.py).
    holdings: dict[str, Holding]
    time_limit: TimeLimit
    #: Permanent recipient refusals → the suppression list.
    bounces: HardBounces
    #: The deliverer of each queue whose stream delivers differently (Mailtrap's bulk host for
    #: the bulk stream); the others use :attr:`deliverer`.
    stream_deliverers: dict[str, Deliverer]

    def deliverer_for(self, queue_name: str) -> Deliverer:
        """Who delivers a message of ``queue_name`` (or of its delay queue)."""
        return self.stream_deliverers.get(q_name(queue_name), self.deliverer)

    def holding_for(self, queue_name: str) -> Holding:
        """Where this process holds a message of ``queue_name`` (or of its delay queue)."""
        canonical = q_name(queue_name)
        found = self.holdings.get(canonical)
        return found if found is not None else holding(canonical, self.broker.broker_id)

    def disarm_time_limit(self) -> None:
        """The relay accepted the message: recording that must not be interrupted by
        Dramatiq's time limit (an interrupted record would have the message sent again)."""
        self.time_limit.manager.remove_timeout(  # type: ignore[no-untyped-call]
            threading.get_ident())


def bulk_settings(settings: Settings) -> Settings | None:
    """The settings the bulk stream delivers with when they differ: Mailtrap's bulk host
    (``MAILTRAP_BULK_BASE_URL``) when a Mailtrap transport is used (not into a sandbox inbox,
    which has no bulk host; not when ``MAILTRAP_BULK`` sends everything there already)."""
    transport = settings.transport
    if ("mailtrap" not in settings.transports or transport.mailtrap_sandbox_inbox_id
            or transport.mailtrap_bulk or BULK not in settings.streams.worker_streams):
        return None
    return replace(settings, transport=replace(
        transport, mailtrap_base_url=settings.streams.mailtrap_bulk_url))


def build_runtime(settings: Settings) -> WorkerRuntime:
    install_redacting_encoder()  # jobs hold template data: their repr must not (logs)
    registry = TemplateRegistry.from_dir(builtin_templates_dir(settings.templates.dir),
                                         store=template_store_from_settings(settings))
    transport = transport_from_settings(settings)
    status = StatusStore.from_url(settings.redis.where, settings.redis.key_prefix,
                                  settings.limits.status_retention_seconds,
                                  emit_events=settings.webhooks.enabled,
                                  group_commit=settings.worker.group_commit)
    # No Retries middleware: the actor records each attempt's outcome (retry included) and
    # removes its message in one step; Retries would re-enqueue, and Dramatiq then ack, a
    # message whether or not its re-enqueue reached Redis.
    middleware = [m() for m in default_middleware if m is not Retries]
    time_limit = next(m for m in middleware if isinstance(m, TimeLimit))
    sweeper = Sweeper.from_url(settings.redis.where, queue_name=settings.worker.queue_name,
                               prefix=settings.redis.key_prefix,
                               min_age_seconds=settings.worker.recovery_age_seconds,
                               retention_seconds=settings.limits.status_retention_seconds)
    bulk = bulk_settings(settings)
    bulk_transport = transport_from_settings(bulk) if bulk is not None else None
    middleware += [CurrentMessage(), CloseConnections(transport, status, also=bulk_transport),
                   Heartbeat(settings.worker.heartbeat_dir, settings.worker.heartbeat_seconds),
                   SweeperThread(sweeper, settings.worker.recovery_interval_seconds),
                   DispatcherThread(Dispatcher.from_settings(settings),
                                    settings.schedule.poll_seconds),
                   FreezeAfterBoot()]
    broker = make_broker(
        settings.redis.where, middleware=middleware,
        heartbeat_timeout_ms=settings.worker.queue_heartbeat_timeout_ms,
        maintenance_chance=settings.worker.queue_maintenance_chance,
    )
    for queue in settings.queues.values():  # every stream's; WORKER_STREAMS picks (cli.py)
        broker.declare_queue(queue)
    signer = signer_for(settings)
    deliverer = Deliverer(settings, registry, transport, signer=signer)
    stream_deliverers = {}
    if bulk is not None and bulk_transport is not None:
        stream_deliverers[settings.queues[BULK]] = Deliverer(bulk, registry, bulk_transport,
                                                             signer=signer)
    return WorkerRuntime(broker=broker, deliverer=deliverer,
                         stream_deliverers=stream_deliverers,
                         status=status,
                         holdings={queue: holding(queue, broker.broker_id)
                                   for queue in settings.queues.values()},
                         time_limit=time_limit,
                         bounces=HardBounces(SyncSuppressionList(
                             sync_client(settings.redis.where, "worker"),
                             settings.redis.key_prefix)))

