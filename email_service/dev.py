"""``email-service dev``: the whole stack on one machine, mail caught in a folder.

Starts a private redis-server (unless one is configured), a local SMTP catcher writing each
message as ``.eml`` + ``.html``, the ingress and a worker, then prints a ready-to-paste curl with
a freshly minted token.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from mailcore.config import redis_configured
from mailcore.tokens import mint_token
from mailcore.transports.outbox import write_outbox_files


class OutboxCatcher:
    """aiosmtpd handler: every message that arrives is written to the outbox folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.content)
        path = write_outbox_files(self.folder, raw)
        subject = message_from_bytes(raw, policy=policy.default).get("Subject", "")
        print(f"  caught: {subject!s} -> {path.with_suffix('.html')}", flush=True)
        return "250 2.0.0 Ok: caught"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, processes: list[subprocess.Popen[bytes]], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - local URL
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("email-service dev: redis-server is not installed and REDIS_URL is not "
                         "set. `make dev` installs it (or: apt-get install redis-server).")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return process, f"redis://127.0.0.1:{port}/0"


def run_dev(*, port: int, outbox: Path, sync: list[Path] | None = None) -> int:
    outbox = outbox.resolve()
    workdir = Path(tempfile.mkdtemp(prefix="email-service-dev-"))
    children: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    if redis_configured(env):
        redis_note = "the configured Redis"
    else:
        redis, env["REDIS_URL"] = _start_redis(workdir)
        children.append(redis)
        redis_note = f"a private redis-server ({env['REDIS_URL']})"

    catcher_port = _free_port()
    catcher = Controller(OutboxCatcher(outbox), hostname="127.0.0.1", port=catcher_port)
    catcher.start()
    secret = env.get("JWT_SECRET") or secrets.token_urlsafe(32)
    env.update(
        EMAIL_SERVICE_DEV="1", JWT_SECRET=secret, SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(catcher_port), SMTP_SECURITY="none", TRANSPORT="smtp",
        SMTP_USERNAME="", SMTP_PASSWORD="", PYTHONUNBUFFERED="1",
    )
    env.pop("JWT_SECRET_FILE", None)
    env.setdefault("LOG_FORMAT", "text")
    base = [sys.executable, "-m", "email_service"]
    if sync:
        # Templates and EmailTemplate YAML go through the operator's compile/validate code into
        # the store, re-synced on every change; refusals print as the resource status would.
        children.append(subprocess.Popen([*base, "sync", "--watch", *map(str, sync)], env=env))
    children.append(subprocess.Popen([*base, "api", "--host", "127.0.0.1", "--port", str(port)],
                                     env=env))
    children.append(subprocess.Popen([*base, "worker", "--processes", "1", "--threads", "4"],
                                     env=env))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if not _wait_ready(f"http://127.0.0.1:{port}/ready", children):
            print("email-service dev: the stack did not come up; see the log above",
                  file=sys.stderr)
            return 1
        token = mint_token(secret, subject="dev", ttl_seconds=24 * 3600)
        print(_banner(port, token, outbox, redis_note, sync or []), flush=True)
        while not stop.is_set() and all(p.poll() is None for p in children):
            stop.wait(0.5)
        return 0 if stop.is_set() else 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        catcher.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _banner(port: int, token: str, outbox: Path, redis_note: str, sync: list[Path]) -> str:
    url = f"http://127.0.0.1:{port}"
    synced = ", ".join(map(str, sync)) or "nothing"
    return f"""
email-service dev is up: ingress {url}, one worker, {redis_note}.
Mail is caught locally and written to {outbox}/ (.eml and .html).
Templates synced into the store (edits are picked up at once): {synced}.

Send a password-reset email (token valid 24 h):

  curl -sS -X POST {url}/email-service/send-reset-code \\
    -H 'Authorization: Bearer {token}' \\
    -H 'Content-Type: application/json' \\
    -d '{{"email": "ada@example.com", "code": "123456"}}'

Or any template through the native API:

  curl -sS -X POST {url}/v1/messages \\
    -H 'Authorization: Bearer {token}' \\
    -H 'Content-Type: application/json' \\
    -d '{{"template": "password_reset", "to": "ada@example.com",
         "data": {{"email": "ada@example.com", "code": "42"}}}}'

Ctrl-C stops everything.
"""
