"""Serving the workers' metrics: the merged multiprocess view plus queue gauges from Redis.

Runs in the ``email-service worker`` parent process, which never records metrics itself (the
definitions live in :mod:`workers.metrics`, imported only by the Dramatiq worker processes).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from mailcore.redisclient import Where, sync_client


class QueueCollector(Collector):
    """Queue gauges read from Redis when Prometheus scrapes, one series per queue (each
    stream has its own: ``queue`` label)."""

    def __init__(self, redis_url: Where, queue_names: Iterable[str]) -> None:
        self.client: Any = sync_client(redis_url, "metrics")
        self.queues = {name: f"dramatiq:{name}" for name in queue_names}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            values = {name: self._read(queue) for name, queue in self.queues.items()}
            in_flight = sum(self.client.scard(key) for key in
                            self.client.scan_iter("dramatiq:__acks__.*", count=1000))
        except redis.RedisError:
            return  # no queue gauges while Redis is away; the scrape itself still works
        for index, (name, text) in enumerate((
            ("email_queue_depth", "Messages waiting to be sent"),
            ("email_queue_delayed", "Messages waiting for a retry"),
            ("email_queue_oldest_age_seconds", "Age of the oldest waiting message"),
            ("email_dead_letter_queue_size", "Messages in the dead-letter queue"),
        )):
            family = GaugeMetricFamily(name, text, labels=["queue"])
            for queue, read in values.items():
                family.add_metric([queue], float(read[index]))
            yield family
        yield GaugeMetricFamily("email_queue_in_flight",
                                "Messages fetched by workers, not yet acknowledged",
                                value=float(in_flight))

    def _read(self, queue: str) -> tuple[int, int, float, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(queue)
        pipe.llen(f"{queue}.DQ")
        pipe.zcard(f"{queue}.XQ")
        pipe.lindex(queue, 0)
        depth, delayed, dead, oldest_id = pipe.execute()
        oldest_age = 0.0
        if oldest_id is not None:
            body = self.client.hget(f"{queue}.msgs", oldest_id)
            if body is not None:
                born = orjson.loads(body).get("message_timestamp", 0) / 1000
                oldest_age = max(0.0, time.time() - born)
        return depth, delayed, oldest_age, dead


def serve_worker_metrics(port: int, redis_url: Where, queue_names: Iterable[str], *,
                         host: str = "127.0.0.1") -> None:
    """Serve the merged multiprocess metrics and the queue gauges on ``host:port`` (a daemon
    thread)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueCollector(redis_url, queue_names))
    start_http_server(port, addr=host, registry=registry)
