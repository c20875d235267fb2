"""The safety net: re-queue unfinished messages that no queue holds.

Workers never delete a message before its next state is recorded (``workers.broker``), so this
should find nothing; it exists for what that reasoning missed. Every accepted message is in the
open index (``<prefix>:open``, scored by when it was last looked at) with a copy of its body
(``<prefix>:msg:<id>:job``) until it is finished (sent, failed or dead). The sweeper takes the
messages of that index not looked at for ``min_age_seconds``; one whose status is unfinished,
unchanged for that long, without a live send lease, and whose current copy (the status's
``redis_id``) is in none of the queue, the delay queue, the dead letters or any worker's acks set
(all of which keep the body in ``<queue>.msgs``, ``.DQ.msgs`` or ``.XQ.msgs``) is re-queued from
its copy, counted in ``email_recovered_total`` and logged. The check and the re-queue are one
Lua step, and every state change of a message is atomic, so a message between states is never
seen as lost; the age threshold is a second guard.

It runs in every worker process (:class:`SweeperThread`), at most once per interval across all
of them (a Redis lock).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import orjson
import redis
from dramatiq import Broker
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from mailcore.queue import fresh_copy, holding
from mailcore.redisclient import Where, sync_client
from mailcore.status import (
    QUEUED,
    event,
    job_key,
    lua_finished_set,
    open_key,
    status_key,
    timeline_key,
)

from . import metrics

log = logging.getLogger("email_service.worker")

#: Messages examined per sweep at most (the oldest first; the others wait for the next sweep).
BATCH = 500

# KEYS: 1 status, 2 timeline, 3 job copy, 4 open index, 5 queue bodies, 6 queue, 7 delay-queue
# bodies, 8 dead-letter bodies. ARGV: 1 message id, 2 now, 3 minimum age, 4 new Redis id,
# 5 new body ('' when there is no copy), 6 retention, 7 timeline event.
_RECOVER = "local finished = " + lua_finished_set() + """
local id, now = ARGV[1], tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'status', 'updated_at', 'redis_id', 'lease_until')
if not s[1] or finished[s[1]] then
  redis.call('ZREM', KEYS[4], id)
  redis.call('DEL', KEYS[3])
  return 'finished'
end
if s[1] == 'scheduled' then
  -- Waiting in the schedule (mailcore/schedule.py), not lost: its dispatch re-opens it.
  redis.call('ZREM', KEYS[4], id)
  return 'scheduled'
end
local updated = tonumber(s[2] or '0')
if now - updated < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[4], updated, id)
  return 'young'
end
if s[1] == 'sending' and tonumber(s[4] or '0') > now then
  redis.call('ZADD', KEYS[4], now, id)
  return 'leased'
end
local rid = s[3]
if rid and (redis.call('HEXISTS', KEYS[5], rid) == 1 or redis.call('HEXISTS', KEYS[7], rid) == 1
            or redis.call('HEXISTS', KEYS[8], rid) == 1) then
  redis.call('ZADD', KEYS[4], now, id)
  return 'held'
end
redis.call('ZADD', KEYS[4], now, id)
if ARGV[5] == '' then return 'no_copy' end
redis.call('HSET', KEYS[5], ARGV[4], ARGV[5])
redis.call('RPUSH', KEYS[6], ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[2], 'lease_until', '0',
           'redis_id', ARGV[4])
redis.call('RPUSH', KEYS[2], ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 'recovered'
"""


def _queue_of(body: bytes) -> str | None:
    if not body:
        return None
    name = orjson.loads(body).get("queue_name")
    return q_name(name) if isinstance(name, str) and name else None


class Sweeper:
    """Finds unfinished messages that no queue holds and re-queues them.

    Parameters:
      client: a synchronous Redis client.
      queue_name: the Dramatiq queue of a message whose copy names none (each message is
        re-queued on its own stream's queue, which its copy names).
      prefix: key prefix of status records.
      min_age_seconds: a message changed more recently than this is left alone.
      retention_seconds: status retention, refreshed when a message is re-queued.
    """

    def __init__(self, client: redis.Redis, *, queue_name: str, prefix: str,
                 min_age_seconds: float, retention_seconds: int = 7 * 24 * 3600) -> None:
        self.client: Any = client
        self.prefix = prefix
        self.min_age = min_age_seconds
        self.retention = retention_seconds
        self.queue_name = queue_name
        self._recover = client.register_script(_RECOVER)

    @classmethod
    def from_url(cls, url: Where, **options: Any) -> Sweeper:
        return cls(sync_client(url, "worker"), **options)

    def sweep(self, now: float | None = None) -> int:
        """One pass over the oldest unfinished messages; returns how many were re-queued."""
        now = time.time() if now is None else now
        ids = [raw.decode() for raw in self.client.zrangebyscore(
            open_key(self.prefix), "-inf", now - self.min_age, start=0, num=BATCH)]
        if not ids:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for message_id in ids:
            pipe.get(job_key(self.prefix, message_id))
            pipe.hget(status_key(self.prefix, message_id), "attempts")
        found = pipe.execute()
        recovered = 0
        for index, message_id in enumerate(ids):
            body, attempts = found[2 * index], found[2 * index + 1]
            new_id, new_body = fresh_copy(body, retries=int(attempts or 0)) if body else ("", b"")
            # The queue of its stream (mailcore/streams.py), as its body names it.
            keys = holding(_queue_of(new_body) or self.queue_name, "-")
            outcome = self._recover(
                keys=[status_key(self.prefix, message_id), timeline_key(self.prefix, message_id),
                      job_key(self.prefix, message_id), open_key(self.prefix),
                      keys.messages, keys.messages[: -len(".msgs")], keys.delayed_messages,
                      keys.dead_messages],
                args=[message_id, now, self.min_age, new_id, new_body, self.retention,
                      event(QUEUED, "re-queued by the sweeper: no queue held it")]).decode()
            if outcome == "recovered":
                recovered += 1
                metrics.RECOVERED.inc()
                log.warning("unfinished message that no queue held re-queued",
                            extra={"message_id": message_id})
            elif outcome == "no_copy":
                log.error("unfinished message that no queue holds has no copy to re-queue",
                          extra={"message_id": message_id})
        return recovered


class SweeperThread(Middleware):
    """Runs :meth:`Sweeper.sweep` every ``interval_seconds`` in a worker process, at most once
    per interval across all processes sharing the Redis.

    Parameters:
      sweeper: what to run.
      interval_seconds: how often.
    """

    def __init__(self, sweeper: Sweeper, interval_seconds: float) -> None:
        self.sweeper = sweeper
        self.interval = interval_seconds
        self._stop = threading.Event()
        self._lock_key = f"{sweeper.prefix}:sweeper-lock"

    def after_worker_boot(self, broker: Broker, worker: object) -> None:
        threading.Thread(target=self._run, name="sweeper", daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.sweeper.client.set(self._lock_key, os.getpid(), nx=True,
                                           px=max(1, int(self.interval * 1000))):
                    self.sweeper.sweep()
            except redis.RedisError as exc:  # Redis away: the next interval tries again
                log.debug("sweep skipped: %s", exc)
