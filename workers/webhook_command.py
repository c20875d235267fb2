"""``email-service webhooks``: Dramatiq processes that fan lifecycle events out and deliver
them (``workers.webhook_actors``), with their merged Prometheus metrics and the dead-letter
gauge on ``WORKER_METRICS_PORT``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mailcore.config import Settings


def run_webhooks(processes: int | None, threads: int | None) -> int:
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    from mailcore.logs import configure_logging
    from mailcore.webhook_endpoints import load_declared

    from .heartbeat import prepare_directory

    settings = Settings.from_env()  # fail here with one line rather than in every child
    hooks = settings.webhooks
    if hooks.endpoints_file:
        load_declared(hooks.endpoints_file, hooks.policy)  # and the endpoints file too
    configure_logging(settings.telemetry)
    prepare_directory(settings.worker.heartbeat_dir)
    if settings.worker.metrics_port:
        _serve_metrics(settings)
    dramatiq_args = make_argument_parser().parse_args([  # type: ignore[no-untyped-call]
        "workers.webhook_actors", "--processes", str(processes or hooks.processes),
        "--threads", str(threads or hooks.threads), "--skip-logging",
        "--worker-shutdown-timeout", str(settings.worker.shutdown_timeout_ms),
    ])
    return int(dramatiq_main(dramatiq_args) or 0)  # type: ignore[no-untyped-call]


def _serve_metrics(settings: Settings) -> None:
    from mailcore.metrics_dir import prepare_metrics_dir

    # prometheus_client picks its multiprocess mode when first imported, and the Dramatiq
    # processes are forked from this one: name the folder before importing it.
    prepare_metrics_dir("webhook")
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.registry import Collector
    from redis import RedisError

    from mailcore.redisclient import sync_client
    from mailcore.webhook_deadletters import WebhookDeadLetters

    from .webhook_metrics import DEAD_LETTER_SIZE

    class DeadLetterGauge(Collector):
        def __init__(self) -> None:
            client: Any = sync_client(settings.redis.where, "metrics")
            self.dead = WebhookDeadLetters(client, settings.redis.key_prefix)

        def collect(self) -> Iterator[GaugeMetricFamily]:
            try:
                count = self.dead.count()
            except RedisError:
                return
            yield GaugeMetricFamily(DEAD_LETTER_SIZE,
                                    "Webhook deliveries given up on, still listed",
                                    value=float(count))

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(DeadLetterGauge())
    start_http_server(settings.worker.metrics_port, addr=settings.worker.metrics_host,
                      registry=registry)
