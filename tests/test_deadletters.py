"""mailcore.deadletters against a real Redis: dead messages are listed, shown, retried under
their own id (once, however many retry at the same time) and purged."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest
import redis

from mailcore.deadletters import DeadLetters
from mailcore.queue import encode_message, queue_key, send_job
from mailcore.status import DEAD, event, job_key, open_key, status_key, timeline_key

from .support import RedisServer


@dataclass
class Dead:
    client: redis.Redis
    queue: str
    prefix: str
    letters: DeadLetters

    def kill(self, to: str, died_at_ms: int, *, with_status: bool = True) -> str:
        """A message as Dramatiq's broker leaves it after its last failed attempt."""
        message_id = uuid.uuid4().hex
        job = send_job(message_id, {"template": "password_reset", "to": [{"email": to}]},
                       source="api")
        redis_id, body = encode_message(job, self.queue)
        xq = f"{queue_key(self.queue)}.XQ"
        self.client.zadd(xq, {redis_id: died_at_ms})
        self.client.hset(f"{xq}.msgs", redis_id, body)
        if with_status:
            self.client.hset(status_key(self.prefix, message_id), mapping={
                "id": message_id, "status": DEAD, "attempts": "4", "redis_id": redis_id,
                "last_error": "550 mailbox unavailable", "last_code": "550",
                "created_at": "1763900000", "updated_at": "1763900001"})
            self.client.rpush(timeline_key(self.prefix, message_id), event(DEAD, "gave up"))
        return message_id


@pytest.fixture
def dead(redis_server: RedisServer) -> Iterator[Dead]:
    client = redis_server.client()
    queue, prefix = f"dl-{uuid.uuid4().hex[:8]}", f"dlp-{uuid.uuid4().hex[:8]}"
    yield Dead(client, queue, prefix, DeadLetters(client, queue, prefix, 600))
    client.close()


def test_dead_letters_are_listed_newest_first_and_shown_with_their_history(dead: Dead
                                                                           ) -> None:
    old = dead.kill("old@example.org", 1_000)
    new = dead.kill("new@example.org", 2_000)
    listed = dead.letters.list()
    assert [letter.id for letter in listed] == [new, old]
    assert [letter.died_at for letter in listed] == [2.0, 1.0]
    assert listed[0].recipients == ["new@example.org"] and listed[0].attempts == 4
    assert listed[0].last_error == {"code": 550, "message": "550 mailbox unavailable"}
    assert [letter.id for letter in dead.letters.list(limit=1)] == [new]
    shown = dead.letters.show(old)
    assert shown is not None
    assert shown["request"]["template"] == "password_reset"
    assert [entry["status"] for entry in shown["status_record"]["timeline"]] == [DEAD]
    assert dead.letters.show("no-such-message") is None


def test_a_retry_requeues_under_the_same_id_once(dead: Dead) -> None:
    message_id = dead.kill("retry@example.org", 1_000)
    other = DeadLetters(dead.client, dead.queue, dead.prefix, 600)  # a second admin
    assert dead.letters.retry(message_id)
    assert not other.retry(message_id) and not dead.letters.retry(message_id)
    [redis_id] = dead.client.lrange(queue_key(dead.queue), 0, -1)
    body = orjson.loads(dead.client.hget(f"{queue_key(dead.queue)}.msgs", redis_id) or b"")
    assert body["message_id"] == message_id and "retries" not in body["options"]
    status = dead.client.hgetall(status_key(dead.prefix, message_id))
    assert (status[b"status"], status[b"redis_id"]) == (b"queued", redis_id)
    timeline = dead.client.lrange(timeline_key(dead.prefix, message_id), 0, -1)
    assert b"retried from the dead-letter queue" in timeline[-1]
    # Unfinished again, so the sweeper watches it.
    assert dead.client.get(job_key(dead.prefix, message_id)) is not None
    assert dead.client.zscore(open_key(dead.prefix), message_id) is not None
    assert dead.letters.list() == []


def test_a_retry_finds_a_dead_letter_whose_status_expired(dead: Dead) -> None:
    message_id = dead.kill("expired@example.org", 1_000, with_status=False)
    [letter] = dead.letters.list()
    assert (letter.status, letter.attempts, letter.last_error) == (None, 1, None)
    assert dead.letters.retry(message_id)
    assert len(dead.client.lrange(queue_key(dead.queue), 0, -1)) == 1


def test_retry_all_and_purge(dead: Dead) -> None:
    for i in range(3):
        dead.kill(f"all-{i}@example.org", 1_000 + i)
    assert dead.letters.retry_all() == 3
    for i in range(2):
        dead.kill(f"purged-{i}@example.org", 5_000 + i)
    assert dead.letters.purge() == 2
    assert dead.letters.list() == [] and dead.letters.purge() == 0
    assert len(dead.client.lrange(queue_key(dead.queue), 0, -1)) == 3
