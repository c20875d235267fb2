"""What the bounce tests share: a sent message's status as the worker leaves it, and reading
back what was recorded about it."""

from __future__ import annotations

import uuid
from typing import Any, cast

import orjson
import redis

from mailcore.lifecycle import decode_event, stream_key
from mailcore.status import SENT, event, initial_fields, status_key, timeline_key
from mailcore.suppressions import Suppression, SyncSuppressionList

BOUNCE_SECRET = "bounce-secret-for-tests-0123456789"
BOUNCE_DOMAIN = "bounce.test"


def sent_message(client: redis.Redis, prefix: str, recipients: list[str], *,
                 status: str = SENT) -> str:
    """A message accepted and then sent (as the worker records it); returns its id."""
    message_id = str(uuid.uuid4())
    fields = initial_fields(message_id=message_id, owner="shop", template="order_confirmation",
                            recipients=recipients, source="api", metadata={"order": "A-1"})
    fields["status"] = status
    client.hset(status_key(prefix, message_id), mapping=cast(Any, fields))
    client.rpush(timeline_key(prefix, message_id), event(status))
    client.expire(status_key(prefix, message_id), 3600)
    return message_id


def status_fields(client: redis.Redis, prefix: str, message_id: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = client.hgetall(status_key(prefix, message_id))  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


def timeline(client: redis.Redis, prefix: str, message_id: str) -> list[dict[str, Any]]:
    entries: list[bytes] = client.lrange(timeline_key(prefix, message_id), 0, -1)  # type: ignore[assignment]
    return [orjson.loads(e) for e in entries]


def events(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every lifecycle event of ``prefix``, oldest first."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream_key(prefix))  # type: ignore[assignment]
    return [decode_event(fields[b"event"]) for _, fields in entries]


def suppression(client: redis.Redis, prefix: str, address: str) -> Suppression | None:
    """The global suppression entry of ``address``, if any."""
    return SyncSuppressionList(client, prefix).get(address)
