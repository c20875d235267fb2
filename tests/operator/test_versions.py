"""Template versions in the store: archive and history, serving a kept version, pins, and what
the collector keeps (retention rules of :mod:`mailcore.template_history`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from mailcore.rendering import TemplateError, TemplateSource
from mailcore.status import status_key
from mailcore.store import RedisTemplateStore, StoreKeys, TemplateStoreWriter
from mailcore.template_history import PIN_GRACE_SECONDS, collect_garbage
from mailcore.template_resources import pinned_version, resource_origin
from mailcore.templates import Pin, TemplateRegistry

from ..support import RedisServer

KEY = "team-a/news"


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(store_redis: RedisServer) -> redis.Redis:
    return store_redis.client()


@pytest.fixture
def writer(client: redis.Redis, prefix: str) -> Iterator[TemplateStoreWriter]:
    writer = TemplateStoreWriter(client, prefix)
    yield writer


def source(label: str, key: str = KEY) -> TemplateSource:
    return TemplateSource(name=key, subject=f"{label} {{{{ name }}}}", html="<p>{{ name }}</p>",
                          sample_data={"name": "x"})


def archived(client: redis.Redis, prefix: str) -> set[str]:
    fields: list[bytes] = client.hkeys(StoreKeys(prefix).archive)  # type: ignore[assignment]
    return {field.decode() for field in fields}


def history(client: redis.Redis, prefix: str, key: str = KEY) -> list[str]:
    versions: list[bytes] = client.zrevrange(  # type: ignore[assignment]
        StoreKeys(prefix).history(key), 0, -1)
    return [v.decode() for v in versions]


def pin_message(client: redis.Redis, prefix: str, version: str, status: str | None, *,
                age: float = 0.0) -> str:
    """A message pinned to ``version`` whose status is ``status`` (``None``: no status record),
    referenced ``age`` seconds ago."""
    message_id = str(uuid.uuid4())
    client.zadd(StoreKeys(prefix).refs(KEY, version),
                {message_id: int((time.time() - age) * 1000)})
    if status is not None:
        client.hset(status_key(prefix, message_id), "status", status)
    return message_id


def test_every_served_version_is_archived_with_its_history(
    writer: TemplateStoreWriter, client: redis.Redis, prefix: str,
) -> None:
    v1, v2 = source("one"), source("two")
    assert writer.put(KEY, v1, {"kind": "EmailTemplate", "generation": 1})
    time.sleep(0.002)  # history is scored in ms
    assert writer.put(KEY, v2, {"kind": "EmailTemplate", "generation": 2})
    assert history(client, prefix) == [v2.version, v1.version]
    old = writer.archived(KEY, v1.version)
    assert old is not None and old.source == v1 and old.origin["generation"] == 1
    # The same version again changes nothing, not even its place in the history.
    assert not writer.put(KEY, v2, {})
    assert history(client, prefix) == [v2.version, v1.version]


def test_serve_puts_a_kept_version_back_and_refuses_unknown_ones(
    writer: TemplateStoreWriter, client: redis.Redis, prefix: str,
) -> None:
    v1, v2, v3 = source("one"), source("two"), source("three")
    writer.put(KEY, v1, {})
    writer.put(KEY, v2, {})
    assert writer.serve(KEY, v1.version) is True
    assert writer.versions()[KEY] == v1.version
    assert writer.get(KEY).source == v1  # type: ignore[union-attr]
    assert writer.serve(KEY, v1.version) is False  # already serving: no broadcast
    assert writer.serve(KEY, "0123456789abcdef") is None
    assert writer.serve("team-a/none", v1.version) is None
    # archive(): kept in the history, not serving.
    writer.archive(KEY, v3, {"kind": "EmailTemplate"})
    assert writer.versions()[KEY] == v1.version
    assert v3.version in history(client, prefix)


def test_readers_and_the_registry_find_pinned_versions_after_changes_and_deletion(
    writer: TemplateStoreWriter, store_redis: RedisServer, prefix: str,
) -> None:
    v1, v2 = source("one"), source("two")
    writer.put(KEY, v1, {})
    store = RedisTemplateStore(store_redis.url, prefix, ["team-a"], refresh_seconds=60)
    try:
        registry = TemplateRegistry({}, store)
        resolved = registry.resolve("news")
        assert resolved is not None and resolved.pin == Pin(KEY, v1.version)
        writer.put(KEY, v2, {})
        store.refresh()
        assert registry.resolve("news").pin == Pin(KEY, v2.version)  # type: ignore[union-attr]
        older = registry.resolve("news", v1.version)
        assert older is not None and older.template.version == v1.version
        with pytest.raises(TemplateError) as refused:
            registry.resolve("news", "0123456789abcdef")
        assert refused.value.reason == "UnknownTemplateVersion"
        writer.delete(KEY)
        store.refresh()
        assert registry.resolve("news") is None
        pinned = registry.pinned(Pin(KEY, v1.version))
        assert pinned is not None and pinned.source.subject == "one {{ name }}"
        assert registry.pinned(Pin(KEY, "0123456789abcdef")) is None
    finally:
        store.close()


def test_the_collector_keeps_the_newest_versions_and_referenced_ones_only(
    writer: TemplateStoreWriter, client: redis.Redis, prefix: str,
) -> None:
    versions = [source(f"v{i}") for i in range(6)]
    for version in versions:
        writer.put(KEY, version, {})
        time.sleep(0.002)
    v = [s.version for s in versions]
    queued = pin_message(client, prefix, v[0], "queued", age=3600)
    retrying = pin_message(client, prefix, v[1], "retrying", age=3600)
    dead = pin_message(client, prefix, v[2], "dead", age=3600)  # a dead letter may be retried
    pin_message(client, prefix, v[3], "sent", age=3600)  # done: no longer holds v3
    pin_message(client, prefix, v[3], None, age=3600)  # status expired: neither

    removed = collect_garbage(client, prefix, keep=2)
    assert removed == [f"{KEY}@{v[3]}"]
    assert archived(client, prefix) == {f"{KEY}@{x}" for x in (v[0], v[1], v[2], v[4], v[5])}
    assert not client.exists(StoreKeys(prefix).refs(KEY, v[3]))

    # Messages finish: their versions go, the newest two stay.
    for message_id in (queued, retrying, dead):
        client.hset(status_key(prefix, message_id), "status", "sent")
    collect_garbage(client, prefix, keep=2)
    assert archived(client, prefix) == {f"{KEY}@{v[4]}", f"{KEY}@{v[5]}"}
    assert history(client, prefix) == [v[5], v[4]]


def test_a_reference_without_status_is_kept_for_a_grace_period(
    writer: TemplateStoreWriter, client: redis.Redis, prefix: str,
) -> None:
    v1, v2 = source("one"), source("two")
    writer.put(KEY, v1, {})
    writer.put(KEY, v2, {})
    pin_message(client, prefix, v1.version, None)  # written just before the status record
    assert collect_garbage(client, prefix, keep=1) == []
    later = time.time() + PIN_GRACE_SECONDS + 1
    assert collect_garbage(client, prefix, keep=1, now=later) == [f"{KEY}@{v1.version}"]


def test_a_finished_message_releases_its_version_at_once(
    writer: TemplateStoreWriter, client: redis.Redis, prefix: str,
) -> None:
    v1, v2 = source("one"), source("two")
    writer.put(KEY, v1, {})
    writer.put(KEY, v2, {})
    pin_message(client, prefix, v1.version, "failed")
    assert collect_garbage(client, prefix, keep=1) == [f"{KEY}@{v1.version}"]


def test_a_deleted_template_keeps_only_its_referenced_versions(
    writer: TemplateStoreWriter, client: redis.Redis, prefix: str,
) -> None:
    v1, v2, v3 = source("one"), source("two"), source("three")
    for version in (v1, v2, v3):
        writer.put(KEY, version, {})
    pin_message(client, prefix, v2.version, "queued", age=3600)
    writer.delete(KEY)
    collect_garbage(client, prefix, keep=10)
    assert archived(client, prefix) == {f"{KEY}@{v2.version}"}


def test_the_serving_version_is_never_collected(
    writer: TemplateStoreWriter, client: redis.Redis, prefix: str,
) -> None:
    v1, v2 = source("one"), source("two")
    writer.put(KEY, v1, {})
    writer.put(KEY, v2, {})
    writer.serve(KEY, v1.version)  # pinned back to the older one
    collect_garbage(client, prefix, keep=1)
    assert f"{KEY}@{v1.version}" in archived(client, prefix)
    assert writer.get(KEY).version == v1.version  # type: ignore[union-attr]


#: Sixteen characters that are digits to str.isdigit, not hexadecimal ASCII.
ARABIC_DIGITS = "".join(chr(0x0660 + i) for i in range(10)) + "abcdef"


@pytest.mark.parametrize("value", [
    12345, 1.5, True, ["0123456789abcdef"], {"v": 1}, "", "0123456789ABCDEF", "0123456789abcde",
    "0123456789abcdef0", "../../etc/passwd", "0123456789abcde\x00", ARABIC_DIGITS,
    "a" * 100_000,
])
def test_pinned_version_shapes_are_refused_with_a_clear_reason(value: object) -> None:
    with pytest.raises(TemplateError) as refused:
        pinned_version({"pinnedVersion": value})
    assert refused.value.reason == "InvalidTemplate"
    assert "spec.pinnedVersion must be a 16-hex-digit version" in refused.value.message
    assert len(refused.value.message) < 200


def test_pinned_version_absent_or_valid() -> None:
    assert pinned_version({}) is None
    assert pinned_version({"pinnedVersion": "0123456789abcdef"}) == "0123456789abcdef"


def test_origin_carries_generation_and_a_bounded_change_cause() -> None:
    meta = {"uid": "u", "generation": 4,
            "annotations": {"kubernetes.io/change-cause": "x" * 5000}}
    origin = resource_origin("team-a", "news", meta)
    assert origin["generation"] == 4 and len(origin["changeCause"]) == 1024
    assert "changeCause" not in resource_origin("team-a", "news", {"generation": 1})
