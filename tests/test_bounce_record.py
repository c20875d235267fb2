"""Recording reports against a real Redis: status, per-recipient field, timeline and lifecycle
event in one step; duplicates, unknown messages and strangers' addresses write nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from mailcore.bounce_record import (
    DUPLICATE,
    RECORDED,
    UNKNOWN_MESSAGE,
    UNMATCHED_RECIPIENT,
    Recording,
    record,
)
from mailcore.dsn import COMPLAINT, HARD, SOFT, RecipientReport
from mailcore.status import BOUNCED, COMPLAINED, RETRYING, SENT

from .bounce_support import events, sent_message, status_fields, suppression, timeline
from .support import RedisServer


@pytest.fixture
def prefix() -> str:
    return f"brec-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as c:
        yield c


def run(redis_server: RedisServer, prefix: str, message_id: str, report: RecipientReport,
        source: str = "dsn") -> str:
    async def go() -> str:
        async_client = AsyncRedis.from_url(redis_server.url)
        try:
            where = Recording(async_client, prefix, 3600, emit_events=True)
            return await record(where, message_id, report, source=source)
        finally:
            await async_client.aclose()
    return asyncio.run(go())


def test_hard_bounce_recorded_with_its_event(redis_server: RedisServer, client: redis.Redis,
                                             prefix: str) -> None:
    message_id = sent_message(client, prefix, ["ada@example.org"])
    report = RecipientReport("ada@example.org", HARD, status="5.1.1",
                             diagnostic="smtp; 550 5.1.1 no such user")
    assert run(redis_server, prefix, message_id, report) == RECORDED
    fields = status_fields(client, prefix, message_id)
    assert fields["status"] == BOUNCED and fields["bounce_type"] == HARD
    assert fields["bounce:ada@example.org"] == HARD
    last = timeline(client, prefix, message_id)[-1]
    assert last["status"] == BOUNCED and last["recipient"] == "ada@example.org"
    assert last["bounce_type"] == HARD and last["code"] == "5.1.1" and last["source"] == "dsn"
    [evt] = events(client, prefix)
    assert evt["type"] == "message.bounced" and evt["message_id"] == message_id
    assert evt["recipient"] == "ada@example.org" and evt["bounce_type"] == HARD
    assert evt["owner"] == "shop" and evt["metadata"] == {"order": "A-1"}
    entry = suppression(client, prefix, "ada@example.org")
    assert entry is not None and entry.reason == "hard_bounce" and entry.scope == "global"
    assert entry.source_message_id == message_id and entry.expires_at is None
    # The same report again (a relay retrying after a lost 250): nothing more.
    assert run(redis_server, prefix, message_id, report) == DUPLICATE
    assert len(events(client, prefix)) == 1 and len(timeline(client, prefix, message_id)) == 2


def test_soft_then_hard_then_soft(redis_server: RedisServer, client: redis.Redis,
                                  prefix: str) -> None:
    message_id = sent_message(client, prefix, ["ada@example.org", "bob@example.org"])
    assert run(redis_server, prefix, message_id,
               RecipientReport("bob@example.org", SOFT, status="4.2.2")) == RECORDED
    assert status_fields(client, prefix, message_id)["bounce_type"] == SOFT
    assert suppression(client, prefix, "bob@example.org") is None  # soft: transient
    assert run(redis_server, prefix, message_id,
               RecipientReport("ADA+shop@Example.org", HARD)) == RECORDED  # mailbox-folded
    assert status_fields(client, prefix, message_id)["bounce_type"] == HARD
    assert run(redis_server, prefix, message_id,
               RecipientReport("bob@example.org", SOFT)) == DUPLICATE
    assert run(redis_server, prefix, message_id,
               RecipientReport("bob@example.org", HARD)) == RECORDED  # worse: recorded
    fields = status_fields(client, prefix, message_id)
    assert fields["bounce_type"] == HARD and fields["status"] == BOUNCED
    assert [e["recipient"] for e in events(client, prefix)] == [
        "bob@example.org", "ada@example.org", "bob@example.org"]
    for address in ("ada@example.org", "ada+other@EXAMPLE.org", "bob@example.org"):
        entry = suppression(client, prefix, address)
        assert entry is not None and entry.reason == "hard_bounce"


def test_complaint_outranks_bounce(redis_server: RedisServer, client: redis.Redis,
                                   prefix: str) -> None:
    message_id = sent_message(client, prefix, ["ada@example.org"])
    assert run(redis_server, prefix, message_id,
               RecipientReport("ada@example.org", COMPLAINT), source="mailtrap") == RECORDED
    assert status_fields(client, prefix, message_id)["status"] == COMPLAINED
    entry = suppression(client, prefix, "ada@example.org")
    assert entry is not None and entry.reason == "complaint"
    assert run(redis_server, prefix, message_id,
               RecipientReport("ada@example.org", HARD)) == DUPLICATE
    assert [e["type"] for e in events(client, prefix)] == ["message.complained"]


def test_unknown_message_and_strangers(redis_server: RedisServer, client: redis.Redis,
                                       prefix: str) -> None:
    assert run(redis_server, prefix, str(uuid.uuid4()),
               RecipientReport("ada@example.org", HARD)) == UNKNOWN_MESSAGE
    message_id = sent_message(client, prefix, ["ada@example.org", "bob@example.org"])
    before = status_fields(client, prefix, message_id)
    assert run(redis_server, prefix, message_id,
               RecipientReport("mallory@example.org", HARD)) == UNMATCHED_RECIPIENT
    assert status_fields(client, prefix, message_id) == before
    assert events(client, prefix) == []
    for address in ("ada@example.org", "mallory@example.org"):
        assert suppression(client, prefix, address) is None


def test_single_recipient_takes_a_rewritten_address(redis_server: RedisServer,
                                                    client: redis.Redis, prefix: str) -> None:
    # A forwarding relay reports the address it rewrote ours to; the envelope names one.
    message_id = sent_message(client, prefix, ["ada@example.org"])
    assert run(redis_server, prefix, message_id,
               RecipientReport("ada.l@internal.example.org", HARD)) == RECORDED
    assert status_fields(client, prefix, message_id)["bounce:ada@example.org"] == HARD


def test_original_recipient_matches(redis_server: RedisServer, client: redis.Redis,
                                    prefix: str) -> None:
    message_id = sent_message(client, prefix, ["ada@example.org", "bob@example.org"])
    assert run(redis_server, prefix, message_id, RecipientReport(
        "x@internal.example.org", HARD, original="bob@example.org")) == RECORDED
    assert "bounce:bob@example.org" in status_fields(client, prefix, message_id)


def test_unfinished_message_keeps_its_status(redis_server: RedisServer, client: redis.Redis,
                                             prefix: str) -> None:
    message_id = sent_message(client, prefix, ["ada@example.org"], status=RETRYING)
    assert run(redis_server, prefix, message_id,
               RecipientReport("ada@example.org", HARD)) == RECORDED
    fields = status_fields(client, prefix, message_id)
    assert fields["status"] == RETRYING and fields["bounce_type"] == HARD
    assert timeline(client, prefix, message_id)[-1]["status"] == BOUNCED
    assert fields["status"] != SENT


def test_concurrent_reports_each_count_once(redis_server: RedisServer, client: redis.Redis,
                                            prefix: str) -> None:
    recipients = [f"user{i}@example.org" for i in range(20)]
    message_id = sent_message(client, prefix, recipients)

    async def go() -> list[str]:
        async_client = AsyncRedis.from_url(redis_server.url)
        try:
            where = Recording(async_client, prefix, 3600, emit_events=True)
            return await asyncio.gather(*[
                record(where, message_id, RecipientReport(r, HARD), source="dsn")
                for r in recipients * 2])
        finally:
            await async_client.aclose()

    outcomes = asyncio.run(go())
    assert outcomes.count(RECORDED) == 20 and outcomes.count(DUPLICATE) == 20
    assert len(events(client, prefix)) == 20
