"""The workers' Redis broker, hardened against losing messages when Redis connections drop.

Dramatiq's Redis broker moves fetched messages into the worker's own "acks" set and only gives
them back to the queue when the worker is dead (its heartbeat stops). If a consumer's connection
breaks, Dramatiq restarts that consumer with an empty prefetch cache: the messages it had fetched
(or whose fetch reply was lost with the connection) stay in the acks set of a worker that is
still alive, and nothing ever requeues them. This broker requeues its own acks set whenever a
consumer (re)starts. A message still being processed when that happens is redelivered too; the
send guard (message status: already ``sent`` or another attempt holding the lease) keeps it from
being sent twice.

A message is acknowledged only together with its next state. The worker records how an attempt
ended (sent, a retry waiting on the delay queue, a dead letter) and removes the message that
carried it in one Redis step (``mailcore.status``'s settle script) and marks the message
settled; Dramatiq's own ack is then a no-op here. A message that reaches the ack unsettled (its
outcome could not be written: Redis was unreachable, or the attempt ended in an unexpected way)
is given back to the queue instead of being deleted, so it is redelivered; until that requeue
reaches Redis it stays in this worker's acks set, which the next consumer (re)start or the
heartbeat-timeout maintenance gives back. And a consumer compares its acks set with what it
handed out every half heartbeat timeout (at most 30 s): what nobody holds (a fetch whose reply
was lost after the consumer restarted, as in a Sentinel failover to a lagging replica) goes back.
Nothing here ever deletes a message whose outcome is
not recorded: that is what Dramatiq's Retries middleware did when its re-enqueue failed, so the
workers run without it (the actor schedules its own retries).

Requeues ride the consumer's next fetch (one pipeline), as acks used to, because a loopback
round trip costs this VM more CPU than the Python around it. A delayed message whose time has
come moves from the delay queue to the queue in one step (``enqueue`` below), keeping its Redis
id, which the message's status names.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

from mailcore.queue import WAKE_SUFFIX
from mailcore.redisclient import Where, sync_client
from mailcore.sentinel import SentinelSettings

from .emit import EmitsToHandlers

_SETTLED = "_email_service_settled"

# A delayed message whose eta has passed, onto its queue: only by the worker still holding it.
# KEYS: 1 the delay queue's acks set of this worker, 2 delay-queue bodies, 3 queue bodies,
# 4 queue. ARGV: 1 Redis message id, 2 the body without its eta.
_PROMOTE = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[4], ARGV[1])
return 1
"""


def mark_settled(message: MessageProxy) -> None:
    """The worker recorded this message's outcome and removed it: nothing left to ack."""
    setattr(message, _SETTLED, True)


def is_settled(message: MessageProxy) -> bool:
    return bool(getattr(message, _SETTLED, False))

#: Requeues waiting for the consumer's next fetch are sent at once beyond this many.
MAX_PENDING_REQUEUES = 64
#: Longest pause between polls of an empty queue. Dramatiq backs off up to its worker timeout
#: (1 s), so a lone password reset on a quiet system waited up to a second before any worker
#: looked; polling at most this far apart costs an idle worker process ~10 fetches a second. The
#: wait is also cut short by the door queuing a message (the wake-up list: _idle_wait).
MAX_IDLE_POLL_MS = 100
#: Pause while most prefetched messages are still being worked on: the queue is not idle, the
#: threads are busy, and acks free room within milliseconds.
BUSY_POLL_MS = 2
#: A consumer compares its acks set with what it handed out at most this often (and at least
#: twice per heartbeat timeout): see ``_BatchingConsumer._reconcile``.
RECONCILE_MAX_SECONDS = 30.0


class RecoveringRedisBroker(EmitsToHandlers, RedisBroker):
    """A :class:`RedisBroker` whose consumers take back what an earlier consumer left behind.

    Signals go only to the middleware that handle them (``workers/emit.py``). It also notes when
    a command last completed (``last_dispatch``, wall-clock seconds): the
    worker heartbeat reads it to tell a wedged consumer from an idle one.
    """

    last_dispatch: float = 0.0

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)  # type: ignore[no-untyped-call]
        self._promote = self.client.register_script(_PROMOTE)

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

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        redis_id = message.options.get("redis_message_id")
        if delay is not None or redis_id is None or \
                dq_name(message.queue_name) not in self.delay_queues:
            return super().enqueue(message, delay=delay)
        # Dramatiq's consumer thread promoting a delayed message (it acks the delayed copy
        # next): one step instead of an enqueue then an ack, and the same Redis id.
        delayed = dq_name(message.queue_name)
        keys = [f"{self.namespace}:__acks__.{self.broker_id}.{delayed}",
                f"{self.namespace}:{delayed}.msgs", f"{self.namespace}:{message.queue_name}.msgs",
                f"{self.namespace}:{message.queue_name}"]
        try:
            self._promote(keys=keys, args=[redis_id, message.encode()])
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        return message

    def fetch_requeueing(self, queue_name: str, prefetch: int, requeue: list[str]) -> list[bytes]:
        """Give ``requeue`` back to the queue and fetch up to ``prefetch`` messages, in one
        round trip."""
        try:
            replies = self._dispatch_many(queue_name, prefetch, requeue)
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot the script
            self.client.script_load(self.scripts["dispatch"].script)
            replies = self._dispatch_many(queue_name, prefetch, requeue)
        self.last_dispatch = time.time()
        return list(replies[-1] or []) if prefetch else []

    def _dispatch_many(self, queue_name: str, prefetch: int, requeue: list[str]) -> list[Any]:
        # EVALSHA directly: a pipeline of Script objects would first ask SCRIPT EXISTS, which
        # is another round trip on every call.
        pipe = self.client.pipeline(transaction=False)
        sha = self.scripts["dispatch"].sha
        if requeue:
            pipe.evalsha(sha, 1, self.namespace, *self._dispatch_args("requeue", queue_name,
                                                                      *requeue))
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
    """Dramatiq's Redis consumer that deletes nothing itself: settled messages were removed by
    the worker with their outcome, unsettled ones are given back (see the module's docstring)."""

    def __init__(self, broker: RecoveringRedisBroker, queue_name: str, prefetch: int,
                 timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self.pending_requeues: list[str] = []
        self._requeues_lock = threading.Lock()
        self._low_water = max(1, prefetch // 4)
        self._delayed = queue_name.endswith(".DQ")
        #: Redis ids handed out by this consumer and not acked yet (guarded by the lock).
        self._handed: set[str] = set()
        self._acks_key = f"{broker.namespace}:__acks__.{broker.broker_id}.{queue_name}"
        self._wake_key = f"{broker.namespace}:{queue_name}{WAKE_SUFFIX}"
        self._reconcile_every = min(RECONCILE_MAX_SECONDS,
                                    max(broker.heartbeat_timeout / 2000, 0.5))
        self._next_reconcile = time.monotonic() + self._reconcile_every

    def ack(self, message: MessageProxy) -> None:
        # Called by worker threads (and, on a delay queue, by the consumer thread right after
        # the broker promoted the message in one step: nothing left to do either).
        redis_id = message.options["redis_message_id"]
        with self._requeues_lock:
            if not (self._delayed or is_settled(message)):
                self.pending_requeues.append(redis_id)
            self._handed.discard(redis_id)
        self.queued_message_ids.discard(message.message_id)

    def _reconcile(self) -> None:
        """Give back what sits in this worker's acks set but nobody here holds.

        A consumer restarted after a connection error gives back its acks set as it starts; a
        fetch whose reply was lost *after* that (a Redis failover mid-restart, with a replica
        that had not seen every write) leaves messages in the set of a live worker, which no
        heartbeat timeout ever frees. Nothing is cached when this runs, so the set should hold
        only what this consumer handed out; the rest goes back with the next fetch (a copy
        still being worked on by a thread of the replaced consumer is stopped by the send
        guard)."""
        self._next_reconcile = time.monotonic() + self._reconcile_every
        try:
            members = self.broker.client.smembers(self._acks_key)
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        with self._requeues_lock:
            held = self._handed | set(self.pending_requeues)
            stranded = [rid for rid in (m.decode() if isinstance(m, bytes) else str(m)
                                        for m in members) if rid not in held]
            self.pending_requeues.extend(stranded)
        if stranded:
            self.logger.warning("Giving back %d message(s) held in this worker's acks set for "
                                "%r by no consumer.", len(stranded), self.queue_name)

    def requeue(self, messages: Any) -> None:
        try:
            super().requeue(messages)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            # Dramatiq lets this escape its consumer thread's error handler, which kills the
            # thread; as a connection error the consumer restarts and requeues its acks set.
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def _take_requeues(self) -> list[str]:
        with self._requeues_lock:
            requeue, self.pending_requeues = self.pending_requeues, []
        return requeue

    def _fetch(self, prefetch: int) -> list[bytes]:
        requeue = self._take_requeues()
        try:
            return self.broker.fetch_requeueing(  # type: ignore[no-any-return]
                self.queue_name, prefetch, requeue)
        except redis.RedisError as exc:
            # Requeues not sent leave their messages in the acks set, which the restarted
            # consumer gives back.
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def __next__(self) -> MessageProxy | None:
        # Dramatiq's own loop (dramatiq 2.x _RedisConsumer.__next__), with the fetch also
        # carrying the waiting requeues, and shorter waits (MAX_IDLE_POLL_MS, BUSY_POLL_MS).
        while True:
            if len(self.pending_requeues) >= MAX_PENDING_REQUEUES:
                self._fetch(0)
            if self.message_cache:
                data = self.message_cache.pop(0)
                if data is None:
                    continue
                self.misses = 0
                message = Message.decode(data)
                self.queued_message_ids.add(message.message_id)
                with self._requeues_lock:
                    self._handed.add(message.options["redis_message_id"])
                return MessageProxy(message)
            if time.monotonic() >= self._next_reconcile:
                self._reconcile()  # nothing is cached now: everything fetched is handed out
            room = self.prefetch - self.outstanding_message_count
            if room < self._low_water:
                # Three quarters of the prefetch (Dramatiq's is twice the thread count) are
                # still waiting or being worked on: no thread is short of work. Fetching once a
                # quarter is free makes each fetch bring several messages. Dramatiq
                # backed off here as if the queue were empty, so a saturated worker slept ever
                # longer between fetches.
                time.sleep(BUSY_POLL_MS / 1000)
                return None
            self.message_cache = messages = self._fetch(room)
            if messages:
                continue
            self.misses, backoff_ms = compute_backoff(
                self.misses, max_backoff=min(self.timeout, MAX_IDLE_POLL_MS))
            self._idle_wait(backoff_ms / 1000)
            return None

    def _idle_wait(self, seconds: float) -> None:
        """Wait until the next poll, or until the door queues a message: it pushes a token on
        the queue's wake-up list (mailcore/queue.py), and one waiting consumer takes it. A lone
        password reset is then fetched at once instead of after the rest of the poll."""
        try:
            self.broker.client.blpop([self._wake_key], timeout=max(seconds, 0.001))
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def close(self) -> None:
        waiting = len(self.pending_requeues)
        try:
            if waiting:
                self._fetch(0)
        except ConnectionClosed:
            self.logger.warning("Could not give back %d message(s) on close; they stay in this "
                                "worker's acks set until its consumer restarts or its "
                                "heartbeat times out.", waiting)
        super().close()


def make_broker(
    where: Where, *, middleware: list[Any] | None = None, heartbeat_timeout_ms: int = 60_000,
    maintenance_chance: int = 1000,
) -> RecoveringRedisBroker:
    """The workers' broker.

    Parameters:
      where: a Redis URL, or the Sentinel set whose primary holds the queues.
      heartbeat_timeout_ms: a worker silent this long is dead and its messages are requeued.
      maintenance_chance: per million broker commands, how often that sweep runs.
    """
    # Behind Sentinel the broker gets a client that follows the primary; with a URL, Dramatiq's
    # own pool as before.
    options: dict[str, Any] = {"client": sync_client(where, "broker")} \
        if isinstance(where, SentinelSettings) else {"url": where}
    return RecoveringRedisBroker(
        **options, middleware=middleware, heartbeat_timeout=heartbeat_timeout_ms,
        maintenance_chance=maintenance_chance,
    )
