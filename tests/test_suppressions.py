"""mailcore.suppressions against a real Redis: entries per mailbox and scope, expiry, paging with
cursors and filters, the one-step writer for pipelines, the Lua lookup, hostile addresses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from mailcore import lifecycle
from mailcore.suppressions import (
    GLOBAL,
    LOOKUP_LUA,
    MAX_PAGE,
    Suppression,
    SuppressionList,
    SyncSuppressionList,
    add_to,
    decode_cursor,
    encode_cursor,
    hash_key,
    lookup_fields,
    suppression_address,
)

from .support import RedisServer


@pytest.fixture
def prefix() -> str:
    return f"supp-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis_server.client()
    yield connection
    connection.close()


@pytest.fixture
def store(client: redis.Redis, prefix: str) -> SyncSuppressionList:
    return SyncSuppressionList(client, prefix)


def entry(address: str, reason: str = "manual", scope: str = GLOBAL, **more: object
          ) -> Suppression:
    return Suppression(address=suppression_address(address), reason=reason, scope=scope,
                       **more)  # type: ignore[arg-type]


def test_an_entry_applies_to_every_spelling_of_the_mailbox(store: SyncSuppressionList) -> None:
    store.add(entry("Ada+news@Example.COM", "hard_bounce", source_message_id="m1"))
    got = store.get("ada@example.com")
    assert got is not None and got.address == "ada@example.com"
    assert got.reason == "hard_bounce" and got.source_message_id == "m1"
    assert store.suppressed(["ADA+other@example.com", "bob@example.com"], "transactional") == {
        "ADA+other@example.com"}


def test_idn_domains_fold_to_one_entry(store: SyncSuppressionList) -> None:
    store.add(entry("kim@straße.de"))
    assert store.get("kim@xn--strae-oqa.de") is not None
    assert store.suppressed(["kim@xn--strae-oqa.de"], "bulk") == {"kim@xn--strae-oqa.de"}
    # IDNA 2003 would have mapped it to strasse.de, another domain: not suppressed.
    assert store.suppressed(["kim@strasse.de"], "bulk") == set()


def test_stream_scope_applies_to_its_stream_only(store: SyncSuppressionList) -> None:
    store.add(entry("eve@example.com", "unsubscribe", scope="bulk"))
    assert store.suppressed(["eve@example.com"], "bulk") == {"eve@example.com"}
    assert store.suppressed(["eve@example.com"], "transactional") == set()
    assert store.get("eve@example.com") is None
    assert store.get("eve@example.com", "bulk") is not None


def test_expired_entries_stop_applying_and_are_removed_when_read(
        store: SyncSuppressionList, client: redis.Redis, prefix: str) -> None:
    now = time.time()
    store.add(entry("old@example.com", expires_at=now - 1))
    store.add(entry("new@example.com", expires_at=now + 3600))
    assert store.suppressed(["old@example.com", "new@example.com"], "bulk") == {
        "new@example.com"}
    assert store.get("old@example.com") is None
    assert client.hget(hash_key(prefix), "global:old@example.com") is None
    assert [e.address for e in store.page()[0]] == ["new@example.com"]


def test_replacing_an_entry_moves_it_between_reason_indexes(store: SyncSuppressionList) -> None:
    store.add(entry("x@example.com", "manual"))
    store.add(entry("x@example.com", "complaint"))
    assert store.page(reason="manual")[0] == []
    assert [e.reason for e in store.page(reason="complaint")[0]] == ["complaint"]
    assert len(store.page()[0]) == 1


def test_remove_reports_whether_an_entry_was_there(store: SyncSuppressionList) -> None:
    store.add(entry("r@example.com"))
    assert store.remove("R@example.com") is True
    assert store.remove("r@example.com") is False
    assert store.page() == ([], None)


def test_paging_visits_every_entry_once_while_entries_come_and_go(
        store: SyncSuppressionList) -> None:
    for number in range(25):
        store.add(entry(f"user{number:02d}@example.com",
                        "hard_bounce" if number % 2 else "manual",
                        scope="bulk" if number % 3 == 0 else GLOBAL))
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = store.page(cursor, 4)
        seen.extend(f"{e.scope}:{e.address}" for e in page)
        if len(seen) == 8:
            store.add(entry("aaa@example.com", scope="bulk"))  # before the cursor: unseen
            store.remove("user24@example.com", "bulk")  # after it: gone
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 24
    assert seen == sorted(seen)
    bulk = [e.address for e in store.iterate(scope="bulk")]
    assert bulk == ["aaa@example.com", *(f"user{n:02d}@example.com" for n in range(0, 24, 3))]
    bounced_bulk = [e.address for e in store.iterate(scope="bulk", reason="hard_bounce")]
    assert bounced_bulk == [f"user{n:02d}@example.com" for n in (3, 9, 15, 21)]


def test_a_page_skips_expired_entries_and_is_still_full(store: SyncSuppressionList) -> None:
    for number in range(10):
        store.add(entry(f"e{number}@example.com", expires_at=time.time() - 5))
    for number in range(3):
        store.add(entry(f"z{number}@example.com"))
    page, cursor = store.page(limit=3)
    assert [e.address for e in page] == [f"z{n}@example.com" for n in range(3)]
    assert store.page(cursor, 3) == ([], None)


@pytest.mark.parametrize("cursor", ["", "!!!", "a" * 900, "bm9jb2xvbg", "\u00e9t\u00e9",
                                    encode_cursor("global:x") + "\x00"])
def test_malformed_cursors_are_refused(store: SyncSuppressionList, cursor: str) -> None:
    with pytest.raises(ValueError):
        store.page(cursor)


def test_a_cursor_from_another_scope_is_refused(store: SyncSuppressionList) -> None:
    with pytest.raises(ValueError, match="scope"):
        store.page(encode_cursor("global:a@example.com"), scope="bulk")
    assert decode_cursor(encode_cursor("bulk:a@example.com")) == "bulk:a@example.com"


@pytest.mark.parametrize(("limit", "reason", "scope"), [
    (0, None, None), (MAX_PAGE + 1, None, None), (10, "spam", None), (10, None, "Bulk"),
    (10, None, "a:b"), (10, None, "x" * 40)])
def test_bad_page_arguments_are_refused(store: SyncSuppressionList, limit: int,
                                        reason: str | None, scope: str | None) -> None:
    with pytest.raises(ValueError):
        store.page(limit=limit, reason=reason, scope=scope)


@pytest.mark.parametrize("address", [
    "", "no-at-sign", "a@b@c.com", "ünïcode@example.com", "\"quoted local\"@example.com",
    "x" * 65 + "@example.com", "a@" + "b" * 300 + ".com", "a" * 5000 + "@example.com",
    "ada@example.com\r\nBcc: x@evil.test", "ada\x00@example.com", "ada@exa\tmple.com",
    "<ada@example.com>", 42, None, ["ada@example.com"],
])
def test_hostile_addresses_are_refused(address: object) -> None:
    with pytest.raises(ValueError):
        suppression_address(address)  # type: ignore[arg-type]


@pytest.mark.parametrize("fields", [
    {"reason": "spam"}, {"scope": "Global"}, {"scope": "a:b"}, {"created_at": float("nan")},
    {"created_at": -1}, {"created_at": True}, {"expires_at": "tomorrow"},
    {"source_message_id": ""}, {"source_message_id": 7}, {"address": "nobody"},
])
def test_invalid_entries_are_refused(fields: dict[str, object]) -> None:
    base: dict[str, object] = {"address": "a@example.com", "reason": "manual",
                               "created_at": 1.0}
    with pytest.raises(ValueError):
        Suppression.from_json({**base, **fields})


def test_json_round_trip_and_unknown_fields() -> None:
    one = entry("a@example.com", "complaint", scope="bulk", source_message_id="m",
                created_at=5.0, expires_at=9.5)
    assert Suppression.from_json(orjson.loads(orjson.dumps(one.to_json()))) == one
    with pytest.raises(ValueError, match="unknown"):
        Suppression.from_json({**one.to_json(), "extra": 1})
    with pytest.raises(ValueError, match="required"):
        Suppression.from_json({"address": "a@example.com"})
    with pytest.raises(ValueError):
        Suppression.from_json([1, 2])  # type: ignore[arg-type]


def test_unreadable_stored_entries_are_ignored(store: SyncSuppressionList, client: redis.Redis,
                                               prefix: str) -> None:
    client.hset(hash_key(prefix), "global:bad@example.com", b"\xff{not json")
    assert store.suppressed(["bad@example.com"], "bulk") == set()


def test_add_to_joins_the_callers_transaction(client: redis.Redis, prefix: str,
                                              store: SyncSuppressionList) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(f"{prefix}:msg:m1", "status", "suppressed")
        add_to(pipe, prefix, entry("p@example.com", "unsubscribe", source_message_id="m1"))
        lifecycle.emit(pipe, prefix, lifecycle.lifecycle_event(
            lifecycle.UNSUBSCRIBED, "m1", recipient="p@example.com"))
        pipe.execute()
    assert store.get("p@example.com") is not None
    assert client.xlen(lifecycle.stream_key(prefix)) == 1


def test_the_lua_lookup_matches_the_python_one(client: redis.Redis, prefix: str,
                                               store: SyncSuppressionList) -> None:
    now = time.time()
    store.add(entry("g@example.com"))
    store.add(entry("s@example.com", scope="bulk"))
    store.add(entry("x@example.com", expires_at=now - 1))
    client.hset(hash_key(prefix), "global:junk@example.com", "[not an object")
    script = client.register_script(LOOKUP_LUA + """
local hit = suppression_hits(KEYS[1], ARGV, 2, tonumber(ARGV[1]), tonumber(redis.call('TIME')[1]))
local out = {}
for i = 1, tonumber(ARGV[1]) / 2 do out[i] = hit[i] and 1 or 0 end
return out
""")
    addresses = ["g@example.com", "s@example.com", "x@example.com", "junk@example.com",
                 "n@example.com"]
    fields = lookup_fields(addresses, "bulk")
    assert script(keys=[hash_key(prefix)], args=[len(fields), *fields]) == [1, 1, 0, 0, 0]
    assert store.suppressed(addresses, "bulk") == {"g@example.com", "s@example.com"}
    transactional = lookup_fields(addresses, "transactional")
    assert script(keys=[hash_key(prefix)], args=[len(transactional), *transactional]) == [
        1, 0, 0, 0, 0]


def test_the_asyncio_list_behaves_like_the_sync_one(redis_server: RedisServer,
                                                    prefix: str) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            store = SuppressionList(client, prefix)
            await store.add(entry("a@example.com", "complaint"))
            await store.add(entry("b@example.com", scope="bulk", expires_at=time.time() - 1))
            await store.add(entry("c@example.com", scope="bulk"))
            assert await store.suppressed(["a@example.com", "b@example.com", "c@example.com"],
                                          "bulk") == {"a@example.com", "c@example.com"}
            assert (await store.get("A@example.com")) is not None
            assert await store.get("b@example.com", "bulk") is None
            page, cursor = await store.page(limit=1)
            assert [e.address for e in page] == ["c@example.com"] and cursor is not None
            assert [e.address async for e in store.iterate()] == ["c@example.com",
                                                                  "a@example.com"]
            assert await store.remove("a@example.com") is True
            assert await store.remove("a@example.com") is False
            assert await store.suppressed([], "bulk") == set()
        finally:
            await client.aclose()

    asyncio.run(scenario())
