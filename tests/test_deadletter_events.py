"""A dead letter retried (``POST /v1/dead-letters/{id}/retry``, ``email-service dlq retry``)
is queued again: with ``WEBHOOKS_ENABLED`` its ``queued`` lifecycle event is appended in the same
Redis transaction that re-queues it, once however many admins retry it at once; without, none."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from mailcore.deadletters import DeadLetters
from mailcore.lifecycle import decode_event, stream_key
from mailcore.tokens import mint_token
from service.app import create_app

from .support import REPO, TEST_SECRET, RedisServer, app_settings, base_env

SENDER = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='shop')}"}
ADMIN = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='ops', scope='email:admin')}"}


class Door:
    def __init__(self, client: TestClient, redis: Any, prefix: str, queue: str) -> None:
        self.client, self.redis, self.prefix, self.queue = client, redis, prefix, queue

    def send(self, **extra: Any) -> str:
        answer = self.client.post("/v1/messages", headers=SENDER, json={
            "template": "password_reset", "to": "dead@example.org",
            "data": {"email": "dead@example.org", "code": "1"}, **extra})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def kill(self, message_id: str, queue: str | None = None) -> None:
        """What a worker's broker does with a message that failed for good."""
        name = f"dramatiq:{queue or self.queue}"
        (rid,) = [rid for rid in self.redis.lrange(name, 0, -1)
                  if orjson.loads(self.redis.hget(f"{name}.msgs", rid))["message_id"]
                  == message_id]
        self.redis.zadd(f"{name}.XQ", {rid: 1})
        self.redis.hset(f"{name}.XQ.msgs", rid, self.redis.hget(f"{name}.msgs", rid))
        self.redis.lrem(name, 0, rid)
        self.redis.hdel(f"{name}.msgs", rid)

    def events(self, message_id: str) -> list[dict[str, Any]]:
        entries = self.redis.xrange(stream_key(self.prefix))
        found = [decode_event(fields[b"event"]) for _, fields in entries]
        return [event for event in found if event["message_id"] == message_id]

    def letters(self, **extra: Any) -> DeadLetters:
        return DeadLetters(self.redis, self.queue, self.prefix, 600, **extra)


def _door(redis_server: RedisServer, webhooks: str) -> Iterator[Door]:
    queue, prefix = f"dle-{uuid.uuid4().hex[:8]}", f"dle-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix, QUEUE_NAME=queue,
                            BULK_QUEUE_NAME=f"{queue}-bulk", RESET_LIMIT_PER_RECIPIENT="off",
                            WEBHOOKS_ENABLED=webhooks)
    redis = redis_server.client()
    with TestClient(create_app(settings)) as client:
        yield Door(client, redis, prefix, queue)
    redis.close()


@pytest.fixture
def door(redis_server: RedisServer) -> Iterator[Door]:
    yield from _door(redis_server, "true")


@pytest.fixture
def quiet_door(redis_server: RedisServer) -> Iterator[Door]:
    yield from _door(redis_server, "false")


def test_an_api_retry_appends_the_queued_event_with_what_the_status_knows(door: Door) -> None:
    message_id = door.send(stream="bulk", metadata={"order": "A-17"})
    door.kill(message_id, f"{door.queue}-bulk")
    retried = door.client.post(f"/v1/dead-letters/{message_id}/retry?stream=bulk",
                               headers=ADMIN)
    assert retried.status_code == 202, retried.text
    accepted, again = door.events(message_id)
    assert accepted["type"] == again["type"] == "message.queued"
    assert again["id"] != accepted["id"]  # a new event, not a repeated delivery
    assert again["detail"] == "retried from the dead-letter queue"
    assert (again["owner"], again["template"], again["stream"]) == (
        accepted["owner"], "password_reset", "bulk")
    assert again["recipients"] == ["dead@example.org"]
    assert again["metadata"] == {"order": "A-17"}
    # A second retry finds nothing dead: no event.
    assert door.client.post(f"/v1/dead-letters/{message_id}/retry?stream=bulk",
                            headers=ADMIN).status_code == 404
    assert len(door.events(message_id)) == 2


def test_racing_retries_append_one_event(door: Door) -> None:
    message_id = door.send()
    door.kill(message_id)
    admins = [door.letters(emit_events=True) for _ in range(8)]
    results: list[bool] = []
    barrier = threading.Barrier(len(admins))

    def retry(letters: DeadLetters) -> None:
        barrier.wait(timeout=10)
        results.append(letters.retry(message_id))

    threads = [threading.Thread(target=retry, args=(letters,)) for letters in admins]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [False] * 7 + [True]
    assert [event.get("detail") for event in door.events(message_id)[1:]] == [
        "retried from the dead-letter queue"]


def test_a_retry_of_a_letter_whose_status_expired_still_announces_it(door: Door) -> None:
    message_id = door.send()
    door.kill(message_id)
    door.redis.delete(f"{door.prefix}:msg:{message_id}")
    assert door.letters(emit_events=True).retry(message_id)
    event = door.events(message_id)[-1]
    assert event["type"] == "message.queued" and "owner" not in event


def test_without_webhooks_a_retry_writes_no_event(quiet_door: Door) -> None:
    message_id = quiet_door.send()
    quiet_door.kill(message_id)
    assert quiet_door.client.post(f"/v1/dead-letters/{message_id}/retry",
                                  headers=ADMIN).status_code == 202
    assert quiet_door.redis.exists(stream_key(quiet_door.prefix)) == 0


def test_the_dlq_command_announces_its_retries(door: Door, redis_server: RedisServer) -> None:
    first, second = door.send(), door.send()
    door.kill(first)
    door.kill(second)
    env = base_env(redis_server.url, 2525, KEY_PREFIX=door.prefix, QUEUE_NAME=door.queue,
                   WEBHOOKS_ENABLED="true")

    def dlq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "email_service", "dlq", *args], env=env,
                              cwd=REPO, capture_output=True, text=True, timeout=60, check=False)

    one = dlq("retry", first)
    assert one.returncode == 0, one.stderr
    rest = dlq("retry", "--all")
    assert (rest.returncode, rest.stdout) == (0, "requeued 1 message(s)\n"), rest.stderr
    for message_id in (first, second):
        assert [event.get("detail") for event in door.events(message_id)] == [
            None, "retried from the dead-letter queue"]
