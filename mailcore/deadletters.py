"""Dead letters you can act on: list, show, retry (keeping the message id and its history), purge.

Dramatiq's Redis broker keeps failed messages in ``dramatiq:<queue>.XQ`` (a sorted set of Redis
message ids by time of death) and their bodies in ``dramatiq:<queue>.XQ.msgs``. A retry moves the
body back onto the queue in one optimistic transaction, so two concurrent retries cannot both
succeed, and marks the status ``queued`` again with a timeline entry (and, with webhooks on, the
``queued`` lifecycle event, in the same transaction: mailcore.lifecycle).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from . import lifecycle
from .queue import fresh_copy, queue_key
from .status import (
    QUEUED,
    decode_status,
    event,
    job_key,
    open_key,
    status_key,
    timeline_key,
)
from .timestamps import rfc3339


@dataclass(frozen=True)
class DeadLetter:
    """One dead message, as listed."""

    id: str
    redis_id: str
    died_at: float
    template: str | None
    recipients: list[str]
    status: str | None
    attempts: int
    last_error: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        """The API view: ``died_at`` as RFC 3339 text."""
        return {**vars(self), "died_at": rfc3339(self.died_at)}


class DeadLetters:
    """Operations on the dead-letter queue of one Dramatiq queue.

    Parameters:
      client: a (synchronous) Redis client.
      queue_name: the Dramatiq queue.
      prefix: key prefix of status records.
      retention_seconds: status retention, refreshed when a message is retried.
      emit_events: a retry appends the ``queued`` lifecycle event (``WEBHOOKS_ENABLED``).
    """

    def __init__(self, client: redis.Redis, queue_name: str, prefix: str,
                 retention_seconds: int, *, emit_events: bool = False) -> None:
        # redis-py's sync return types are unions of bytes/str/Any; we know they are bytes.
        self.client: Any = client
        self.queue = queue_key(queue_name)
        self.xq = f"{self.queue}.XQ"
        self.xq_msgs = f"{self.xq}.msgs"
        self.prefix = prefix
        self.retention = retention_seconds
        self.emit_events = emit_events

    def list(self, limit: int = 100) -> list[DeadLetter]:
        """Newest first."""
        entries = self.client.zrevrange(self.xq, 0, max(limit, 1) - 1, withscores=True)
        if not entries:
            return []
        bodies = self.client.hmget(self.xq_msgs, [rid for rid, _ in entries])
        letters = []
        for (rid, score), body in zip(entries, bodies, strict=True):
            if body is not None:
                letters.append(self._describe(rid.decode(), score / 1000, body))
        return letters

    def show(self, message_id: str) -> dict[str, Any] | None:
        """The dead message with its full status and timeline, or ``None``."""
        found = self._find(message_id)
        if found is None:
            return None
        rid, body = found
        score = self.client.zscore(self.xq, rid)
        letter = self._describe(rid, (score or 0) / 1000, body)
        fields = self.client.hgetall(status_key(self.prefix, message_id))
        timeline = self.client.lrange(timeline_key(self.prefix, message_id), 0, -1)
        message = orjson.loads(body)
        return {**letter.as_dict(),
                "status_record": decode_status(fields, timeline) if fields else None,
                "request": message["args"][0].get("request") if message.get("args") else None,
                "traceback": message.get("options", {}).get("traceback")}

    def retry(self, message_id: str) -> bool:
        """Put the message back on its queue under the same id; ``False`` when not dead."""
        while True:
            found = self._find(message_id)
            if found is None:
                return False
            rid, body = found
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.xq_msgs)
                    if pipe.hget(self.xq_msgs, rid) is None:
                        return False
                    new_rid, data = fresh_copy(body)
                    announced = self._queued_event(pipe, message_id)
                    pipe.multi()
                    pipe.zrem(self.xq, rid)
                    pipe.hdel(self.xq_msgs, rid)
                    pipe.hset(f"{self.queue}.msgs", new_rid, data)
                    pipe.rpush(self.queue, new_rid)
                    keys = (status_key(self.prefix, message_id),
                            timeline_key(self.prefix, message_id))
                    now = time.time()
                    pipe.hset(keys[0], mapping={"status": QUEUED, "lease_until": "0",
                                                "updated_at": str(now), "redis_id": new_rid})
                    pipe.rpush(keys[1], event(QUEUED, "retried from the dead-letter queue"))
                    for key in keys:
                        pipe.expire(key, self.retention)
                    # Unfinished again: the sweeper's copy and index (mailcore.status).
                    pipe.set(job_key(self.prefix, message_id), data, ex=self.retention)
                    pipe.zadd(open_key(self.prefix), {message_id: now})
                    lifecycle.emit(pipe, self.prefix, announced)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # the dead-letter set changed under us; look again

    def _queued_event(self, pipe: Any, message_id: str) -> bytes:
        """The ``queued`` event of a retry (``b""`` with webhooks off), with what the status
        record knows of the message (read while watching, before the transaction)."""
        if not self.emit_events:
            return b""
        owner, template, stream, recipients, metadata = (
            value.decode() if value is not None else None
            for value in pipe.hmget(status_key(self.prefix, message_id), "owner", "template",
                                    "stream", "recipients", "metadata"))
        return lifecycle.lifecycle_event(
            lifecycle.QUEUED, message_id, owner=owner or None, template=template or None,
            stream=stream or None, detail="retried from the dead-letter queue",
            recipients=orjson.Fragment(recipients) if recipients else None,
            metadata=orjson.Fragment(metadata) if metadata else None)

    def retry_all(self) -> int:
        count = 0
        for letter in self.list(limit=1_000_000):
            count += self.retry(letter.id)
        return count

    def purge(self) -> int:
        """Delete every dead message; returns how many there were."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zcard(self.xq)
            pipe.delete(self.xq, self.xq_msgs)
            count, _ = pipe.execute()
        return int(count)

    def _find(self, message_id: str) -> tuple[str, bytes] | None:
        rid = self.client.hget(status_key(self.prefix, message_id), "redis_id")
        if rid is not None:
            body = self.client.hget(self.xq_msgs, rid)
            if body is not None:
                return rid.decode(), body
        # No pointer (status expired): look through the dead letters themselves.
        for raw_rid, body in self.client.hscan_iter(self.xq_msgs):
            if orjson.loads(body).get("message_id") == message_id:
                return raw_rid.decode(), body
        return None

    def _describe(self, rid: str, died_at: float, body: bytes) -> DeadLetter:
        message = orjson.loads(body)
        job = message["args"][0] if message.get("args") else {}
        message_id = str(message.get("message_id"))
        fields = self.client.hgetall(status_key(self.prefix, message_id))
        status = decode_status(fields, []) if fields else None
        request = job.get("request", {})
        recipients = [r["email"] if isinstance(r, dict) else str(r)
                      for r in _as_list(request.get("to"))]
        return DeadLetter(
            id=message_id, redis_id=rid, died_at=died_at, template=request.get("template"),
            recipients=recipients, status=status["status"] if status else None,
            attempts=status["attempts"] if status else message.get("options", {}).get(
                "retries", 0) + 1,
            last_error=status["last_error"] if status else None,
        )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]

