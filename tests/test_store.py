"""The Redis template store: atomic writes, in-memory reads, broadcast refresh, convergence."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import orjson
import pytest

from mailcore.rendering import LocaleOverride, TemplateSource
from mailcore.store import (
    RedisTemplateStore,
    StoreKeys,
    TemplateStoreWriter,
    encode_record,
    template_store_from_settings,
)

from .support import RedisServer, make_settings, wait_for


@pytest.fixture(scope="module")
def store_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """This module's own redis-server: a test stops and restarts it."""
    server = RedisServer(tmp_path_factory.mktemp("store-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def writer(store_redis: RedisServer, prefix: str) -> Iterator[TemplateStoreWriter]:
    writer = TemplateStoreWriter(store_redis.client(), prefix)
    yield writer
    writer.close()


def source(key: str, subject: str = "Hi {{ name }}") -> TemplateSource:
    return TemplateSource(name=key, subject=subject, html="<p>{{ name }}</p>",
                          variables={"type": "object"}, sample_data={"name": "x"},
                          locales={"de": LocaleOverride(subject="Hallo")})


def reader(store_redis: RedisServer, prefix: str, refresh: float = 60) -> RedisTemplateStore:
    return RedisTemplateStore(store_redis.url, prefix, ["team-a", "team-b"],
                              refresh_seconds=refresh)


def test_put_writes_record_index_epoch_and_broadcast_atomically(
    writer: TemplateStoreWriter, store_redis: RedisServer, prefix: str,
) -> None:
    client = store_redis.client()
    keys = StoreKeys(prefix)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(keys.channel)
    try:
        confirmed = wait_for(lambda: pubsub.get_message(timeout=0.1), message="SUBSCRIBE")
        assert confirmed["type"] == "subscribe"
        src = source("team-a/welcome")
        assert writer.put("team-a/welcome", src, {"kind": "EmailTemplate"}) is True
        assert client.hget(keys.versions, "team-a/welcome") == src.version.encode()
        assert client.get(keys.epoch) == b"1"
        stored = writer.get("team-a/welcome")
        assert stored is not None and stored.source == src and stored.version == src.version
        message = wait_for(lambda: pubsub.get_message(timeout=0.1), message="the broadcast")
        assert orjson.loads(message["data"]) == {"key": "team-a/welcome",
                                                  "version": src.version, "epoch": 1}

        # The same version again: nothing written, no epoch change, no broadcast.
        assert writer.put("team-a/welcome", src, {"kind": "EmailTemplate"}) is False
        assert client.get(keys.epoch) == b"1"
        assert pubsub.get_message(timeout=0.2) is None

        newer = source("team-a/welcome", "newer")
        assert writer.put("team-a/welcome", newer, {}, only_if_absent=True) is False
        assert writer.get("team-a/welcome").version == src.version  # type: ignore[union-attr]

        assert writer.delete("team-a/welcome") is True
        assert writer.delete("team-a/welcome") is False
        assert client.hlen(keys.data) == 0 and client.hlen(keys.versions) == 0
        assert client.get(keys.epoch) == b"2"
    finally:
        pubsub.close()


def test_reads_are_served_from_memory(
    writer: TemplateStoreWriter, store_redis: RedisServer, prefix: str,
) -> None:
    writer.put("team-a/hot", source("team-a/hot"), {})
    store = reader(store_redis, prefix)
    try:
        assert store.get("hot") is not None  # loads once
        assert store.following.wait(5)  # the follower subscribed and caught up
        client = store_redis.client()

        def commands() -> int:
            stats = client.info("commandstats")
            return sum(int(v["calls"]) for k, v in stats.items()
                       if k not in {"cmdstat_info"})

        before = commands()
        started = time.perf_counter()
        for _ in range(10_000):
            assert store.get("hot") is not None
            assert store.get("team-a/hot") is not None
        elapsed = time.perf_counter() - started
        assert commands() == before  # not one Redis command on the hot path
        assert elapsed < 0.5  # 20k look-ups: memory speed
    finally:
        store.close()


def test_broadcast_refreshes_readers_at_once(
    writer: TemplateStoreWriter, store_redis: RedisServer, prefix: str,
) -> None:
    store = reader(store_redis, prefix, refresh=60)  # the poll will not help within the test
    try:
        assert store.get("welcome") is None
        writer.put("team-a/welcome", source("team-a/welcome", "v1"), {})
        wait_for(lambda: store.get("welcome"), timeout=2, message="v1")
        started = time.monotonic()
        writer.put("team-a/welcome", source("team-a/welcome", "v2"), {})
        wait_for(lambda: (s := store.get("welcome")) is not None and s.subject == "v2",
                 timeout=2, message="v2")
        assert time.monotonic() - started < 0.5
        writer.delete("team-a/welcome")
        wait_for(lambda: store.get("welcome") is None, timeout=2, message="the removal")
    finally:
        store.close()


def test_a_missed_broadcast_still_converges(
    writer: TemplateStoreWriter, store_redis: RedisServer, prefix: str,
) -> None:
    store = reader(store_redis, prefix, refresh=0.2)
    try:
        assert store.get("quiet") is None
        # A write whose broadcast nobody heard (as if the reader was disconnected then).
        keys = StoreKeys(prefix)
        src = source("team-b/quiet")
        client = store_redis.client()
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.data, "team-b/quiet", encode_record("team-b/quiet", src, {}))
            pipe.hset(keys.versions, "team-b/quiet", src.version)
            pipe.incr(keys.epoch)
            pipe.execute()
        wait_for(lambda: store.get("quiet"), timeout=3, message="the epoch poll to catch up")
    finally:
        store.close()


def test_readers_keep_serving_while_redis_is_down_and_catch_up_after(
    writer: TemplateStoreWriter, store_redis: RedisServer, prefix: str,
) -> None:
    writer.put("team-a/steady", source("team-a/steady", "before"), {})
    store = reader(store_redis, prefix, refresh=0.2)
    try:
        assert store.get("steady") is not None
        store_redis.stop()
        try:
            for _ in range(3):
                found = store.get("steady")
                assert found is not None and found.subject == "before"
        finally:
            store_redis.start()
        TemplateStoreWriter(store_redis.client(), prefix).put(
            "team-a/steady", source("team-a/steady", "after"), {})
        wait_for(lambda: (s := store.get("steady")) is not None and s.subject == "after",
                 timeout=10, message="the reader to reconnect and catch up")
    finally:
        store.close()


def test_name_resolution(
    writer: TemplateStoreWriter, store_redis: RedisServer, prefix: str,
) -> None:
    for key in ("team-a/a-only", "team-b/b-only", "team-a/both", "team-b/both", "other/x"):
        writer.put(key, source(key, key), {})
    store = reader(store_redis, prefix)
    try:
        def subject(name: str) -> str | None:
            found = store.get(name)
            return found.subject if found else None

        assert subject("a-only") == "team-a/a-only"
        assert subject("b-only") == "team-b/b-only"
        assert subject("both") == "team-a/both"  # first configured namespace wins
        assert subject("team-b/both") == "team-b/both"
        assert subject("x") is None and subject("other/x") is None  # namespace does not count
        assert store.names() == sorted({"a-only", "b-only", "both", "team-a/a-only",
                                        "team-a/both", "team-b/b-only", "team-b/both"})
        anywhere = RedisTemplateStore(store_redis.url, prefix, ["team-a", "*"])
        try:
            assert anywhere.get("other/x") is not None and anywhere.get("x") is None
        finally:
            anywhere.close()
    finally:
        store.close()


def test_store_from_settings(store_redis: RedisServer) -> None:
    settings = make_settings(TEMPLATE_NAMESPACES="team-a, team-b,*", TEMPLATE_REFRESH_SECONDS="2",
                             REDIS_URL=store_redis.url)
    store = template_store_from_settings(settings)
    assert store is not None
    try:
        assert (store.search, store.any_namespace, store.refresh_seconds) == (
            ["team-a", "team-b"], True, 2.0)
        assert store._thread is not None  # started (and loaded) at once
    finally:
        store.close()
    disabled = make_settings(TEMPLATE_STORE="off")
    assert template_store_from_settings(disabled) is None
    assert make_settings().templates.namespaces == ("default",)


def test_a_dropped_store_stops_its_follower_thread(store_redis: RedisServer, prefix: str) -> None:
    import gc
    import threading

    store = reader(store_redis, prefix, refresh=0.1)
    store.start()
    assert store.following.wait(5)
    thread = store._thread
    assert thread is not None and thread.is_alive()
    del store
    gc.collect()
    wait_for(lambda: not thread.is_alive(), timeout=5, message="the follower to stop")
    assert all(t.name != "template-store" or t is not thread for t in threading.enumerate())
