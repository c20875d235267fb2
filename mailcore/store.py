"""The shared template store in Redis: written by the operator (and the dev sync), read by all pods.

Layout, under ``settings.redis.key_prefix`` (default ``email-service``)::

    <prefix>:templates:data       hash  "namespace/name" -> JSON record (source, version, origin)
    <prefix>:templates:versions   hash  "namespace/name" -> content version
    <prefix>:templates:epoch      int   incremented by every change
    <prefix>:templates:changes    Pub/Sub channel, one message per change
    <prefix>:templates:archive    hash  "namespace/name@version" -> JSON record (every kept version)
    <prefix>:templates:history:<namespace/name>   sorted set  version -> when it was stored (ms)
    <prefix>:templates:refs:<namespace/name@version>  sorted set  message id -> accepted at (ms)

A write is one Lua script, so the record, the version index, the archive and history, the epoch
and the broadcast change together or not at all, and writing the version already stored is a
no-op (no broadcast). Version history, pins and their garbage collection:
:mod:`mailcore.template_history`.

Readers (:class:`RedisTemplateStore`) keep every template in memory, so looking a template up on
the hot path costs no Redis round trip. A background thread listens on the channel and refreshes
the cache as soon as a change is announced (a diff of the small version index, then only the
changed records); every ``TEMPLATE_REFRESH_SECONDS`` it also compares the epoch, so a pod that
missed a broadcast (disconnected, restarted Redis) still converges. While Redis is unreachable the
last known templates keep serving.

Names: a stored template is ``namespace/name``. A caller's qualified name is served when that
namespace counts (it is in ``TEMPLATE_NAMESPACES``, or that list holds ``*``); a bare ``name`` is
looked up in the listed namespaces in their order, the first one holding it wins.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from .config import Settings
from .redisclient import TIMEOUTS, Where, sync_client
from .rendering import LocaleOverride, TemplateSource
from .template_parts import Part

log = logging.getLogger("email_service.store")

#: Seconds a closing follower thread may take: its longest Redis wait, and a second.
_JOIN_SECONDS = (TIMEOUTS["store"].command or 0) + 1

# KEYS: data, versions, epoch, archive, history; ARGV: key, version, record, channel,
#   only-if-absent, now (ms)
_PUT = """
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[5] == '1' and stored then return 0 end
if stored ~= ARGV[2] or redis.call('HEXISTS', KEYS[4], ARGV[1] .. '@' .. ARGV[2]) == 0 then
  redis.call('HSET', KEYS[4], ARGV[1] .. '@' .. ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[2])
end
if stored == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local epoch = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[4], cjson.encode({key = ARGV[1], version = ARGV[2], epoch = epoch}))
return 1
"""
# KEYS: data, versions, epoch, archive; ARGV: key, version, channel. Serves an archived version.
_SERVE = """
local record = redis.call('HGET', KEYS[4], ARGV[1] .. '@' .. ARGV[2])
if not record then return -1 end
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], record)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local epoch = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[3], cjson.encode({key = ARGV[1], version = ARGV[2], epoch = epoch}))
return 1
"""
# KEYS: data, versions, epoch; ARGV: key, channel
_DELETE = """
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
local epoch = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], cjson.encode({key = ARGV[1], deleted = true, epoch = epoch}))
return 1
"""


@dataclass(frozen=True)
class StoredTemplate:
    """One record of the store: the validated source, its version and where it came from."""

    key: str
    version: str
    source: TemplateSource
    #: e.g. ``{"kind": "EmailTemplate", "namespace": ..., "name": ..., "generation": ...}``
    origin: Mapping[str, Any]
    updated_at: str


class StoreKeys:
    """The Redis keys of one store (one ``key_prefix``)."""

    def __init__(self, prefix: str) -> None:
        self.data = f"{prefix}:templates:data"
        self.versions = f"{prefix}:templates:versions"
        self.epoch = f"{prefix}:templates:epoch"
        self.channel = f"{prefix}:templates:changes"
        self.archive = f"{prefix}:templates:archive"
        #: Layouts and partials: "namespace/name" -> JSON {kind, markup, body, version, origin}.
        self.parts = f"{prefix}:templates:parts"
        self.prefix = prefix

    def history(self, key: str) -> str:
        """The sorted set of ``key``'s kept versions, scored by when each was stored (ms)."""
        return f"{self.prefix}:templates:history:{key}"

    def refs(self, key: str, version: str) -> str:
        """The messages pinned to one version (sorted set: message id -> accepted at, ms)."""
        return f"{self.prefix}:templates:refs:{key}@{version}"


def archive_field(key: str, version: str) -> str:
    return f"{key}@{version}"


def encode_record(key: str, source: TemplateSource, origin: Mapping[str, Any]) -> bytes:
    return orjson.dumps({
        "key": key,
        "version": source.version,
        "updated_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "origin": dict(origin),
        "source": {
            "subject": source.subject, "mjml": source.mjml, "html": source.html,
            "text": source.text, "sender": source.sender, "reply_to": source.reply_to,
            "variables": source.variables, "sample_data": source.sample_data,
            "locales": {locale: override.content() for locale, override in source.locales.items()},
            "fallback_locale": source.fallback_locale,
            "stream": source.stream,
            "unsubscribe": source.unsubscribe,
        },
    })


def decode_record(raw: bytes | str) -> StoredTemplate:
    record = orjson.loads(raw)
    body = record["source"]
    source = TemplateSource(
        name=record["key"], subject=body["subject"], mjml=body.get("mjml"),
        html=body.get("html"), text=body.get("text"), sender=body.get("sender"),
        reply_to=body.get("reply_to"), variables=body.get("variables"),
        sample_data=body.get("sample_data") or {},
        locales={locale: LocaleOverride(**fields)
                 for locale, fields in (body.get("locales") or {}).items()},
        fallback_locale=body.get("fallback_locale"),
        stream=body.get("stream"),
        unsubscribe=body.get("unsubscribe") is True,
    )
    return StoredTemplate(key=record["key"], version=record["version"], source=source,
                          origin=record.get("origin") or {},
                          updated_at=record.get("updated_at", ""))


class TemplateStoreWriter:
    """Writes templates atomically; used by the operator and the dev sync.

    Parameters:
      client: a synchronous Redis client.
      prefix: the service's key prefix.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.keys = StoreKeys(prefix)
        self._put = client.register_script(_PUT)
        self._serve = client.register_script(_SERVE)
        self._delete = client.register_script(_DELETE)

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateStoreWriter:
        return cls(sync_client(settings.redis.where, "store"), settings.redis.key_prefix)

    def put(self, key: str, source: TemplateSource, origin: Mapping[str, Any], *,
            only_if_absent: bool = False) -> bool:
        """Store ``source`` under ``key``; ``False`` when that version was already stored (or,
        with ``only_if_absent``, when any version is).

        Raises ``redis.RedisError`` when the store is unreachable.
        """
        keys = self.keys
        changed = self._put(keys=[keys.data, keys.versions, keys.epoch, keys.archive,
                                  keys.history(key)],
                            args=[key, source.version, encode_record(key, source, origin),
                                  keys.channel, "1" if only_if_absent else "0",
                                  int(time.time() * 1000)])
        return bool(changed)

    def archive(self, key: str, source: TemplateSource, origin: Mapping[str, Any]) -> None:
        """Keep ``source`` in ``key``'s history without serving it (a pinned template's new
        spec: it can be served later by :meth:`serve`)."""
        keys = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(keys.archive, archive_field(key, source.version),
                    encode_record(key, source, origin))
        pipe.zadd(keys.history(key), {source.version: int(time.time() * 1000)}, nx=True)
        pipe.execute()

    def serve(self, key: str, version: str) -> bool | None:
        """Serve the archived ``version`` of ``key`` (a pin or a rollback): ``True`` when it
        changed, ``False`` when it already served, ``None`` when that version is not kept."""
        keys = self.keys
        result = self._serve(keys=[keys.data, keys.versions, keys.epoch, keys.archive],
                             args=[key, version, keys.channel])
        return None if result == -1 else bool(result)

    def archived(self, key: str, version: str) -> StoredTemplate | None:
        raw = self.client.hget(self.keys.archive, archive_field(key, version))
        return decode_record(raw) if raw is not None else None

    def put_part(self, key: str, part: Part, origin: Mapping[str, Any]) -> bool:
        """Store a layout or partial; ``False`` when that version was already stored."""
        stored = self.get_part(key)
        if stored is not None and stored.version == part.version:
            return False
        self.client.hset(self.keys.parts, key, orjson.dumps({
            "kind": part.kind, "markup": part.markup, "body": part.body,
            "version": part.version, "origin": dict(origin),
            "updated_at": datetime.datetime.now(datetime.UTC).isoformat()}))
        return True

    def get_part(self, key: str) -> Part | None:
        raw = self.client.hget(self.keys.parts, key)
        if raw is None:
            return None
        record = orjson.loads(raw)
        return Part(record["kind"], record["body"], record.get("markup", "mjml"))

    def delete_part(self, key: str) -> bool:
        return bool(self.client.hdel(self.keys.parts, key))

    def delete(self, key: str) -> bool:
        """Remove ``key``; ``False`` when it was not stored."""
        keys = self.keys
        return bool(self._delete(keys=[keys.data, keys.versions, keys.epoch],
                                 args=[key, keys.channel]))

    def get(self, key: str) -> StoredTemplate | None:
        raw = self.client.hget(self.keys.data, key)
        return decode_record(raw) if raw is not None else None

    def versions(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(self.keys.versions).items()}

    def close(self) -> None:
        self.client.close()


class RedisTemplateStore:
    """A :class:`~mailcore.templates.TemplateStore` served from memory, kept fresh from Redis.

    Parameters:
      redis_url: where the store lives: a URL, or the Sentinel set whose primary holds it.
      prefix: the service's key prefix.
      namespaces: which namespaces count, in lookup order for bare names; ``*`` admits
        qualified names from any namespace.
      refresh_seconds: how often the epoch is compared when no broadcast arrives.
    """

    def __init__(
        self, redis_url: Where, prefix: str, namespaces: Sequence[str], *,
        refresh_seconds: float = 5.0,
    ) -> None:
        self.redis_url = redis_url
        self.keys = StoreKeys(prefix)
        self.search = [ns for ns in namespaces if ns != "*"]
        self.any_namespace = "*" in namespaces
        self.refresh_seconds = refresh_seconds
        #: key -> record; replaced whole on every refresh, so reads need no lock.
        self._records: dict[str, StoredTemplate] = {}
        #: "key@version" -> an archived record read before (versions never change).
        self._archived: dict[str, StoredTemplate] = {}
        self._archive_lock = threading.Lock()
        self._epoch: str | None = None
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._pubsub: Any = None
        #: Set while subscribed to the change broadcast and caught up.
        self.following = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisTemplateStore:
        return cls(settings.redis.where, settings.redis.key_prefix, settings.templates.namespaces,
                   refresh_seconds=settings.templates.refresh_seconds)

    # -- the TemplateStore protocol (hot path: memory only) --------------------------------------

    def get(self, name: str) -> TemplateSource | None:
        record = self.lookup(name)
        return record.source if record is not None else None

    def lookup(self, name: str) -> StoredTemplate | None:
        """The stored record a caller's name resolves to (see the module docstring)."""
        self._ensure_started()
        records = self._records
        if "/" in name:
            namespace = name.partition("/")[0]
            if self.any_namespace or namespace in self.search:
                return records.get(name)
            return None
        for namespace in self.search:
            record = records.get(f"{namespace}/{name}")
            if record is not None:
                return record
        return None

    def archived(self, key: str, version: str) -> StoredTemplate | None:
        """The kept ``version`` of the stored template ``key`` (one Redis read unless it is the
        version serving, or was read before). Raises ``redis.RedisError`` when unreachable."""
        self._ensure_started()
        current = self._records.get(key)
        if current is not None and current.version == version:
            return current
        field = archive_field(key, version)
        cached = self._archived.get(field)
        if cached is not None:
            return cached
        raw = self._redis().hget(self.keys.archive, field)
        if raw is None:
            return None
        record = decode_record(raw)
        with self._archive_lock:
            if len(self._archived) >= 256:
                self._archived.pop(next(iter(self._archived)))
            self._archived[field] = record
        return record

    def origin(self, name: str) -> dict[str, Any] | None:
        record = self.lookup(name)
        if record is None:
            return None
        return {**record.origin, "updated_at": record.updated_at}

    def names(self) -> list[str]:
        """Every stored name a caller may use: qualified ones, and bare ones that resolve."""
        self._ensure_started()
        result: set[str] = set()
        for key in self._records:
            namespace, _, bare = key.partition("/")
            if self.any_namespace or namespace in self.search:
                result.add(key)
            if namespace in self.search and self.lookup(bare) is self._records[key]:
                result.add(bare)
        return sorted(result)

    # -- keeping the cache fresh -----------------------------------------------------------------

    def start(self) -> None:
        """Load everything once (best effort), then follow changes in a background thread."""
        self._ensure_started()

    def close(self) -> None:
        """Stop following changes (within a second) and close the connections."""
        self._stop.set()
        pubsub = self._pubsub
        if pubsub is not None:  # wakes the follower out of its wait for a message
            # (both threads may close it; redis-py's reset is not thread-safe about that)
            with contextlib.suppress(redis.RedisError, OSError, AttributeError):
                pubsub.close()
        if self._thread is not None:
            self._thread.join(timeout=_JOIN_SECONDS)
        if self._client is not None:
            self._client.close()

    def refresh(self) -> bool:
        """Bring the cache up to date with Redis now; ``True`` when something changed."""
        client = self._redis()
        epoch = _optional_text(client.get(self.keys.epoch))
        versions = {_text(k): _text(v) for k, v in client.hgetall(self.keys.versions).items()}
        current = self._records
        stale = [key for key, version in versions.items()
                 if key not in current or current[key].version != version]
        fetched: dict[str, StoredTemplate] = {}
        if stale:
            for key, raw in zip(stale, client.hmget(self.keys.data, stale), strict=True):
                if raw is not None:
                    fetched[key] = decode_record(raw)
        changed = bool(fetched) or any(key not in versions for key in current)
        if changed:
            records = {key: current[key] for key in versions if key in current and key not in stale}
            records.update(fetched)
            self._records = records
            updated = ", ".join(f"{k}@{r.version}" for k, r in sorted(fetched.items()))
            log.info("template store: %d templates (%s)", len(records), updated or "removals")
        self._epoch = epoch
        return changed

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = sync_client(self.redis_url, "store")
        return self._client

    def _ensure_started(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._start_lock:
            if self._pid == pid:
                return
            # A forked child inherits no thread and must not share the parent's sockets.
            self._client = None
            self._stop = threading.Event()
            self.following = threading.Event()
            try:
                self.refresh()
            except redis.RedisError as exc:
                log.warning("template store unreachable, serving built-in templates until it "
                            "answers: %s", exc)
            self._thread = threading.Thread(
                target=_follow, args=(weakref.ref(self), self._stop, self.following),
                name="template-store", daemon=True)
            self._thread.start()
            self._pid = pid


def _follow(ref: weakref.ReferenceType[RedisTemplateStore], stop: threading.Event,
            following: threading.Event) -> None:
    """The follower thread: holds its store only weakly, so a dropped store stops it."""
    backoff = 0.1
    outage = False
    while not stop.is_set():
        pubsub = None
        store = ref()
        if store is None:
            return
        try:
            pubsub = store._redis().pubsub(  # type: ignore[no-untyped-call]
                ignore_subscribe_messages=True)
            store._pubsub = pubsub
            pubsub.subscribe(store.keys.channel)
            # Subscribed: anything changed from now on is announced; catch up on the past.
            store.refresh()
            following.set()
            if outage:
                log.info("template store: reachable again")
            backoff, outage = 0.1, False
            period = store.refresh_seconds
            next_poll = time.monotonic() + period
            store = None
            while not stop.is_set():
                message = pubsub.get_message(timeout=min(1.0, period))
                store = ref()
                if store is None:
                    return
                if message is not None:
                    store.refresh()
                    next_poll = time.monotonic() + period
                elif time.monotonic() >= next_poll:
                    # No broadcast for a while: did the epoch move (a missed broadcast)?
                    if store._epoch != _optional_text(store._redis().get(store.keys.epoch)):
                        store.refresh()
                    next_poll = time.monotonic() + period
                store = None
        # AttributeError/ValueError (TypeError with hiredis, which redis-py uses whenever it is
        # installed): redis-py's reaction to its connection being closed under it (by close(),
        # or by the client's finalizer once the store is dropped).
        except (redis.RedisError, OSError, ValueError, AttributeError, TypeError) as exc:
            store = None
            following.clear()
            if stop.is_set() or ref() is None:
                return
            # One warning per outage; the retries are debug noise.
            (log.debug if outage else log.warning)(
                "template store: %s; serving the last known templates, retrying", exc)
            outage = True
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
        finally:
            if pubsub is not None:
                with contextlib.suppress(redis.RedisError, OSError, AttributeError, TypeError):
                    pubsub.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional_text(value: bytes | str | None) -> str | None:
    return None if value is None else _text(value)


def template_store_from_settings(settings: Settings) -> RedisTemplateStore | None:
    """The store the ingress and workers read, or ``None`` when ``TEMPLATE_STORE`` is off.

    It is loaded here, at process start, so the first request never waits on Redis (and the
    event loop never blocks on it); a Redis that is down is retried in the background.
    """
    if not settings.templates.store_enabled:
        return None
    store = RedisTemplateStore.from_settings(settings)
    store.start()
    return store
