"""/v1/suppressions through the real app (Starlette's TestClient, a real Redis): reads for any
caller, changes for the admin scope, JSONL import and export with hostile bodies, and the door:
a message whose recipients are all suppressed is accepted as ``suppressed`` and never queued."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import quote

import orjson
import pytest
from starlette.testclient import TestClient

from mailcore.lifecycle import decode_event, stream_key
from mailcore.queue import queue_key
from mailcore.suppression_io import MAX_LINE_BYTES
from mailcore.tokens import mint_token
from service.app import create_app

from .support import TEST_SECRET, RedisServer, app_settings, read_status

ADMIN = {"Authorization": f"Bearer {mint_token(TEST_SECRET, scope='email:admin')}"}
READER = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='reader')}"}


class Api:
    def __init__(self, client: TestClient, redis_server: RedisServer, prefix: str,
                 queue: str) -> None:
        self.client = client
        self.redis = redis_server.client()
        self.prefix = prefix
        self.queue = queue

    def add(self, **entry: Any) -> Any:
        return self.client.post("/v1/suppressions", json=entry, headers=ADMIN)

    def events(self) -> list[dict[str, Any]]:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       self.redis.xrange(stream_key(self.prefix)))
        return [decode_event(fields[b"event"]) for _, fields in entries]


@pytest.fixture
def api(redis_server: RedisServer) -> Iterator[Api]:
    prefix, queue = f"sapi-{uuid.uuid4().hex[:8]}", f"sapi-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix, QUEUE_NAME=queue,
                            RESET_LIMIT_PER_RECIPIENT="off", SUPPRESSION_IMPORT_MAX_LINES="50",
                            SUPPRESSION_IMPORT_MAX_BYTES="65536", WEBHOOKS_ENABLED="true")
    with TestClient(create_app(settings)) as client:
        yield Api(client, redis_server, prefix, queue)


def test_add_get_list_delete(api: Api) -> None:
    added = api.add(address="Ada+News@Example.COM", reason="complaint",
                    expires_at="2999-01-01T00:00:00Z")
    assert added.status_code == 201, added.text
    assert added.json()["address"] == "ada@example.com"
    assert added.json()["expires_at"] == "2999-01-01T00:00:00.000Z"
    got = api.client.get(f"/v1/suppressions/{quote('ADA@example.com')}", headers=READER)
    assert got.status_code == 200 and got.json()["reason"] == "complaint"
    assert api.client.get("/v1/suppressions/ada@example.com?scope=bulk",
                          headers=READER).status_code == 404
    listed = api.client.get("/v1/suppressions?reason=complaint", headers=READER).json()
    assert [e["address"] for e in listed["suppressions"]] == ["ada@example.com"]
    assert api.client.delete("/v1/suppressions/ada@example.com",
                             headers=ADMIN).status_code == 204
    assert api.client.delete("/v1/suppressions/ada@example.com",
                             headers=ADMIN).status_code == 404


def test_paging_with_cursors(api: Api) -> None:
    for number in range(7):
        assert api.add(address=f"p{number}@example.com", scope="bulk").status_code == 201
    seen, cursor = [], None
    while True:
        query = "/v1/suppressions?limit=3&scope=bulk" + (f"&cursor={cursor}" if cursor else "")
        page = api.client.get(query, headers=READER).json()
        seen += [e["address"] for e in page["suppressions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"p{n}@example.com" for n in range(7)]


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=abc", "limit=%C2%B2",
                                   "reason=spam", "scope=BULK", "cursor=!!", "cursor=" + "A" * 900,
                                   "cursor=", "scope=", "reason="])
def test_bad_list_queries_are_422(api: Api, query: str) -> None:
    answer = api.client.get(f"/v1/suppressions?{query}", headers=READER)
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_request"


def test_reads_need_a_token_and_changes_the_admin_scope(api: Api) -> None:
    assert api.client.get("/v1/suppressions").status_code == 401
    assert api.client.get("/v1/suppressions/export").status_code == 401
    for method, path in [("POST", "/v1/suppressions"), ("POST", "/v1/suppressions/import"),
                         ("DELETE", "/v1/suppressions/a@example.com")]:
        answer = api.client.request(method, path, headers=READER, content=b"{}")
        assert answer.status_code == 403 and answer.json()["error"] == "insufficient_scope"


@pytest.mark.parametrize("entry", [
    {}, {"address": 42}, {"address": ["a@example.com"]}, {"address": {"x": 1}},
    {"address": "not an address"}, {"address": "ünï@example.com"},
    {"address": "a@example.com\r\nBcc: x@evil.test"}, {"address": "a\x00b@example.com"},
    {"address": "x" * 100_000 + "@example.com"}, {"address": '"quoted local"@example.com'},
    {"address": "a@example.com", "reason": "spam"}, {"address": "a@example.com", "scope": "a:b"},
    {"address": "a@example.com", "expires_at": "2000-01-01T00:00:00Z"},
    {"address": "a@example.com", "expires_at": "tomorrow"},
    {"address": "a@example.com", "expires_at": "2999-01-01T00:00:00"},
    {"address": "a@example.com", "expires_at": 32503680000},
    {"address": "a@example.com", "extra": True},
    {"address": "a@example.com", "source_message_id": {"nested": {"deep": []}}},
])
def test_hostile_adds_are_refused(api: Api, entry: dict[str, Any]) -> None:
    answer = api.add(**entry)
    assert answer.status_code in (413, 422), answer.text
    assert api.client.get("/v1/suppressions", headers=READER).json()["suppressions"] == []


def test_idn_and_unicode_domains_fold(api: Api) -> None:
    assert api.add(address="kim@straße.de").status_code == 201
    got = api.client.get("/v1/suppressions/kim@xn--strae-oqa.de", headers=READER)
    assert got.status_code == 200 and got.json()["address"] == "kim@xn--strae-oqa.de"


def test_hostile_path_addresses_are_404(api: Api) -> None:
    for address in ["nobody", "%00", "a" * 3000, "%E2%80%AE@example.com", "a@b/../c"]:
        assert api.client.get(f"/v1/suppressions/{address}", headers=READER).status_code == 404


def jsonl(*lines: Any) -> bytes:
    return b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n"
                    for line in lines)


def test_import_then_export_round_trip(api: Api) -> None:
    body = b"\xef\xbb\xbf" + jsonl(
        {"address": "a@example.com"},
        {"address": "b@example.com", "reason": "hard_bounce", "scope": "bulk",
         "source_message_id": "m-1", "created_at": "2026-01-01T00:00:00+01:00"},
        b"", b"   ", b'{"address": "c@example.com", "reason": "unsubscribe"}\r')
    answer = api.client.post("/v1/suppressions/import", content=body, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"imported": 3}
    exported = api.client.get("/v1/suppressions/export", headers=READER)
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in exported.content.splitlines()]
    assert [(e["scope"], e["address"]) for e in lines] == [
        ("bulk", "b@example.com"), ("global", "a@example.com"), ("global", "c@example.com")]
    assert lines[0]["created_at"] == "2025-12-31T23:00:00.000Z"
    only = api.client.get("/v1/suppressions/export?reason=unsubscribe", headers=READER)
    assert [orjson.loads(x)["address"] for x in only.content.splitlines()] == ["c@example.com"]
    # The export is a valid import.
    again = api.client.post("/v1/suppressions/import", content=exported.content, headers=ADMIN)
    assert again.json() == {"imported": 3}


def test_a_bad_import_lists_every_bad_line_and_stores_nothing(api: Api) -> None:
    body = jsonl(
        {"address": "ok@example.com"},                                 # 1
        b"{not json",                                                  # 2
        [1, 2, 3],                                                     # 3
        {"address": 7},                                                # 4
        {"address": "a@example.com", "reason": {"nested": [[[]]]}},    # 5
        b"\xff\xfe" + "latin".encode("utf-16-le"),                     # 6
        "caf\u00e9".encode("latin-1"),                                 # 7
        b"x" * (MAX_LINE_BYTES + 10),                                  # 8
        b'"just a string"',                                            # 9
        b"\xef\xbb\xbf{}",                                             # 10: a BOM mid-body
        {"address": "ok2@example.com"},                                # 11
        b"[" * 10_000 + b"]" * 10_000,                                 # 12: deep nesting
    )
    answer = api.client.post("/v1/suppressions/import", content=body, headers=ADMIN)
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_import"
    bad = {d["line"]: d["message"] for d in answer.json()["details"]}
    assert sorted(bad) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 12], bad
    assert "not valid JSON" in bad[2] and "longer than" in bad[8] and "not UTF-8" in bad[7]
    assert "address: must be a string" in bad[4] and "reason: must be a string" in bad[5]
    assert api.client.get("/v1/suppressions", headers=READER).json()["suppressions"] == []


def test_import_bounds(api: Api) -> None:
    many = jsonl(*({"address": f"u{n}@example.com"} for n in range(51)))
    answer = api.client.post("/v1/suppressions/import", content=many, headers=ADMIN)
    assert answer.status_code == 413 and "50" in answer.json()["message"]
    huge = b"\n" * 70_000
    assert api.client.post("/v1/suppressions/import", content=huge,
                           headers=ADMIN).status_code == 413
    assert api.client.post("/v1/suppressions/import", content=b"",
                           headers=ADMIN).status_code == 400
    assert api.client.post("/v1/suppressions/import", content=b"\n\n",
                           headers=ADMIN).json() == {"imported": 0}
    one_giant_line = b"{" + b" " * 60_000 + b"}"
    giant = api.client.post("/v1/suppressions/import", content=one_giant_line, headers=ADMIN)
    assert giant.status_code == 422 and giant.json()["details"][0]["line"] == 1


def test_import_in_chunks_splits_lines_anywhere(api: Api) -> None:
    body = b"\xef\xbb\xbf" + jsonl(*({"address": f"c{n}@example.com"} for n in range(20)))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start:start + 7]

    answer = api.client.post("/v1/suppressions/import", content=chunks(), headers=ADMIN)
    assert answer.json() == {"imported": 20}


# --- the door ----------------------------------------------------------------------------------

def reset(*to: str) -> dict[str, Any]:
    return {"template": "password_reset", "to": list(to), "data": {"email": to[0], "code": "1"}}


def test_a_wholly_suppressed_message_is_accepted_as_suppressed_and_not_queued(api: Api) -> None:
    api.add(address="ada@example.com")
    answer = api.client.post("/v1/messages", json=reset("ADA+x@example.com"), headers=READER)
    assert answer.status_code == 202
    body = answer.json()
    assert body["status"] == "suppressed"
    assert body["suppressed_recipients"] == ["ADA+x@example.com"]
    status = read_status(api.redis, api.prefix, body["id"])
    assert status["status"] == "suppressed" and status["timeline"][0]["status"] == "suppressed"
    assert api.redis.llen(queue_key(api.queue)) == 0
    [announced] = api.events()
    assert announced["type"] == "message.suppressed" and announced["message_id"] == body["id"]
    assert announced["recipients"] == ["ADA+x@example.com"] and announced["owner"]
    seen = api.client.get(f"/v1/messages/{body['id']}", headers=READER).json()
    assert seen["status"] == "suppressed"


def test_batches_and_partial_suppression(api: Api) -> None:
    api.add(address="gone@example.com")
    batch = {"messages": [reset("gone@example.com"), reset("ok@example.com"),
                          reset("gone@example.com", "ok@example.com")]}
    answer = api.client.post("/v1/messages/batch", json=batch, headers=READER)
    assert answer.status_code == 202, answer.text
    statuses = [m["status"] for m in answer.json()["messages"]]
    assert statuses == ["suppressed", "queued", "queued"]  # partial: withheld by the worker
    assert api.redis.llen(queue_key(api.queue)) == 2


def test_stream_scoped_entries_do_not_stop_other_streams(api: Api) -> None:
    api.add(address="news@example.com", scope="bulk")
    answer = api.client.post("/v1/messages", json=reset("news@example.com"), headers=READER)
    assert answer.json()["status"] == "queued"


def test_an_idempotent_retry_replays_suppressed(api: Api) -> None:
    api.add(address="ada@example.com")
    headers = {**READER, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = api.client.post("/v1/messages", json=reset("ada@example.com"), headers=headers)
    second = api.client.post("/v1/messages", json=reset("ada@example.com"), headers=headers)
    assert first.json() == second.json() and second.json()["status"] == "suppressed"
    assert len(api.events()) == 1


def test_sandboxed_messages_are_not_checked(redis_server: RedisServer) -> None:
    prefix = f"sapi-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix, SANDBOX_SUBJECTS="tester",
                            QUEUE_NAME=f"sapi-{uuid.uuid4().hex[:8]}")
    tester = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='tester')}"}
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/suppressions", json={"address": "ada@example.com"},
                           headers=ADMIN).status_code == 201
        answer = client.post("/v1/messages", json=reset("ada@example.com"), headers=tester)
        assert answer.json()["status"] == "queued"  # rendered and kept, never delivered


def test_an_idn_recipient_matches_its_entry_at_the_door(api: Api) -> None:
    api.add(address="Kim@straße.de")
    answer = api.client.post("/v1/messages", json=reset("kim+promo@xn--strae-oqa.de"),
                             headers=READER)
    assert answer.json()["status"] == "suppressed"
    other = api.client.post("/v1/messages", json=reset("kim@strasse.de"), headers=READER)
    assert other.json()["status"] == "queued"  # another domain (IDNA 2003 would have folded it)


def test_a_large_import_is_validated_off_the_loop_and_written_whole(
        redis_server: RedisServer) -> None:
    prefix = f"sapi-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix)
    body = jsonl(*({"address": f"bulk{n:05d}@example.com", "reason": "hard_bounce"}
                   for n in range(3000)))
    assert len(body) > 100_000  # several hand-offs to the worker thread

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start:start + 4096]

    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/suppressions/import", content=chunks(), headers=ADMIN)
        assert answer.json() == {"imported": 3000}
        exported = client.get("/v1/suppressions/export?reason=hard_bounce", headers=READER)
        lines = exported.content.splitlines()
        assert len(lines) == 3000 and orjson.loads(lines[-1])["address"] == "bulk02999@example.com"
