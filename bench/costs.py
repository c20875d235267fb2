"""Per-message cost of what issue 15 adds to each message (``python -m bench.costs``): DKIM
signing, the door's accept (with the suppression lookup and the ``queued`` lifecycle event when
the tree has them), the worker's begin-attempt and record-sent steps (the send-time suppression
check and the ``sent`` event ride in them), and a lifecycle event's emission on its own.

Each figure is CPU per message, one thread, against a private in-memory Redis (no AOF: CPU, not
the disk): ``*_us`` the measuring process (client and, for the door, the app), ``*_redis_us``
Redis' own (``INFO cpu``). Whatever the tree lacks is left out, so the same command measures any
commit: ``--service-root DIR`` runs it on another tree too (e.g. ``git worktree add /tmp/before
<commit>``), rounds alternating between the two so a slow phase of the VM hits both, and prints
both trees' medians side by side.

    python -m bench.costs [--messages 2000] [--rounds 3] [--service-root DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import redis

_REPO = Path(__file__).resolve().parent.parent
_SECRET = "bench-costs-secret-0123456789abcdef"  # noqa: S105 - a bench-only JWT key


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@contextlib.contextmanager
def _private_redis() -> Iterator[str]:
    from harness.redis import RedisServer

    with tempfile.TemporaryDirectory(prefix="bench-costs-") as folder:
        server = RedisServer(Path(folder), persistent=False).start()
        try:
            yield server.url
        finally:
            server.stop()


class Meter:
    """CPU per call of this process and of Redis over ``calls`` calls."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=60, socket_connect_timeout=60)

    def sync(self, step: Callable[[int], object], calls: int) -> tuple[float, float]:
        step(-1)  # warm: connections, scripts, caches
        redis_before, started = _redis_cpu(self.client), time.process_time()
        for n in range(calls):
            step(n)
        return self._per_call(started, redis_before, calls)

    async def asynchronous(self, step: Callable[[int], Awaitable[object]], calls: int
                           ) -> tuple[float, float]:
        await step(-1)
        redis_before, started = _redis_cpu(self.client), time.process_time()
        for n in range(calls):
            await step(n)
        return self._per_call(started, redis_before, calls)

    def _per_call(self, started: float, redis_before: float, calls: int) -> tuple[float, float]:
        ours = (time.process_time() - started) / calls * 1e6
        theirs = (_redis_cpu(self.client) - redis_before) / calls * 1e6
        return round(ours, 1), round(theirs, 1)


def dkim_costs() -> dict[str, float]:
    """``bench.dkim``'s figures: the service's signer, and dkimpy alone where it has them."""
    from bench import dkim as dkim_bench

    return {f"dkim_{key}": value for key, value in dkim_bench.measure(messages=200).items()
            if key != "message_bytes"}


def _settings(url: str, prefix: str, **extra: str) -> Any:
    from mailcore.config import Settings

    return Settings.from_env({
        "SECRETS_DIR": "/nonexistent", "REDIS_URL": url, "KEY_PREFIX": prefix,
        "SENDER_EMAIL": "noreply@shop.example.com", "JWT_SECRET": _SECRET, "RATE_LIMIT": "off",
        "EVENTS_ENABLED": "false", "LOG_LEVEL": "WARNING", **extra})


def _has_webhooks() -> bool:
    return importlib.util.find_spec("mailcore.webhook_settings") is not None


async def _door(url: str, messages: int, *, webhooks: bool = False) -> dict[str, float]:
    """One ``POST /v1/messages`` at a time through the app in this process; with ``webhooks``
    (``WEBHOOKS_ENABLED=true``: the accept writes the ``queued`` lifecycle event), only the
    plain send, as ``door_send_webhooks_*``."""
    import httpx

    from mailcore.tokens import mint_token
    from service.app import create_app

    app = create_app(_settings(url, f"costs-{uuid.uuid4().hex[:8]}",
                               **({"WEBHOOKS_ENABLED": "true"} if webhooks else {})))
    caller = {"Authorization": f"Bearer {mint_token(_SECRET, subject='bench')}"}
    admin = {"Authorization": "Bearer " + mint_token(_SECRET, subject="ops",
                                                       scope="email:admin")}
    paths = {getattr(route, "path", "") for route in app.routes}
    meter = Meter(url)
    figures: dict[str, float] = {}
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://door") as client:
        run = uuid.uuid4().hex[:6]

        async def send(to: str) -> None:
            response = await client.post("/v1/messages", headers=caller, json={
                "template": "password_reset", "to": to, "data": {"email": to, "code": "1"}})
            assert response.status_code == 202, response.text

        plain = "door_send_webhooks" if webhooks else "door_send"
        figures[f"{plain}_us"], figures[f"{plain}_redis_us"] = await meter.asynchronous(
            lambda n: send(f"r{run}-{n}@example.org"), messages)
        if "/v1/suppressions/import" in paths and not webhooks:
            # 10,000 entries in the list, none of them the recipient; then a suppressed one.
            lines = b"".join(json.dumps({"address": f"s{run}-{n}@example.net"}).encode() + b"\n"
                             for n in range(10_000))
            response = await client.post("/v1/suppressions/import", headers=admin,
                                         content=lines)
            assert response.status_code == 200, response.text
            figures["door_send_list10k_us"], figures["door_send_list10k_redis_us"] = (
                await meter.asynchronous(lambda n: send(f"q{run}-{n}@example.org"), messages))
            figures["door_send_suppressed_us"], figures["door_send_suppressed_redis_us"] = (
                await meter.asynchronous(lambda n: send(f"s{run}-{n % 10_000}@example.net"),
                                         messages))
    return figures


def worker_costs(url: str, messages: int) -> dict[str, float]:
    """``bench.floor``'s steps (begin attempt, record sent: client CPU) against smtp-sink."""
    from bench.floor import measure
    from bench.procs import PostfixSink

    sink = PostfixSink()  # started
    try:
        floor = measure(url, sink.port, messages)
    finally:
        sink.stop()
    return {f"worker_{key}": value for key, value in floor.items()
            if key in {"begin_attempt_us", "record_sent_us", "whole_us"}}


def lifecycle_costs(url: str, messages: int) -> dict[str, float]:
    """An event built (Python) and appended (XADD in a script), beside the same script
    without it."""
    if importlib.util.find_spec("mailcore.lifecycle") is None:
        return {}
    from mailcore import lifecycle

    client = redis.Redis.from_url(url, socket_timeout=60, socket_connect_timeout=60)
    meter = Meter(url)
    body = "redis.call('HSET', KEYS[1], 'status', 'sent')\n"
    plain = client.register_script(body)
    emitting = client.register_script(lifecycle.EMIT_LUA + body
                                      + "lifecycle_emit(KEYS[2], ARGV[1])\n")
    stream = lifecycle.stream_key(f"costs-{uuid.uuid4().hex[:8]}")
    event = lifecycle.lifecycle_event(lifecycle.SENT, str(uuid.uuid4()), owner="bench",
                                      template="password_reset", recipient="a@example.org")
    figures: dict[str, float] = {}
    figures["lifecycle_build_us"], _ = meter.sync(
        lambda n: lifecycle.lifecycle_event(lifecycle.SENT, "m", owner="bench",
                                            template="password_reset", recipient="a@example.org"),
        messages)
    figures["script_us"], figures["script_redis_us"] = meter.sync(
        lambda n: plain(keys=["costs:h", stream], args=[event]), messages)
    figures["script_emit_us"], figures["script_emit_redis_us"] = meter.sync(
        lambda n: emitting(keys=["costs:h", stream], args=[event]), messages)
    return figures


def measure(messages: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    figures.update(dkim_costs())
    with _private_redis() as url:
        figures.update(asyncio.run(_door(url, messages)))
        if _has_webhooks():
            figures.update(asyncio.run(_door(url, messages, webhooks=True)))
        figures.update(worker_costs(url, messages))
        figures.update(lifecycle_costs(url, messages))
    return figures


def _run_in(root: Path, messages: int) -> dict[str, float]:
    """This file's measurement in another tree: its service code and its bench helpers."""
    code = (f"import runpy, sys; sys.argv = ['costs', '--messages', '{messages}', '--json']; "
            f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(root)}
    # Output to a file, not a pipe: a helper process left behind cannot hold this run open.
    with tempfile.TemporaryFile() as out:
        subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True,
                       stdout=out, timeout=900)
        out.seek(0)
        result: dict[str, float] = json.loads(out.read().decode().strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--service-root", type=Path, help="also measure this tree")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args.messages)))
        return
    trees = {"this": _REPO}
    if args.service_root:
        trees["other"] = args.service_root.resolve()
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, root in trees.items():
            rounds[name].append(_run_in(root, args.messages))
    keys = sorted({key for results in rounds.values() for result in results for key in result})
    width = max(len(key) for key in keys)
    print(f"{'µs per message (median of rounds)':<{width}}  " + "  ".join(
        f"{name:>10}" for name in trees))
    for key in keys:
        cells = []
        for name in trees:
            values = [r[key] for r in rounds[name] if key in r]
            cells.append(f"{statistics.median(values):>10.1f}" if values else f"{'—':>10}")
        print(f"{key:<{width}}  " + "  ".join(cells))
    print(json.dumps({name: rounds[name] for name in trees}))


if __name__ == "__main__":
    main()
