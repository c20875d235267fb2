"""The workers' Redis broker, hardened against losing messages when Redis connections drop.

Dramatiq's Redis broker moves fetched messages into the worker's own "acks" set and only gives
them back to the queue when the worker is dead (its heartbeat stops). If a consumer's connection
breaks, Dramatiq restarts that consumer with an empty prefetch cache: the messages it had fetched
(or whose fetch reply was lost with the connection) stay in the acks set of a worker that is
still alive, and nothing ever requeues them. This broker requeues its own acks set whenever a
consumer (re)starts. A message still being processed when that happens is redelivered too; the
send guard (message status: already ``sent`` or another attempt holding the lease) keeps it from
being sent twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from dramatiq.broker import Consumer
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import ConnectionClosed


class RecoveringRedisBroker(RedisBroker):
    """A :class:`RedisBroker` whose consumers take back what an earlier consumer left behind.

    It also notes when a command last completed (``last_dispatch``, wall-clock seconds): the
    worker heartbeat reads it to tell a wedged consumer from an idle one.
    """

    last_dispatch: float = 0.0

    def _dispatch(self, command: str) -> Callable[..., Any]:
        dispatch: Callable[..., Any] = super()._dispatch(command)  # type: ignore[no-untyped-call]

        def timed(queue_name: str, *args: Any) -> Any:
            result = dispatch(queue_name, *args)
            self.last_dispatch = time.time()
            return result

        return timed

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        acks = f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}"
        try:
            stranded = self.client.smembers(acks)
            if stranded:
                ids = [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in stranded]
                self.logger.warning("Requeueing %d message(s) a previous consumer left on %r.",
                                    len(ids), queue_name)
                self.do_requeue(queue_name, *ids)
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        consumer: Consumer = super().consume(queue_name, prefetch, timeout)
        return consumer


def make_broker(
    redis_url: str, *, middleware: list[Any] | None = None, heartbeat_timeout_ms: int = 60_000,
    maintenance_chance: int = 1000,
) -> RecoveringRedisBroker:
    """The workers' broker.

    Parameters:
      heartbeat_timeout_ms: a worker silent this long is dead and its messages are requeued.
      maintenance_chance: per million broker commands, how often that sweep runs.
    """
    return RecoveringRedisBroker(  # type: ignore[no-untyped-call]
        url=redis_url, middleware=middleware, heartbeat_timeout=heartbeat_timeout_ms,
        maintenance_chance=maintenance_chance,
    )
