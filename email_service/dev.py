"""``email-service dev``: the whole stack on one machine, mail caught in a folder.

Starts a private redis-server (unless one is configured), a local SMTP catcher writing each
message as ``.eml`` + ``.html``, the ingress and a worker (which also dispatches scheduled sends),
and, when ``WEBHOOKS_ENABLED`` is set, the webhook fan-out and delivery (``email-service
webhooks``, allowed to call receivers on this machine), then prints a ready-to-paste curl with
a freshly minted token, and writes the stack's settings (Redis URL, JWT secret, a sending and an
admin token) to an env file, so ``email-service token``, ``dlq`` and ``publish-reset`` work from
another shell. Ctrl-C (SIGINT) or SIGTERM stops everything and exits 0.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
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

from mailcore.config import Settings, redis_configured
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


def _wait_ready(url: str, processes: list[subprocess.Popen[bytes]], stop: threading.Event,
                timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if any(p.poll() is not None for p in processes):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - local URL
                if response.status == 200:
                    return True
        except OSError:
            pass
        stop.wait(0.1)
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
        process_group=0,  # not stopped by the terminal's Ctrl-C: we stop it, last
    )
    return process, f"redis://127.0.0.1:{port}/0"


#: Local webhook receivers (a `python -m http.server`, a test's listener) run on this machine:
#: the SSRF guard's defaults allow only cluster services, so dev allows loopback too, and
#: retries a failing receiver after seconds rather than minutes. Any of these set in the
#: environment wins.
_DEV_WEBHOOKS = {
    "WEBHOOKS_ALLOWED_HOSTS": "localhost,127.0.0.1,*.svc.cluster.local",
    "WEBHOOKS_CLUSTER_HOSTS": "localhost,127.0.0.1,*.svc.cluster.local",
    "WEBHOOKS_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
    "WEBHOOKS_MIN_BACKOFF_SECONDS": "2",
    "WEBHOOKS_MAX_BACKOFF_SECONDS": "60",
}


def _webhooks_enabled(env: dict[str, str]) -> bool:
    """``WEBHOOKS_ENABLED`` as the service reads it (a malformed value fails there, loudly)."""
    from mailcore.envfields import flag

    try:
        return bool(flag(env.get("WEBHOOKS_ENABLED", "false")))
    except ValueError:
        return False


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _write_env_file(path: Path, values: dict[str, str]) -> None:
    """Shell ``export`` lines, readable by the owner only (they hold the JWT secret)."""
    lines = ["# Written by `email-service dev`; valid while it runs. Use: source THIS_FILE"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write("\n".join(lines) + "\n")


def _activation_hint() -> str:
    """How another shell reaches this ``email-service``: the virtualenv it runs from."""
    if sys.prefix != sys.base_prefix:
        activate = Path(sys.prefix) / "bin" / "activate"
        with contextlib.suppress(ValueError):  # shorter when it is under the cwd
            activate = activate.relative_to(Path.cwd())
        return f"source {activate}"
    return f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH"


def run_dev(*, port: int, outbox: Path, sync: list[Path] | None = None,
            env_file: Path | None = None) -> int:
    outbox = outbox.resolve()
    # Ctrl-C, SIGTERM and a closed terminal (SIGHUP) all end the loop below; the children get
    # SIGTERM from us, not the terminal's signals (they run in their own process groups), so
    # the stop is quiet and nothing is left running.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    workdir = Path(tempfile.mkdtemp(prefix="email-service-dev-"))
    children: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    redis: subprocess.Popen[bytes] | None = None
    if redis_configured(env):
        redis_note = "the configured Redis"
    else:
        redis, env["REDIS_URL"] = _start_redis(workdir)
        children.append(redis)
        redis_note = "a private redis-server"

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
    # Not the fixed metrics port of a deployed worker: a second dev stack (or anything else on
    # 9191) would stop this one from starting.
    env.setdefault("WORKER_METRICS_PORT", "0")
    webhooks = _webhooks_enabled(env)
    if webhooks:
        for name, value in _DEV_WEBHOOKS.items():
            env.setdefault(name, value)
    base = [sys.executable, "-m", "email_service"]

    def start(*args: str, heartbeat: str | None = None) -> None:
        own = dict(env)
        if heartbeat is not None and "WORKER_HEARTBEAT_DIR" not in env:
            # Each command clears its heartbeat folder on start: the worker's and the webhook
            # processes' reports must not share one (nor another dev stack's).
            own["WORKER_HEARTBEAT_DIR"] = str(workdir / f"heartbeat-{heartbeat}")
        children.append(subprocess.Popen([*base, *args], env=own, process_group=0))

    wrote_env_file = False
    try:
        if sync:
            # Templates and EmailTemplate YAML go through the operator's compile/validate code
            # into the store, re-synced on every change; refusals print as the resource status
            # would.
            start("sync", "--watch", *map(str, sync))
        start("api", "--host", "127.0.0.1", "--port", str(port))
        start("worker", "--processes", "1", "--threads", "4", heartbeat="worker")
        if webhooks:
            start("webhooks", "--processes", "1", "--threads", "4", heartbeat="webhooks")
        if not _wait_ready(f"http://127.0.0.1:{port}/ready", children, stop):
            if stop.is_set():
                return 0
            print("email-service dev: the stack did not come up; see the log above",
                  file=sys.stderr)
            return 1
        url = f"http://127.0.0.1:{port}"
        # The children read these same settings (a configured Redis may be REDIS_HOST/…).
        settings = Settings.from_env(env)
        admin_scope = settings.auth.admin_scope
        sentinel = settings.redis.sentinel
        # Behind Sentinel the env file names the sentinels (a URL beside them is refused).
        where = {"REDIS_URL": settings.redis.url} if sentinel is None else {
            "REDIS_SENTINELS": sentinel.addresses, "REDIS_SENTINEL_MASTER": sentinel.master}
        values = {
            "EMAIL_SERVICE_URL": url, **where, "JWT_SECRET": secret,
            "TOKEN": mint_token(secret, subject="dev", ttl_seconds=24 * 3600),
            # The same caller as TOKEN, with the admin scope: a webhook endpoint registered
            # with it receives the events of the messages sent with TOKEN (endpoints are
            # per caller).
            "ADMIN_TOKEN": mint_token(secret, subject="dev", ttl_seconds=24 * 3600,
                                      scope=admin_scope),
        }
        if webhooks:
            # `email-service dlq retry` from the other shell announces its retries too.
            values["WEBHOOKS_ENABLED"] = "true"
        if env_file is not None:
            _write_env_file(env_file, values)
            wrote_env_file = True
        # A configured Redis URL may carry its password: only the private one is printed.
        shown = values["REDIS_URL"] if redis is not None else "the configured one (see REDIS_URL)"
        print(_banner(values, outbox, redis_note, shown, sync or [], env_file, webhooks),
              flush=True)
        while not stop.is_set() and all(p.poll() is None for p in children):
            stop.wait(0.5)
        if stop.is_set():
            print("email-service dev: stopping", flush=True)
            return 0
        return 1
    finally:
        # The service processes first, Redis last: they would log its disappearance loudly.
        services = [child for child in children if child is not redis]
        _stop_all(services)
        _stop_all([redis] if redis is not None else [])
        catcher.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if wrote_env_file and env_file is not None:
            env_file.unlink(missing_ok=True)  # its secret and tokens die with the stack
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _banner(values: dict[str, str], outbox: Path, redis_note: str, redis_shown: str,
            sync: list[Path], env_file: Path | None, webhooks: bool = False) -> str:
    url, token = values["EMAIL_SERVICE_URL"], values["TOKEN"]
    synced = ", ".join(map(str, sync)) or "nothing"
    if webhooks:
        hooks = f"""
Webhooks are on (WEBHOOKS_ENABLED): `email-service webhooks` delivers lifecycle events to
receivers on this machine too (localhost / 127.0.0.1). Register one with $ADMIN_TOKEN:

  curl -sS -X POST {url}/v1/webhooks -H "Authorization: Bearer $ADMIN_TOKEN" \\
    -H 'Content-Type: application/json' \\
    -d '{{"url": "http://127.0.0.1:9000/hooks", "events": ["queued", "sent"]}}'
"""
    else:
        hooks = """
Webhooks are off: start with WEBHOOKS_ENABLED=true to run `email-service webhooks` too.
"""
    if env_file is not None:
        settings = f"""Its settings and tokens are in {env_file} (removed when this stops).
In another shell, to use `email-service` and the README's examples against this stack:

  {_activation_hint()}
  source {env_file}     # EMAIL_SERVICE_URL, REDIS_URL, JWT_SECRET, TOKEN, ADMIN_TOKEN"""
    else:
        settings = f"""In another shell, to use `email-service` against this stack:

  {_activation_hint()}
""" + "\n".join(f"  export {name}={shlex.quote(value)}" for name, value in values.items())
    return f"""
email-service dev is up: ingress {url}, one worker{", webhooks" if webhooks else ""}, {redis_note}.
Mail is caught locally and written to {outbox}/ (.eml and .html).
Templates synced into the store (edits are picked up at once): {synced}.
Redis: {redis_shown}   JWT secret: {values["JWT_SECRET"]}

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

{settings}

  email-service publish-reset ada@example.com 123456    # a Redis event, as the old services sent
  email-service dlq list                                # dead letters ($ADMIN_TOKEN for the API:
  curl -sS {url}/v1/dead-letters -H "Authorization: Bearer $ADMIN_TOKEN")
  email-service token --subject checkout                # more tokens, signed with JWT_SECRET

{hooks}
API docs: {url}/docs     Ctrl-C stops everything.
"""
