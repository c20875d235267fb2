"""Serving the workers' metrics: the merged multiprocess view plus queue gauges from Redis.

Runs in the ``email-service worker`` parent process, which never records metrics itself (the
definitions live in :mod:`workers.metrics`, imported only by the Dramatiq worker processes).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from mailcore.redisclient import Where, sync_client


def prepare_multiprocess_dir() -> Path:
    """Empty ``PROMETHEUS_MULTIPROC_DIR`` (which the worker command names before importing
    prometheus_client) for this run; its children inherit it."""
    path = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


class QueueCollector(Collector):
    """Queue gauges read from Redis when Prometheus scrapes."""

    def __init__(self, redis_url: Where, queue_name: str) -> None:
        self.client: Any = sync_client(redis_url, "metrics")
        self.queue = f"dramatiq:{queue_name}"

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.llen(self.queue)
            pipe.llen(f"{self.queue}.DQ")
            pipe.zcard(f"{self.queue}.XQ")
            pipe.lindex(self.queue, 0)
            depth, delayed, dead, oldest_id = pipe.execute()
            in_flight = sum(self.client.scard(key) for key in
                            self.client.scan_iter("dramatiq:__acks__.*", count=1000))
            oldest_age = 0.0
            if oldest_id is not None:
                body = self.client.hget(f"{self.queue}.msgs", oldest_id)
                if body is not None:
                    born = orjson.loads(body).get("message_timestamp", 0) / 1000
                    oldest_age = max(0.0, time.time() - born)
        except redis.RedisError:
            return  # no queue gauges while Redis is away; the scrape itself still works
        for name, text, value in (
            ("email_queue_depth", "Messages waiting to be sent", depth),
            ("email_queue_delayed", "Messages waiting for a retry", delayed),
            ("email_queue_in_flight", "Messages fetched by workers, not yet acknowledged",
             in_flight),
            ("email_queue_oldest_age_seconds", "Age of the oldest waiting message", oldest_age),
            ("email_dead_letter_queue_size", "Messages in the dead-letter queue", dead),
        ):
            yield GaugeMetricFamily(name, text, value=float(value))


def serve_worker_metrics(port: int, redis_url: Where, queue_name: str, *,
                         host: str = "127.0.0.1") -> None:
    """Serve the merged multiprocess metrics and the queue gauges on ``host:port`` (a daemon
    thread)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueCollector(redis_url, queue_name))
    start_http_server(port, addr=host, registry=registry)
