"""The webhook fan-out: lifecycle events in, one delivery message per subscribed endpoint out.

A Redis consumer group (``webhooks``) on the lifecycle stream (:mod:`mailcore.lifecycle`), so
any number of replicas share the events, each read by one of them. For every event the fan-out
writes one Dramatiq message per matching endpoint onto the ``webhooks`` queue (Dramatiq's Redis
layout, as the ingress does for sends) *and* acknowledges the event (``XACK``) in one
``MULTI``: an event is never acknowledged without its deliveries, nor fanned out twice by a
clean run. Entries a consumer read but never acknowledged (it died) are taken over with
``XAUTOCLAIM`` once idle for ``claim_idle_ms``; the takeover re-fans them, which can duplicate
deliveries only if the dead consumer's ``MULTI`` had in fact run (receivers dedupe on
``webhook-id``). Entries that are not lifecycle events are acknowledged and logged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import Middleware

from mailcore.lifecycle import decode_event, stream_key
from mailcore.webhook_endpoints import Endpoint, WebhookStore
from mailcore.webhook_queue import DELIVER_ACTOR, delivery_message, queue_keys

__all__ = ["DELIVER_ACTOR", "GROUP", "Endpoints", "Fanout", "FanoutThread"]

log = logging.getLogger("email_service.webhooks")

GROUP = "webhooks"
#: How often a consumer looks for consumers of past processes to remove from the group.
CLEANUP_INTERVAL_SECONDS = 600
#: A consumer idle this long with nothing pending belonged to a process that is gone.
GONE_AFTER_MS = 24 * 3600 * 1000


class Endpoints:
    """The endpoints the fan-out matches against: the declared ones and the registered ones,
    reloaded from Redis only when the store's version changed (one GET per batch)."""

    def __init__(self, store: WebhookStore, declared: Sequence[Endpoint]) -> None:
        self.store = store
        self.declared = list(declared)
        self._version = -1
        self._registered: list[Endpoint] = []

    def current(self) -> list[Endpoint]:
        version = self.store.version()
        if version != self._version:
            self._registered = self.store.all()
            self._version = version
        return [*self.declared, *self._registered]


class Fanout:
    """Reads the lifecycle stream as one consumer of the group and fans each event out.

    Parameters:
      client: a Redis client (its own connection: reads block).
      prefix: the service's key prefix.
      queue_name: the delivery queue (``WEBHOOKS_QUEUE``).
      endpoints: where endpoints come from.
      consumer: this consumer's name in the group (unique per process).
      block_ms: how long one read waits for new events.
      claim_idle_ms: entries another consumer has held this long are taken over.
      batch: entries per read.
    """

    def __init__(self, client: redis.Redis, prefix: str, queue_name: str, endpoints: Endpoints,
                 *, consumer: str | None = None, block_ms: int = 1000,
                 claim_idle_ms: int = 60_000, batch: int = 100) -> None:
        self.client = client
        self.stream = stream_key(prefix)
        self.queue_name = queue_name
        self.bodies, self.queue = queue_keys(queue_name)
        self.endpoints = endpoints
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.batch = batch
        self._claim_cursor = "0-0"
        self._next_cleanup = 0.0
        #: Events fanned out and deliveries queued by this consumer (for tests and logs).
        self.events = 0
        self.deliveries = 0

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def step(self) -> int:
        """Take over stale entries, read new ones, fan them all out; returns how many."""
        if time.monotonic() >= self._next_cleanup:
            self._next_cleanup = time.monotonic() + CLEANUP_INTERVAL_SECONDS
            self.forget_gone_consumers()
        client: Any = self.client
        self._claim_cursor, claimed, *_ = client.xautoclaim(
            self.stream, GROUP, self.consumer, self.claim_idle_ms, self._claim_cursor,
            count=self.batch)
        if isinstance(self._claim_cursor, bytes):
            self._claim_cursor = self._claim_cursor.decode()
        entries = [entry for entry in claimed if entry and entry[1] is not None]
        read = client.xreadgroup(GROUP, self.consumer, {self.stream: ">"},
                                      count=self.batch, block=None if entries else self.block_ms)
        for _, stream_entries in read or []:
            entries += stream_entries
        if entries:
            endpoints = self.endpoints.current()
            for entry_id, fields in entries:
                self._fan(entry_id, fields, endpoints)
        return len(entries)

    def forget_gone_consumers(self) -> int:
        """Remove consumers of past processes (idle for ``GONE_AFTER_MS``, nothing pending) from
        the group, so replicas that come and go do not pile up there."""
        client: Any = self.client
        gone = [info["name"] for info in client.xinfo_consumers(self.stream, GROUP)
                if info["pending"] == 0 and info["idle"] > GONE_AFTER_MS
                and info["name"] != self.consumer.encode()]
        for name in gone:
            client.xgroup_delconsumer(self.stream, GROUP, name)
        return len(gone)

    def _fan(self, entry_id: bytes, fields: dict[bytes, bytes],
             endpoints: list[Endpoint]) -> None:
        try:
            event = decode_event(fields[b"event"])
            kind = str(event["type"]).removeprefix("message.")
        except (KeyError, ValueError) as exc:
            log.error("dropped a lifecycle stream entry that is no event: %s", exc,
                      extra={"entry": entry_id.decode()})
            self.client.xack(self.stream, GROUP, entry_id)
            return
        owner = event.get("owner")
        now = time.time()
        targets = [endpoint for endpoint in endpoints if endpoint.wants(kind, owner)]
        with self.client.pipeline(transaction=True) as pipe:
            for endpoint in targets:
                redis_id, body = delivery_message(self.queue_name, endpoint.id, endpoint.owner,
                                                  event, now)
                pipe.hset(self.bodies, redis_id, body)
                pipe.rpush(self.queue, redis_id)
            pipe.xack(self.stream, GROUP, entry_id)
            pipe.execute()
        self.events += 1
        self.deliveries += len(targets)


class FanoutThread(Middleware):
    """Runs a :class:`Fanout` in each worker process (started after the worker boots, stopped
    before it shuts down); a Redis error pauses it for ``pause`` seconds, then it goes on."""

    def __init__(self, make: Callable[[], Fanout], pause: float = 1.0) -> None:
        self.make = make
        self.pause = pause
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: object) -> None:
        self._thread = threading.Thread(target=self._run, name="webhook-fanout", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        fanout: Fanout | None = None
        while not self._stop.is_set():
            try:
                if fanout is None:
                    fanout = self.make()
                    fanout.ensure_group()
                fanout.step()
            except redis.RedisError as exc:
                log.warning("webhook fan-out paused: %s", exc)
                if fanout is not None:
                    fanout.client.close()  # a fresh connection next time
                fanout = None
                self._stop.wait(self.pause)
            except Exception:  # a bug must not end the fan-out for good
                log.exception("webhook fan-out failed; going on")
                self._stop.wait(self.pause)
        if fanout is not None:
            fanout.client.close()
