"""Webhook deliveries given up on (retried for ``WEBHOOKS_RETRY_FOR_SECONDS``, or refused for
good): kept for ``WEBHOOKS_DEAD_RETENTION_SECONDS``, listed by the API
(``GET /v1/webhooks/dead-letters``) and counted by a metric.

``<prefix>:webhooks:dead`` is a sorted set of ids by when they died, ``<prefix>:webhooks:dead:
records`` a hash of their JSON records. A delivery's id is ``<event id>:<endpoint id>``. The
worker writes a record in the same step that removes the message (``workers.webhook_actors``).
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from .timestamps import rfc3339
from .webhook_queue import delivery_message, queue_keys

# A dead letter back on the queue as a fresh delivery, only if it is still dead (two retries of
# one letter queue it once). KEYS: 1 dead set, 2 records, 3 queue bodies, 4 queue.
# ARGV: 1 dead id, 2 Redis id, 3 body.
_RETRY = """
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('RPUSH', KEYS[4], ARGV[2])
return 1
"""


def dead_key(prefix: str) -> str:
    return f"{prefix}:webhooks:dead"


def records_key(prefix: str) -> str:
    return f"{prefix}:webhooks:dead:records"


def dead_record(delivery: dict[str, Any], *, attempts: int, error: str, at: float) -> bytes:
    """What is kept of a delivery given up on (the event itself included, to redeliver by
    hand)."""
    return orjson.dumps({
        "id": f"{delivery['event']['id']}:{delivery['endpoint_id']}",
        "endpoint_id": delivery["endpoint_id"], "owner": delivery.get("owner"),
        "event": delivery["event"], "attempts": attempts, "last_error": error,
        "first_attempt_at": rfc3339(delivery["first_attempt_at"]), "dead_at": rfc3339(at)})


class WebhookDeadLetters:
    """Reading the dead-lettered deliveries (synchronous client)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client: Any = client
        self.prefix = prefix

    def get(self, dead_id: str) -> dict[str, Any] | None:
        raw = self.client.hget(records_key(self.prefix), dead_id)
        return orjson.loads(raw) if raw else None

    def retry(self, record: dict[str, Any], queue_name: str) -> bool:
        """Deliver a dead letter's event again, as a first attempt (a full retry schedule);
        False when it is no longer there."""
        redis_id, body = delivery_message(queue_name, record["endpoint_id"], record.get("owner"),
                                          record["event"])
        bodies, queue = queue_keys(queue_name)
        script = self.client.register_script(_RETRY)
        return bool(script(keys=[dead_key(self.prefix), records_key(self.prefix), bodies, queue],
                           args=[record["id"], redis_id, body]))

    def count(self) -> int:
        return int(self.client.zcard(dead_key(self.prefix)))

    def list(self, endpoint_ids: set[str], limit: int) -> list[dict[str, Any]]:
        """The newest dead letters of ``endpoint_ids`` (at most ``limit``, newest first)."""
        found: list[dict[str, Any]] = []
        start = 0
        page = 500
        while len(found) < limit:
            ids = self.client.zrevrange(dead_key(self.prefix), start, start + page - 1)
            if not ids:
                break
            for raw in self.client.hmget(records_key(self.prefix), ids):
                if raw is None:
                    continue
                record = orjson.loads(raw)
                if record["endpoint_id"] in endpoint_ids:
                    found.append(record)
                    if len(found) == limit:
                        break
            start += page
        return found
