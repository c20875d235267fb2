"""Streams end to end: real ingress and worker processes, one worker per stream. A message goes
on the queue of the stream its request names, else its template's (``spec.stream``), else
``transactional``; the original contracts always go transactional; a worker consumes only the
streams in ``WORKER_STREAMS``."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.mailtrap import MailtrapStandIn
from mailcore.store import TemplateStoreWriter
from mailcore.template_resources import source_from_spec
from mailcore.tokens import mint_token

from .support import (
    TEST_SECRET,
    RedisServer,
    ServiceProcess,
    ServiceStack,
    SMTPServer,
    base_env,
    free_port,
    read_status,
    wait_for,
    wait_settled,
)

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='streams')}"}


def test_each_stream_goes_on_its_own_queue_to_its_own_workers(
        redis_server: RedisServer, smtp_server: SMTPServer, tmp_path: Path) -> None:
    prefix, queue = f"live-streams-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4().hex[:8]}"
    bulk_queue = f"{queue}-bulk"
    r: Any = redis_server.client()
    env = base_env(redis_server.url, smtp_server.port, KEY_PREFIX=prefix, QUEUE_NAME=queue,
                   BULK_QUEUE_NAME=bulk_queue, RESET_LIMIT_PER_RECIPIENT="off",
                   WORKER_STREAMS="transactional")
    name = f"newsletter-{uuid.uuid4().hex[:6]}"
    TemplateStoreWriter(r, prefix).put(f"default/{name}", source_from_spec(
        f"default/{name}", {"subject": "News", "html": "<p>News</p>", "text": "News",
                            "stream": "bulk"}), {"kind": "test"})
    tag = uuid.uuid4().hex[:8]

    def to(label: str) -> str:
        return f"{label}-{tag}@example.org"

    with ServiceStack(env, tmp_path) as stack:
        wait_for(lambda: httpx.get(f"{stack.base_url}/v1/templates/{name}", headers=AUTH)
                 .status_code == 200, message="the ingress to see the template")

        def send(body: dict[str, Any]) -> str:
            response = httpx.post(f"{stack.base_url}/v1/messages", json=body, headers=AUTH)
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        reset = {"template": "password_reset", "data": {"email": "x@example.org", "code": "1"}}
        ids = {
            "plain": send({**reset, "to": to("plain")}),
            "asked-bulk": send({**reset, "to": to("asked-bulk"), "stream": "bulk"}),
            "template-bulk": send({"template": name, "to": to("template-bulk")}),
            "override": send({"template": name, "to": to("override"),
                              "stream": "transactional"}),
        }
        legacy = httpx.post(f"{stack.base_url}/email-service/send-reset-code", headers=AUTH,
                            json={"email": to("legacy"), "code": "99"})
        assert legacy.status_code == 200
        for label in ("plain", "override"):
            final = wait_settled(r, prefix, ids[label], "sent")
            assert final["stream"] == "transactional"
        wait_for(lambda: smtp_server.handler.to(to("legacy")), message="the legacy reset")
        # No bulk worker yet: the bulk messages wait on their own queue, untouched.
        for label in ("asked-bulk", "template-bulk"):
            status = read_status(r, prefix, ids[label])
            assert (status["status"], status["stream"]) == ("queued", "bulk")
        assert r.llen(f"dramatiq:{bulk_queue}") == 2 and r.llen(f"dramatiq:{queue}") == 0
        assert not smtp_server.handler.to(to("asked-bulk"))

        bulk = ServiceProcess(["worker", "--processes", "1", "--threads", "2"],
                              {**env, "WORKER_STREAMS": "bulk"}, tmp_path / "bulk.log")
        bulk.start()
        try:
            for label in ("asked-bulk", "template-bulk"):
                wait_settled(r, prefix, ids[label], "sent", timeout=60)
        finally:
            bulk.stop()
        assert r.llen(f"dramatiq:{bulk_queue}") == 0
    for label in ("plain", "asked-bulk", "template-bulk", "override", "legacy"):
        assert len(smtp_server.handler.to(to(label))) == 1, label


def test_the_bulk_stream_goes_to_mailtraps_bulk_host(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """Two stand-ins for Mailtrap's hosts (send.api… and bulk.api…): each stream's messages
    reach their own, from one worker consuming both streams."""
    transactional, bulk = MailtrapStandIn().start(), MailtrapStandIn().start()
    prefix = f"live-mtbulk-{uuid.uuid4().hex[:8]}"
    r: Any = redis_server.client()
    env = base_env(redis_server.url, free_port(), KEY_PREFIX=prefix, QUEUE_NAME=prefix,
                   BULK_QUEUE_NAME=f"{prefix}-bulk", TRANSPORT="mailtrap",
                   MAILTRAP_API_TOKEN=transactional.token, MAILTRAP_BASE_URL=transactional.url,
                   MAILTRAP_BULK_BASE_URL=bulk.url, RESET_LIMIT_PER_RECIPIENT="off")
    tag = uuid.uuid4().hex[:8]
    try:
        with ServiceStack(env, tmp_path) as stack:
            ids = {}
            for stream in ("transactional", "bulk"):
                response = httpx.post(f"{stack.base_url}/v1/messages", headers=AUTH, json={
                    "subject": "Hello", "text": "Hello", "to": f"{stream}-{tag}@example.com",
                    "stream": stream})
                assert response.status_code == 202, response.text
                ids[stream] = response.json()["id"]
            for message_id in ids.values():
                wait_settled(r, prefix, message_id, "sent", timeout=60)
    finally:
        transactional.stop()
        bulk.stop()
    assert len(transactional.delivered(f"transactional-{tag}@example.com")) == 1
    assert not transactional.seen(f"bulk-{tag}@example.com")
    assert len(bulk.delivered(f"bulk-{tag}@example.com")) == 1
    assert not bulk.seen(f"transactional-{tag}@example.com")
    assert not transactional.violations and not bulk.violations
