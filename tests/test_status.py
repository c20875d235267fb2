"""The worker's status store against a real Redis: the send guard, and a connection per thread."""

from __future__ import annotations

import threading
import uuid

from mailcore.status import SENT, StatusStore

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
