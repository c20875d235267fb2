"""Untrusted templates and secret data against the real processes: ``sync``, the ingress (with
its Redis event listener) and a Dramatiq worker, on a private redis-server and SMTP server.

- a template that runs away on the caller's data fails its message at once, as ``failed`` with
  the reason, instead of holding a worker thread;
- its preview answers 422 quickly while the ingress keeps answering, and the ingress stops
  promptly on SIGTERM;
- no template data and no reset code appears in any line of any process's output, whatever
  happened to the send (retried, refused, dead-lettered, timed out, or from a Redis event).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from mailcore.tokens import mint_token

from .support import (
    REPO,
    TEST_SECRET,
    RecordingHandler,
    RedisServer,
    ServiceProcess,
    SMTPServer,
    base_env,
    dead_letters,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.slow

#: Distinctive values: a reset code and a data field; neither may be printed by any process.
CODE = "731905"
DATA_SECRET = "DATA-SECRET-4f1c9e"
#: Bounded in size and steps, but minutes of work when ``items`` is long (harmless as a sample).
LOOPY = ("<p>{{ name }}</p>{% set s = 'x' * 900000 %}{% for a in items %}{% for b in items %}"
         "{% set x = s.count(name) %}{% endfor %}{% endfor %}")


class SlowSMTP(RecordingHandler):
    """Replies late (past the worker's SMTP timeout) ``slow[address]`` times, then as usual."""

    def __init__(self) -> None:
        super().__init__()
        self.slow: dict[str, int] = {}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            if self.slow.get(rcpt):
                self.slow[rcpt] -= 1
                await asyncio.sleep(3)
        return await super().handle_DATA(server, session, envelope)


@dataclass
class Live:
    api: ServiceProcess
    worker: ServiceProcess
    sync_log: Path
    smtp: SMTPServer
    handler: SlowSMTP
    redis: RedisServer
    base_url: str
    env: dict[str, str]
    logs: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='live-test')}"}

    def status(self, message_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/v1/messages/{message_id}", headers=self.headers())
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def final_status(self, message_id: str, timeout: float = 60) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            status = self.status(message_id)
            return status if status["status"] in {"sent", "failed", "dead"} else None

        result: dict[str, Any] = wait_for(final, timeout=timeout,
                                          message=f"a final status for {message_id}")
        return result


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    logs = tmp_path_factory.mktemp("untrusted-live")
    redis_server = RedisServer(logs / "redis")
    (logs / "redis").mkdir()
    redis_server.start()
    handler = SlowSMTP()
    smtp = SMTPServer()
    smtp.handler = handler
    smtp.controller.handler = handler
    smtp.start()
    env = base_env(redis_server.url, smtp.port, RENDER_TIME_BUDGET_SECONDS="1", SMTP_TIMEOUT="1",
                   COMPILE_MEMORY_LIMIT_MB="512",
                   TEMPLATE_NAMESPACES="default", LOG_LEVEL="DEBUG", TEMPLATE_REFRESH_SECONDS="0.2")
    folder = logs / "templates" / "loopy"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Hello {{ name }}")
    (folder / "template.html").write_text(LOOPY)
    (folder / "sample.json").write_text(json.dumps({"name": "Ada", "items": [1, 2]}))
    sync_log = logs / "sync.log"
    with sync_log.open("wb") as out:
        subprocess.run([sys.executable, "-m", "email_service", "sync", str(logs / "templates")],
                       env=env, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=60,
                       cwd=REPO)
    port = free_port()
    api = ServiceProcess(["api", "--host", "127.0.0.1", "--port", str(port)], env,
                         logs / "api.log").start()
    worker = ServiceProcess(["worker", "--processes", "1", "--threads", "4"], env,
                            logs / "worker.log").start()
    try:
        api.wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200,
                       message="the ingress to be ready")
        worker.wait_until(lambda: "ready for action" in worker.output(),
                          message="the worker to start")
        yield Live(api, worker, sync_log, smtp, handler, redis_server, f"http://127.0.0.1:{port}",
                   env, logs)
    finally:
        api.stop()
        worker.stop()
        smtp.stop()
        redis_server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.org"


def send(live: Live, template: str, to: str, data: dict[str, Any]) -> str:
    response = httpx.post(f"{live.base_url}/v1/messages", headers=live.headers(),
                          json={"template": template, "to": to, "data": data})
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def test_a_runaway_render_fails_its_message_at_once_with_the_reason(live: Live) -> None:
    started = time.monotonic()
    message_id = send(live, "loopy", unique("loopy"),
                      {"name": DATA_SECRET, "items": list(range(900))})
    status = live.final_status(message_id, timeout=30)
    assert status["status"] == "failed"
    assert "render budget exceeded" in status["last_error"]["message"]
    assert time.monotonic() - started < 15  # not the 120 s send time limit
    assert DATA_SECRET not in json.dumps(status)


def test_a_runaway_preview_answers_422_quickly_and_the_ingress_stays_responsive(
        live: Live) -> None:
    answers: list[httpx.Response] = []

    def preview() -> None:
        answers.append(httpx.post(
            f"{live.base_url}/v1/templates/loopy/render", headers=live.headers(), timeout=30,
            json={"data": {"name": DATA_SECRET, "items": list(range(900))}}))

    started = time.monotonic()
    thread = threading.Thread(target=preview)
    thread.start()
    slowest = 0.0
    while thread.is_alive():
        before = time.monotonic()
        assert httpx.get(f"{live.base_url}/health", timeout=5).status_code == 200
        slowest = max(slowest, time.monotonic() - before)
    thread.join()
    elapsed = time.monotonic() - started
    assert answers[0].status_code == 422, answers[0].text
    assert "render budget exceeded" in answers[0].json()["message"]
    assert elapsed < 5
    assert slowest < 0.5
    # The next preview is served by the same (still healthy) child, quickly.
    ok = httpx.post(f"{live.base_url}/v1/templates/loopy/render", headers=live.headers(),
                    json={"data": {"name": "Ada", "items": [1]}})
    assert ok.status_code == 200 and "Ada" in ok.json()["html"]


def test_no_process_prints_a_code_or_template_data(live: Live) -> None:
    handler = live.handler
    outcomes: dict[str, str] = {}

    def reset(to: str, code: str) -> str:
        return send(live, "password_reset", to, {"email": to, "code": code, "name": DATA_SECRET})

    transient = unique("transient")
    handler.plan[transient] = ["451 4.7.1 Greylisted"]
    outcomes[reset(transient, CODE)] = "sent"
    permanent = unique("permanent")
    handler.plan[permanent] = ["550 5.1.1 No such user"]
    outcomes[reset(permanent, CODE)] = "failed"
    exhausted = unique("exhausted")
    handler.plan[exhausted] = ["421 4.4.5 Too busy"] * 10
    outcomes[reset(exhausted, CODE)] = "dead"
    timed_out = unique("timeout")
    handler.slow[timed_out] = 1
    outcomes[reset(timed_out, CODE)] = "sent"
    for message_id, expected in outcomes.items():
        assert live.final_status(message_id)["status"] == expected

    # The legacy door and a Redis event, each failing once before delivery.
    legacy = unique("legacy")
    handler.plan[legacy] = ["452 4.2.2 Mailbox full"]
    response = httpx.post(f"{live.base_url}/email-service/send-reset-code",
                          headers=live.headers(), json={"email": legacy, "code": CODE})
    assert response.status_code == 200
    event = unique("event")
    handler.plan[event] = ["451 4.3.0 Try later"]
    client = live.redis.client()
    wait_for(lambda: client.pubsub_numsub("password_reset_events")[0][1] >= 1,
             message="the listener to subscribe")
    client.publish("password_reset_events", json.dumps({"email": event, "code": CODE,
                                                        "timestamp": "2026-11-23T10:00:00Z"}))
    client.publish("password_reset_events", json.dumps({"email": 7, "code": CODE}))  # refused
    wait_for(lambda: handler.to(legacy) and handler.to(event), timeout=60,
             message="the legacy and event emails")

    # Refused at the door: the answer says what is wrong, neither it nor a log line the value.
    refused = httpx.post(f"{live.base_url}/v1/messages", headers=live.headers(), json={
        "template": "password_reset", "to": unique("refused"),
        "data": {"email": "x@example.org", "code": CODE, "name": DATA_SECRET * 20,
                 "expires_in_minutes": DATA_SECRET}})
    assert refused.status_code == 422, refused.text
    assert CODE not in refused.text and DATA_SECRET not in refused.text

    # A job the door would never accept (data not an object): the worker's validation error
    # quotes its input, data included, in the exception it logs.
    broker = RedisBroker(url=live.redis.url)  # type: ignore[no-untyped-call]
    invalid_id = str(uuid.uuid4())
    invalid = {"id": invalid_id, "source": "api", "accepted_at": time.time(),
               "request": {"template": "password_reset", "to": [{"email": unique("invalid")}],
                           "data": [{"code": CODE}, DATA_SECRET]}}
    broker.enqueue(Message(queue_name="email", actor_name="send_email", args=(invalid,),
                           kwargs={}, options={}))
    wait_for(lambda: any(invalid_id in raw.decode() for raw in dead_letters(client)),
             timeout=60, message="the invalid job to be given up")
    broker.close()

    outputs = {"api": live.api.output(), "worker": live.worker.output(),
               "sync": live.sync_log.read_text()}
    assert "Retrying message" in outputs["worker"] or "will retry" in outputs["worker"]
    for name, output in outputs.items():
        assert output, name
        for secret in (CODE, DATA_SECRET):
            leaks = [line for line in output.splitlines() if secret in line]
            assert not leaks, f"{secret} in the {name} output: {leaks[:3]}"


def test_the_ingress_stops_promptly_on_sigterm_during_a_runaway_preview(live: Live) -> None:
    port = free_port()
    api = ServiceProcess(["api", "--host", "127.0.0.1", "--port", str(port)], live.env,
                         live.logs / "api-sigterm.log").start()
    base = f"http://127.0.0.1:{port}"
    try:
        api.wait_until(lambda: httpx.get(f"{base}/ready").status_code == 200,
                       message="the second ingress to be ready")
        answers: list[int] = []

        def preview() -> None:
            try:
                answers.append(httpx.post(
                    f"{base}/v1/templates/loopy/render", headers=live.headers(), timeout=30,
                    json={"data": {"name": "Ada", "items": list(range(900))}}).status_code)
            except httpx.HTTPError:
                answers.append(0)

        thread = threading.Thread(target=preview)
        thread.start()
        assert api.process is not None
        tasks = Path(f"/proc/{api.process.pid}/task")  # the child is a worker thread's

        def children() -> list[str]:
            return [pid for task in tasks.iterdir()
                    for pid in (task / "children").read_text().split()]

        sandbox_children = wait_for(children, message="the preview's sandbox child")
        started = time.monotonic()
        api.signal(signal.SIGTERM, group=False)
        assert api.process is not None
        api.process.wait(timeout=10)
        assert time.monotonic() - started < 5
        thread.join(timeout=30)
        assert answers and answers[0] in {0, 422, 503}
        # Its sandbox child does not outlive it (stdin closed: it ends after its request).
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in sandbox_children),
                 timeout=10, message="the sandbox child to end with the ingress")
    finally:
        api.stop()
