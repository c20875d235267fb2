"""The worker's status store against a real Redis: the send guard, and a connection per thread."""

from __future__ import annotations

import threading
import uuid

import pytest

from mailcore import lifecycle
from mailcore.lifecycle import decode_event, emit, lifecycle_event, stream_key
from mailcore.status import FINISHED, QUEUED, SENT, StatusStore

from .support import RedisServer


def test_guard_and_one_connection_per_thread(redis_server: RedisServer) -> None:
    store = StatusStore.from_url(redis_server.url, f"st-{uuid.uuid4().hex[:6]}", 60)
    first, second = (f"m-{uuid.uuid4().hex[:6]}" for _ in range(2))
    outcomes: dict[str, object] = {}

    def attempt(name: str, message_id: str) -> None:
        outcomes[name] = store.begin_attempt(message_id, 30)

    attempt("a", first)
    # Another thread (its own connection) finds the live lease of the first attempt...
    thread = threading.Thread(target=attempt, args=("b", first))
    thread.start()
    thread.join()
    assert outcomes["a"].proceed and outcomes["a"].attempt == 1  # type: ignore[attr-defined]
    assert outcomes["b"].reason == "busy"  # type: ignore[attr-defined]
    # ...and once sent, nobody sends it again.
    store.record(first, SENT, "250 ok", transport="smtp", code="250")
    assert store.begin_attempt(first, 30).reason == "sent"
    assert store.begin_attempt(second, 30).proceed
    fields = redis_server.client().hgetall(f"{store.prefix}:msg:{first}")
    assert fields[b"status"] == b"sent" and fields[b"transport"] == b"smtp"
    assert 0 < redis_server.client().ttl(f"{store.prefix}:msg:{first}:timeline") <= 60
    assert len(store._clients) == 2  # the main thread's and the other thread's
    store.close()
    assert store._clients == []


@pytest.mark.parametrize("finished", sorted(FINISHED))
def test_every_finished_status_stops_a_redelivered_copy(redis_server: RedisServer,
                                                        finished: str) -> None:
    # The scripts read the finished set from mailcore.status: a status added there (cancelled,
    # suppressed, bounced...) is honoured by the send guard without touching the Lua.
    store = StatusStore.from_url(redis_server.url, f"st-{uuid.uuid4().hex[:6]}", 60)
    message_id = f"m-{uuid.uuid4().hex[:6]}"
    store.record(message_id, finished, "finished elsewhere")
    attempt = store.begin_attempt(message_id, 30)
    assert not attempt.proceed and attempt.reason == finished
    store.record(message_id, QUEUED)  # not finished: a copy proceeds
    assert store.begin_attempt(message_id, 30).proceed
    store.close()


def test_lifecycle_events_are_appended_in_the_same_step(redis_server: RedisServer) -> None:
    client = redis_server.client()
    prefix = f"lc-{uuid.uuid4().hex[:6]}"
    payload = lifecycle_event(lifecycle.SENT, "m-1", owner="svc", recipient="ada@example.com",
                              metadata={"order": "42"}, at=0)
    script = client.register_script(lifecycle.EMIT_LUA + """
redis.call('SET', KEYS[2], 'recorded')
lifecycle_emit(KEYS[1], ARGV[1])
lifecycle_emit(KEYS[1], '')
""")
    script(keys=[stream_key(prefix), f"{prefix}:x"], args=[payload])
    with client.pipeline(transaction=True) as pipe:
        emit(pipe, prefix, lifecycle_event(lifecycle.BOUNCED, "m-2", detail="550 5.1.1"))
        emit(pipe, prefix, b"")  # nothing to announce: nothing appended
        pipe.execute()
    entries = client.xrange(stream_key(prefix))
    assert entries is not None
    events = [decode_event(fields[b"event"]) for _, fields in entries if fields is not None]
    assert [e["type"] for e in events] == ["message.sent", "message.bounced"]
    first = events[0]
    assert first["message_id"] == "m-1" and first["metadata"] == {"order": "42"}
    assert first["timestamp"] == "1970-01-01T00:00:00.000Z" and first["id"].startswith("evt_")
    assert events[0]["id"] != events[1]["id"] and "owner" not in events[1]


@pytest.mark.parametrize("payload", [b"[]", b"{}", b'{"type": "sent"}', b'"message.sent"'])
def test_decode_event_refuses_what_is_not_an_event(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_event(payload)


def test_unknown_event_type_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown lifecycle event type"):
        lifecycle_event("delivered", "m-1")
