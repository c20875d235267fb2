"""The workers' Redis broker, hardened against losing messages when Redis connections drop.

Dramatiq's Redis broker moves fetched messages into the worker's own "acks" set and only gives
them back to the queue when the worker is dead (its heartbeat stops). If a consumer's connection
breaks, Dramatiq restarts that consumer with an empty prefetch cache: the messages it had fetched
(or whose fetch reply was lost with the connection) stay in the acks set of a worker that is
still alive, and nothing ever requeues them. This broker requeues its own acks set whenever a
consumer (re)starts. A message still being processed when that happens is redelivered too; the
send guard (message status: already ``sent`` or another attempt holding the lease) keeps it from
being sent twice.

Acknowledgements are batched: Dramatiq sends one Redis command per processed message, and a
loopback round trip costs this VM more CPU than the Python around it. Here a worker thread's
ack only notes the message id; the consumer thread sends the waiting acks in the same pipeline
as its next fetch (or on its own once ``MAX_PENDING_ACKS`` wait, and when it closes). An ack
that never reaches Redis (the process dies first) leaves the message in the acks set; it is
redelivered and the send guard drops it as already sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

#: Acks waiting for the consumer's next fetch are sent at once beyond this many.
MAX_PENDING_ACKS = 64
#: Longest pause between polls of an empty queue. Dramatiq backs off up to its worker timeout
#: (1 s), so a lone password reset on a quiet system waited up to a second before any worker
#: looked; polling at most this far apart costs an idle worker process ~10 fetches a second.
MAX_IDLE_POLL_MS = 100
#: Pause while most prefetched messages are still being worked on: the queue is not idle, the
#: threads are busy, and acks free room within milliseconds.
BUSY_POLL_MS = 2


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
        return _BatchingConsumer(self, queue_name, prefetch, timeout)

    def fetch_acking(self, queue_name: str, prefetch: int, acks: list[str]) -> list[bytes]:
        """Acknowledge ``acks`` and fetch up to ``prefetch`` messages in one round trip."""
        try:
            replies = self._dispatch_many(queue_name, prefetch, acks)
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot the script
            self.client.script_load(self.scripts["dispatch"].script)
            replies = self._dispatch_many(queue_name, prefetch, acks)
        self.last_dispatch = time.time()
        return list(replies[-1] or []) if prefetch else []

    def _dispatch_many(self, queue_name: str, prefetch: int, acks: list[str]) -> list[Any]:
        # EVALSHA directly: a pipeline of Script objects would first ask SCRIPT EXISTS, which
        # is another round trip on every call.
        pipe = self.client.pipeline(transaction=False)
        sha = self.scripts["dispatch"].sha
        for redis_message_id in acks:
            pipe.evalsha(sha, 1, self.namespace, *self._dispatch_args("ack", queue_name,
                                                                      redis_message_id))
        if prefetch:
            pipe.evalsha(sha, 1, self.namespace, *self._dispatch_args("fetch", queue_name,
                                                                      prefetch))
        replies: list[Any] = pipe.execute()
        return replies

    def _dispatch_args(self, command: str, queue_name: str, *args: Any) -> list[Any]:
        # The arguments of Dramatiq's own dispatch script, as RedisBroker._dispatch builds them.
        return [command, current_millis(), queue_name, self.broker_id, self.heartbeat_timeout,
                self.dead_message_ttl, self._should_do_maintenance(command),
                self._max_unpack_size(), *args]  # type: ignore[no-untyped-call]


class _BatchingConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer with acks sent in batches (see the module's docstring)."""

    def __init__(self, broker: RecoveringRedisBroker, queue_name: str, prefetch: int,
                 timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self.pending_acks: list[str] = []
        self._acks_lock = threading.Lock()
        self._low_water = max(1, prefetch // 4)

    def ack(self, message: MessageProxy) -> None:
        # Called by worker threads: note it; the consumer thread sends it.
        with self._acks_lock:
            self.pending_acks.append(message.options["redis_message_id"])
        self.queued_message_ids.discard(message.message_id)

    def _take_acks(self) -> list[str]:
        with self._acks_lock:
            acks, self.pending_acks = self.pending_acks, []
        return acks

    def _fetch(self, prefetch: int) -> list[bytes]:
        acks = self._take_acks()
        try:
            return self.broker.fetch_acking(self.queue_name, prefetch, acks)  # type: ignore[no-any-return]
        except redis.RedisError as exc:
            # Unsent acks leave their messages in the acks set: redelivered after the consumer
            # restarts, and dropped by the send guard as already sent.
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def __next__(self) -> MessageProxy | None:
        # Dramatiq's own loop (dramatiq 2.x _RedisConsumer.__next__), with the fetch also
        # carrying the waiting acks, and shorter waits (MAX_IDLE_POLL_MS, BUSY_POLL_MS).
        while True:
            if len(self.pending_acks) >= MAX_PENDING_ACKS:
                self._fetch(0)
            if self.message_cache:
                data = self.message_cache.pop(0)
                if data is None:
                    continue
                self.misses = 0
                message = Message.decode(data)
                self.queued_message_ids.add(message.message_id)
                return MessageProxy(message)
            room = self.prefetch - self.outstanding_message_count
            if room < self._low_water:
                # Three quarters of the prefetch (Dramatiq's is twice the thread count) are
                # still waiting or being worked on: no thread is short of work. Fetching once a
                # quarter is free makes each fetch bring (and ack) several messages. Dramatiq
                # backed off here as if the queue were empty, so a saturated worker slept ever
                # longer between fetches.
                time.sleep(BUSY_POLL_MS / 1000)
                return None
            self.message_cache = messages = self._fetch(room)
            if messages:
                continue
            self.misses, backoff_ms = compute_backoff(
                self.misses, max_backoff=min(self.timeout, MAX_IDLE_POLL_MS))
            time.sleep(backoff_ms / 1000)
            return None

    def close(self) -> None:
        waiting = len(self.pending_acks)
        try:
            if waiting:
                self._fetch(0)
        except ConnectionClosed:
            self.logger.warning("Could not send %d ack(s) on close; those messages will be "
                                "redelivered and dropped as already sent.", waiting)
        super().close()


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
