"""Template versions: history, pins of accepted messages, and what is kept (garbage collection).

Every version the store serves is also kept in the archive (``<prefix>:templates:archive``,
``namespace/name@version`` -> record) and listed in the template's history (a sorted set scored
by when it was stored). A message accepted for a stored template is *pinned*: its job names the
store key and the version it was validated against, and its id is added to that version's
reference set (``<prefix>:templates:refs:<key>@<version>``) before it is queued.

Retention (:func:`collect_garbage`, run by the operator every ``OPERATOR_RESYNC_SECONDS`` and by
``email-service sync`` after each pass). A kept version stays while any of these holds:

- it is the version serving;
- it is among the newest ``TEMPLATE_HISTORY_VERSIONS`` of its template (while the template
  exists; a deleted template keeps no history beyond its pinned versions);
- a message pinned to it still may be rendered: its status record exists and is not final
  (``queued``, ``sending``, ``retrying``, and ``dead`` too, since a dead letter can be
  retried). A reference whose status is ``sent``/``failed`` is dropped, and so is one whose
  status is gone (expired after ``STATUS_RETENTION_SECONDS``, or never written because the
  accept step failed) once it is older than ``PIN_GRACE_SECONDS`` (the ingress writes the
  reference just before the status).

Nothing needs to be released by a worker, so a worker that crashes mid-send leaks nothing: the
collector reads the truth (the status record) each time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from .status import CANCELLED, FAILED, SENT, status_key
from .store import StoreKeys, archive_field, decode_record
from .templates import Pin
from .timestamps import rfc3339, rfc3339_from_iso

#: A reference without a status record is kept this long (the status is written just after it).
PIN_GRACE_SECONDS = 300.0
#: Statuses after which a message is never rendered again.
FINAL = frozenset({SENT.encode(), FAILED.encode(), CANCELLED.encode()})


async def add_references(client: aioredis.Redis, prefix: str,
                         pins: Sequence[tuple[str, Pin]]) -> None:
    """Record that the messages ``(message id, pin)`` reference their versions (one round trip).

    Called before the messages are queued: a reference whose message never got queued is
    dropped by the collector once its grace period is over."""
    if not pins:
        return
    keys = StoreKeys(prefix)
    now = int(time.time() * 1000)
    async with client.pipeline(transaction=False) as pipe:
        for message_id, pin in pins:
            pipe.zadd(keys.refs(pin.key, pin.version), {message_id: now})
        await pipe.execute()


def describe_version(raw: bytes, *, serving: str | None, stored_at_ms: float | None
                     ) -> dict[str, Any]:
    """The API view of one archived record."""
    record = decode_record(raw)
    return {
        "version": record.version,
        "serving": record.version == serving,
        # When this version was written, and when it last became the newest (re-applied).
        "stored_at": rfc3339_from_iso(record.updated_at),
        "history_at": rfc3339(stored_at_ms / 1000) if stored_at_ms is not None else None,
        "origin": dict(record.origin),
    }


async def list_versions(client: aioredis.Redis, prefix: str, key: str) -> list[dict[str, Any]]:
    """``key``'s kept versions, newest first, with who/what stored each and when."""
    keys = StoreKeys(prefix)
    entries: list[Any] = await client.zrevrange(keys.history(key), 0, -1, withscores=True)
    if not entries:
        return []
    serving = await client.hget(keys.versions, key)
    serving_text = serving.decode() if isinstance(serving, bytes) else serving
    versions = [v.decode() if isinstance(v, bytes) else str(v) for v, _ in entries]
    raws: list[Any] = await client.hmget(keys.archive, [archive_field(key, v) for v in versions])
    return [describe_version(raw, serving=serving_text, stored_at_ms=score)
            for (_, score), raw in zip(entries, raws, strict=True) if raw is not None]


async def get_version(client: aioredis.Redis, prefix: str, key: str, version: str
                      ) -> dict[str, Any] | None:
    """One kept version with its source, or ``None``."""
    keys = StoreKeys(prefix)
    async with client.pipeline(transaction=False) as pipe:
        pipe.hget(keys.archive, archive_field(key, version))
        pipe.hget(keys.versions, key)
        pipe.zscore(keys.history(key), version)
        raw, serving, score = await pipe.execute()
    if raw is None:
        return None
    serving_text = serving.decode() if isinstance(serving, bytes) else serving
    described = describe_version(raw, serving=serving_text, stored_at_ms=score)
    source = orjson.loads(raw)["source"]
    return {**described, "source": source}


def _live_references(client: redis.Redis, prefix: str, refs_key: str, now: float) -> int:
    """Drop the references of messages that will not be rendered again; how many remain."""
    members: list[Any] = client.zrange(refs_key, 0, -1, withscores=True)
    if not members:
        return 0
    statuses = client.pipeline(transaction=False)
    for member, _ in members:
        message_id = member.decode() if isinstance(member, bytes) else str(member)
        statuses.hget(status_key(prefix, message_id), "status")
    gone = [member for (member, added_ms), status in zip(members, statuses.execute(), strict=True)
            if status in FINAL
            or (status is None and now - added_ms / 1000 > PIN_GRACE_SECONDS)]
    if gone:
        client.zrem(refs_key, *gone)
    return len(members) - len(gone)


def collect_garbage(client: redis.Redis, prefix: str, *, keep: int,
                    now: float | None = None) -> list[str]:
    """Remove archived versions nothing needs any more (see the module docstring); returns the
    ``key@version`` fields removed."""
    now = time.time() if now is None else now
    keys = StoreKeys(prefix)
    serving = {_text(k): _text(v) for k, v in client.hgetall(keys.versions).items()}
    by_key: dict[str, list[str]] = {}
    for raw_field in client.hkeys(keys.archive):
        key, _, version = _text(raw_field).rpartition("@")
        by_key.setdefault(key, []).append(version)
    removed: list[str] = []
    for key, versions in by_key.items():
        recent: list[Any] = (client.zrevrange(keys.history(key), 0, keep - 1)
                             if key in serving else [])
        newest = [_text(v) for v in recent]
        protected = {serving.get(key), *newest}
        for version in versions:
            if version in protected:
                continue
            if _live_references(client, prefix, keys.refs(key, version), now):
                continue
            pipe = client.pipeline(transaction=True)
            pipe.hdel(keys.archive, archive_field(key, version))
            pipe.zrem(keys.history(key), version)
            pipe.delete(keys.refs(key, version))
            pipe.execute()
            removed.append(archive_field(key, version))
    return removed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
