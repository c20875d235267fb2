"""Idempotency, message status and dead letters, end to end with real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest

from mailcore.tokens import mint_token

from .conftest import Stack
from .support import REPO, RedisServer, SMTPServer, base_env, queue_idle, wait_for

pytestmark = pytest.mark.slow


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.org"


def headers(secret: str, subject: str = "shop", **extra: str) -> dict[str, str]:
    claims: dict[str, Any] = {"scope": extra.pop("scope")} if "scope" in extra else {}
    token = mint_token(secret, subject=subject, **claims)
    return {"Authorization": f"Bearer {token}", **extra}


def reset(to: str) -> dict[str, Any]:
    return {"template": "password_reset", "to": to, "data": {"email": to, "code": "1"}}


def status_of(stack: Stack, secret: str, message_id: str, subject: str = "shop") -> Any:
    return httpx.get(f"{stack.base_url}/v1/messages/{message_id}",
                     headers=headers(secret, subject))


def wait_status(stack: Stack, secret: str, message_id: str, wanted: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body: dict[str, Any] = status_of(stack, secret, message_id).json()
        return body if body.get("status") == wanted else None

    return wait_for(reached, message=f"status {wanted}")


def test_idempotency_key_replays_and_conflicts(
    stack: Stack, smtp_server: SMTPServer, redis_server: RedisServer, secret: str
) -> None:
    to = unique("idem")
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = httpx.post(f"{stack.base_url}/v1/messages", json=reset(to),
                       headers=headers(secret, **key))
    again = httpx.post(f"{stack.base_url}/v1/messages", json=reset(to),
                       headers=headers(secret, **key))
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    other = httpx.post(f"{stack.base_url}/v1/messages", json=reset(unique("other")),
                       headers=headers(secret, **key))
    assert other.status_code == 409 and other.json()["error"] == "idempotency_conflict"
    # The key is the caller's own: another subject may use the same key independently.
    theirs = httpx.post(f"{stack.base_url}/v1/messages", json=reset(to),
                        headers=headers(secret, subject="billing", **key))
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]

    legacy_key = {"Idempotency-Key": str(uuid.uuid4())}
    legacy_to = unique("idem-legacy")
    for _ in range(3):
        answer = httpx.post(f"{stack.base_url}/email-service/send-reset-code",
                            json={"email": legacy_to, "code": "7"},
                            headers=headers(secret, **legacy_key))
        assert answer.json() == {"message": "Password reset code sent successfully"}
    wait_for(lambda: smtp_server.handler.to(legacy_to), message="the legacy email")
    wait_for(lambda: len(smtp_server.handler.to(to)) == 2, message="both sends of the key")
    wait_for(lambda: queue_idle(redis_server.client()), message="the queue to drain")
    assert len(smtp_server.handler.to(legacy_to)) == 1
    assert len(smtp_server.handler.to(to)) == 2  # one per subject, none for the replays


def test_status_timeline_after_retries(stack: Stack, smtp_server: SMTPServer, secret: str) -> None:
    to = unique("status")
    smtp_server.handler.plan[to] = ["451 4.7.1 Greylisted"]
    message_id = httpx.post(f"{stack.base_url}/v1/messages", json=reset(to),
                            headers=headers(secret)).json()["id"]
    status = wait_status(stack, secret, message_id, "sent")
    assert status["attempts"] == 2
    assert status["transport"] == "smtp" and status["template"] == "password_reset"
    assert len(status["template_version"]) == 16
    assert status["response"].startswith("250")
    assert status["recipients"] == [to]
    assert [event["status"] for event in status["timeline"]] == [
        "queued", "sending", "retrying", "sending", "sent"]
    assert "451" in status["timeline"][2]["detail"]
    times = [event["at"] for event in status["timeline"]]
    assert times == sorted(times)
    # Another caller cannot see it, and unknown ids are 404 alike.
    assert status_of(stack, secret, message_id, subject="someone-else").status_code == 404
    assert status_of(stack, secret, str(uuid.uuid4())).status_code == 404


def test_dead_letter_retry_keeps_id_and_history(
    stack: Stack, smtp_server: SMTPServer, secret: str
) -> None:
    to = unique("dlq")
    smtp_server.handler.plan[to] = ["550 5.1.1 Mailbox unavailable"]
    message_id = httpx.post(f"{stack.base_url}/v1/messages", json=reset(to),
                            headers=headers(secret)).json()["id"]
    failed = wait_status(stack, secret, message_id, "failed")
    assert failed["last_error"] == {"code": 550, "message": "5.1.1 Mailbox unavailable"}

    admin = headers(secret, subject="ops", scope="email:admin")
    assert httpx.get(f"{stack.base_url}/v1/dead-letters",
                     headers=headers(secret)).status_code == 403

    def listed() -> dict[str, Any] | None:
        letters = httpx.get(f"{stack.base_url}/v1/dead-letters", headers=admin).json()
        return next((x for x in letters["dead_letters"] if x["id"] == message_id), None)

    entry = wait_for(listed, message="the dead letter in the listing")
    assert entry["recipients"] == [to] and entry["last_error"]["code"] == 550
    shown = httpx.get(f"{stack.base_url}/v1/dead-letters/{message_id}", headers=admin).json()
    assert shown["request"]["template"] == "password_reset"

    # The mailbox is fixed; the retried message keeps its id and its history.
    retried = httpx.post(f"{stack.base_url}/v1/dead-letters/{message_id}/retry", headers=admin)
    assert retried.status_code == 202 and retried.json()["id"] == message_id
    again = httpx.post(f"{stack.base_url}/v1/dead-letters/{message_id}/retry", headers=admin)
    assert again.status_code == 404  # no longer dead: a second retry cannot duplicate it
    sent = wait_status(stack, secret, message_id, "sent")
    assert [e["status"] for e in sent["timeline"]] == [
        "queued", "sending", "failed", "queued", "sending", "sent"]
    assert len(smtp_server.handler.to(to)) == 1
    assert smtp_server.handler.to(to)[0].message["X-Email-Service-Id"] == message_id


def test_dlq_command_line(
    stack: Stack, smtp_server: SMTPServer, redis_server: RedisServer, secret: str
) -> None:
    env = base_env(redis_server.url, smtp_server.port)

    def dlq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "email_service", "dlq", *args], env=env,
                              cwd=REPO, capture_output=True, text=True, timeout=60)

    dlq("purge", "--yes")
    ids = []
    for prefix in ("cli-a", "cli-b"):
        to = unique(prefix)
        smtp_server.handler.plan[to] = ["554 5.7.1 Rejected"]
        ids.append(httpx.post(f"{stack.base_url}/v1/messages", json=reset(to),
                              headers=headers(secret)).json()["id"])
    listing = wait_for(lambda: (out := dlq("list").stdout) and all(i in out for i in ids) and out,
                       message="both dead letters listed")
    assert "554" in listing
    shown = json.loads(dlq("show", ids[0]).stdout)
    assert shown["id"] == ids[0] and shown["status_record"]["status"] == "failed"
    assert dlq("show", "nope").returncode == 1
    assert dlq("retry", ids[0]).stdout.strip() == f"requeued {ids[0]}"
    wait_status(stack, secret, ids[0], "sent")
    assert "purged 1 message(s)" in dlq("purge", "--yes").stdout
    assert dlq("list").stdout == "no dead letters\n"


def test_a_job_without_a_message_id_is_dead_lettered_not_redelivered_forever(
        stack: Stack, redis_server: RedisServer) -> None:
    # Nothing to record an outcome in: the worker gives such a message to the dead letters
    # (Dramatiq's nack) instead of handing it back to the queue again and again.
    client = redis_server.client()
    redis_id = str(uuid.uuid4())
    body = json.dumps({"queue_name": "email", "actor_name": "send_email",
                       "args": [{"request": {"template": "password_reset"}}], "kwargs": {},
                       "options": {"redis_message_id": redis_id},
                       "message_id": str(uuid.uuid4()), "message_timestamp": 0})
    client.hset("dramatiq:email.msgs", redis_id, body)
    client.rpush("dramatiq:email", redis_id)
    wait_for(lambda: client.hexists("dramatiq:email.XQ.msgs", redis_id),
             message="the invalid job in the dead letters")
    assert not client.hexists("dramatiq:email.msgs", redis_id)
    assert redis_id.encode() not in client.lrange("dramatiq:email", 0, -1)
    assert "invalid job without a message id" in stack.worker.output()
