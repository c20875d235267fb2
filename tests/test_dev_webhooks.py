"""``WEBHOOKS_ENABLED=true email-service dev``: the whole lifecycle on one machine, webhooks to a
local receiver included (real processes: dev, its redis-server, ingress, worker and
``email-service webhooks``; the receiver verifies every signature with ``standardwebhooks``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from .support import ProcessExited, free_port, wait_for
from .test_dev import read_env_file

pytestmark = pytest.mark.slow


@dataclass
class Receiver:
    """Answers 500 to the first attempt of every ``message.sent`` event (dev must retry it
    within seconds), 200 to everything else it can verify."""

    secret: str = ""
    port: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    unverified: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [event for event in self.events if event["type"] == kind]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            answer = 200
            try:
                payload = Webhook(receiver.secret).verify(body, dict(self.headers.items()))
            except WebhookVerificationError:
                with receiver.lock:
                    receiver.unverified += 1
                answer = 401
            else:
                hook_id = self.headers["webhook-id"]
                with receiver.lock:
                    receiver.attempts[hook_id] = receiver.attempts.get(hook_id, 0) + 1
                    if payload["type"] == "message.sent" and receiver.attempts[hook_id] == 1:
                        answer = 500
                    else:
                        receiver.events.append(payload["data"])
            self.send_response(answer)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop(dev: subprocess.Popen[bytes]) -> None:
    """SIGTERM first: dev stops its children (in their own process groups) before it exits; a
    SIGKILL would orphan them."""
    if dev.poll() is None:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait(timeout=30)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(found))
    found.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_dev_with_webhooks_delivers_signed_events_to_a_local_receiver(
        tmp_path: Path, receiver: Receiver) -> None:
    log = tmp_path / "dev.log"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("REDIS_", "SMTP_", "JWT_", "WEBHOOKS_"))}
    env.update(PYTHONUNBUFFERED="1", WEBHOOKS_ENABLED="true")
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "email_service", "dev", "--port", str(free_port())],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def values() -> dict[str, str] | None:
            if dev.poll() is not None:
                raise ProcessExited(log.read_text())
            if "Ctrl-C stops everything" not in log.read_text():
                return None
            return read_env_file(tmp_path / ".email-service-dev.env")

        found = wait_for(values, timeout=90, message="the dev banner")
        # The other shell's `email-service dlq retry` announces retries like the API's.
        script = f"set -a; source {tmp_path / '.email-service-dev.env'}; " \
                 'printf %s "$WEBHOOKS_ENABLED"'
        assert subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              check=True, timeout=30).stdout == "true"
        banner = log.read_text()
        assert "Webhooks are on" in banner and "one worker, webhooks," in banner
        hooks = [pid for pid, cmd in _children(dev.pid).items() if " webhooks " in f"{cmd} "]
        assert len(hooks) == 1, _children(dev.pid)
        # Each command clears its heartbeat folder on start: theirs are not shared.
        folders = {_environ(pid).get("WORKER_HEARTBEAT_DIR") for pid, cmd in
                   _children(dev.pid).items() if " webhooks " in f"{cmd} " or " worker " in cmd}
        assert len(folders) == 2 and None not in folders, folders

        url = found["EMAIL_SERVICE_URL"]
        admin = {"Authorization": f"Bearer {found['ADMIN_TOKEN']}"}
        sender = {"Authorization": f"Bearer {found['TOKEN']}"}
        # A loopback receiver: refused by the SSRF guard's defaults, allowed by dev's. The
        # admin token is the sending token's caller: its endpoint sees that caller's messages.
        created = httpx.post(f"{url}/v1/webhooks", headers=admin, json={
            "url": f"http://127.0.0.1:{receiver.port}/hooks", "events": ["queued", "sent"]})
        assert created.status_code == 201, created.text
        receiver.secret = created.json()["secret"]

        sent = httpx.post(f"{url}/v1/messages", headers=sender, json={
            "template": "password_reset", "to": "ada@example.com",
            "data": {"email": "ada@example.com", "code": "31415"}})
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["id"]

        # `sent` failed once at the receiver and was retried after dev's 2 s backoff.
        delivered = wait_for(lambda: receiver.of("message.sent"), timeout=60,
                             message="the retried message.sent webhook")
        assert [event["message_id"] for event in delivered] == [message_id]
        queued = receiver.of("message.queued")
        assert [event["message_id"] for event in queued] == [message_id]
        assert max(receiver.attempts.values()) == 2 and receiver.unverified == 0
        caught = list((tmp_path / "outbox").glob("*.html"))
        assert len(caught) == 1 and "31415" in caught[0].read_text()

        os.killpg(dev.pid, signal.SIGTERM)
        assert dev.wait(timeout=60) == 0
        assert not any(_alive(pid) for pid in hooks), "email-service webhooks still runs"
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        _stop(dev)


def test_dev_without_webhooks_runs_no_webhook_process(tmp_path: Path) -> None:
    log = tmp_path / "dev.log"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("REDIS_", "SMTP_", "JWT_", "WEBHOOKS_"))}
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "email_service", "dev", "--port", str(free_port())],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up() -> bool:
            if dev.poll() is not None:
                raise ProcessExited(log.read_text())
            return "Ctrl-C stops everything" in log.read_text()

        wait_for(up, timeout=90, message="the dev banner")
        assert "Webhooks are off: start with WEBHOOKS_ENABLED=true" in log.read_text()
        commands = _children(dev.pid).values()
        assert not any(" webhooks " in f"{cmd} " for cmd in commands), commands
        assert any(" worker " in cmd for cmd in commands), commands
        os.killpg(dev.pid, signal.SIGTERM)
        assert dev.wait(timeout=60) == 0
    finally:
        _stop(dev)
