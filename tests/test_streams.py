"""Streams at the door and in templates: which names are streams, a template's default
(``spec.stream``), and the queue each accepted message is written to (no workers here: the
live routing is in test_streams_live.py)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from mailcore.config import ConfigError
from mailcore.rendering import TemplateError
from mailcore.store import decode_record, encode_record
from mailcore.streams import stream_of
from mailcore.template_resources import source_from_spec
from mailcore.tokens import mint_token
from service.app import create_app

from .support import REPO, TEST_SECRET, RedisServer, app_settings, base_env, make_settings

AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='streams')}"}
SPEC = {"subject": "News", "html": "<p>News</p>", "text": "News"}


@pytest.fixture
def door(redis_server: RedisServer) -> Iterator[tuple[TestClient, str]]:
    queue = f"sd-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=f"streams-{uuid.uuid4().hex[:8]}",
                            QUEUE_NAME=queue, BULK_QUEUE_NAME=f"{queue}-bulk",
                            RESET_LIMIT_PER_RECIPIENT="off", MAX_QUEUE_DEPTH="2")
    with TestClient(create_app(settings)) as client:
        yield client, queue


def send(client: TestClient, **extra: Any) -> Any:
    return client.post("/v1/messages", headers=AUTH, json={
        "template": "password_reset", "to": "a@example.org",
        "data": {"email": "a@example.org", "code": "1"}, **extra})


@pytest.mark.parametrize("value", ["marketing", "BULK", "", " bulk", "bulk\n", 1, True,
                                   ["bulk"], {"name": "bulk"}, "b" * 100_000])
def test_a_stream_is_one_of_the_names(door: tuple[TestClient, str], value: Any) -> None:
    client, _ = door
    response = send(client, stream=value)
    assert response.status_code in (413, 422), response.text
    if response.status_code == 422:
        assert response.json()["details"][0]["field"] == "stream"


def test_each_stream_has_its_queue_and_its_own_depth_ceiling(
        door: tuple[TestClient, str], redis_server: RedisServer) -> None:
    client, queue = door
    r: Any = redis_server.client()
    assert send(client).status_code == 202
    assert send(client, stream=None).status_code == 202
    assert r.llen(f"dramatiq:{queue}") == 2
    # The transactional queue is full (MAX_QUEUE_DEPTH=2); bulk has its own ceiling.
    assert send(client).status_code == 503
    assert send(client, stream="bulk").status_code == 202
    assert send(client, stream="bulk").status_code == 202
    assert send(client, stream="bulk").status_code == 503
    assert r.llen(f"dramatiq:{queue}-bulk") == 2


def test_the_original_contracts_stay_transactional() -> None:
    assert stream_of("bulk", "api") == "bulk"
    for source in ("reset-code", "order-confirmation", "event"):
        assert stream_of("bulk", source) == "transactional"
    assert stream_of(None, "api") == "transactional"


def test_a_template_names_its_default_stream() -> None:
    assert source_from_spec("d/t", {**SPEC, "stream": "bulk"}).stream == "bulk"
    assert source_from_spec("d/t", SPEC).stream is None
    for bad in ("marketing", "Bulk", 1, ["bulk"], {"x": 1}, "", True):
        with pytest.raises(TemplateError, match=r"spec\.stream"):
            source_from_spec("d/t", {**SPEC, "stream": bad})


def test_the_stream_is_part_of_the_version_only_when_set() -> None:
    plain, bulk = source_from_spec("d/t", SPEC), source_from_spec("d/t", {**SPEC, "stream": "bulk"})
    assert plain.version != bulk.version
    # Templates without it keep the version they had before streams existed.
    assert plain.version == source_from_spec("d/t", dict(SPEC)).version
    stored = decode_record(encode_record("d/t", bulk, {"kind": "test"}))
    assert stored.source.stream == "bulk" and stored.version == bulk.version


@pytest.mark.parametrize(("variable", "value"), [
    ("WORKER_STREAMS", "marketing"), ("WORKER_STREAMS", ","), ("WORKER_STREAMS", "bulk;x"),
    ("SCHEDULE_HORIZON_SECONDS", "0"), ("SCHEDULE_HORIZON_SECONDS", "1e9"),
    ("SCHEDULE_CLOCK_SKEW_SECONDS", "-1"), ("SCHEDULE_POLL_SECONDS", "0"),
    ("MAILTRAP_BULK_BASE_URL", "ftp://bulk.example"),
])
def test_bad_stream_and_schedule_settings_stop_the_process(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        make_settings(**{variable: value})


def test_worker_streams_are_read_in_order() -> None:
    assert make_settings(WORKER_STREAMS="bulk, transactional").streams.worker_streams == (
        "bulk", "transactional")
    assert make_settings().queues == {"transactional": "email", "bulk": "email-bulk"}


def test_each_stream_has_its_own_dead_letters(door: tuple[TestClient, str],
                                              redis_server: RedisServer) -> None:
    client, queue = door
    r: Any = redis_server.client()
    token = mint_token(TEST_SECRET, subject="ops", scope="email:admin")
    admin = {"Authorization": f"Bearer {token}"}
    message_id = send(client, stream="bulk").json()["id"]
    # What a worker does with a message that failed for good: its copy to the dead letters.
    (rid,) = r.lrange(f"dramatiq:{queue}-bulk", 0, -1)
    body = r.hget(f"dramatiq:{queue}-bulk.msgs", rid)
    r.zadd(f"dramatiq:{queue}-bulk.XQ", {rid: 1})
    r.hset(f"dramatiq:{queue}-bulk.XQ.msgs", rid, body)
    r.delete(f"dramatiq:{queue}-bulk", f"dramatiq:{queue}-bulk.msgs")
    assert client.get("/v1/dead-letters", headers=admin).json() == {"dead_letters": []}
    listed = client.get("/v1/dead-letters?stream=bulk", headers=admin).json()["dead_letters"]
    assert [letter["id"] for letter in listed] == [message_id]
    retried = client.post(f"/v1/dead-letters/{message_id}/retry?stream=bulk", headers=admin)
    assert retried.status_code == 202
    assert r.llen(f"dramatiq:{queue}-bulk") == 1 and r.llen(f"dramatiq:{queue}") == 0
    for bad in ("marketing", "", "BULK", "bulk%00", "x" * 5000):
        refused = client.get(f"/v1/dead-letters?stream={bad}", headers=admin)
        assert refused.status_code == 422 and refused.json()["details"][0]["field"] == "stream"


def test_the_dlq_command_names_a_stream(door: tuple[TestClient, str],
                                        redis_server: RedisServer) -> None:
    client, queue = door
    r: Any = redis_server.client()
    message_id = send(client, stream="bulk").json()["id"]
    (rid,) = r.lrange(f"dramatiq:{queue}-bulk", 0, -1)
    r.zadd(f"dramatiq:{queue}-bulk.XQ", {rid: 1})
    r.hset(f"dramatiq:{queue}-bulk.XQ.msgs", rid, r.hget(f"dramatiq:{queue}-bulk.msgs", rid))
    prefix = client.app.state.send_service.settings.redis.key_prefix  # type: ignore[attr-defined]
    env = base_env(redis_server.url, 2525, KEY_PREFIX=prefix, QUEUE_NAME=queue,
                   BULK_QUEUE_NAME=f"{queue}-bulk")

    def dlq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "email_service", "dlq", *args], env=env,
                              cwd=REPO, capture_output=True, text=True, timeout=60, check=False)

    assert dlq("list").stdout == "no dead letters\n"
    listed = dlq("--stream", "bulk", "list")
    assert listed.returncode == 0 and message_id in listed.stdout, listed.stderr
    refused = dlq("--stream", "marketing", "list")
    assert refused.returncode == 2 and "invalid choice" in refused.stderr
