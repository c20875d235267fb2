"""What writing lifecycle events for webhooks costs per message (``WEBHOOKS_ENABLED``): the
accept script (``queued``) and the worker's settle script (``sent``), each with the events off
and on. Client CPU (process time, µs) and Redis CPU (``INFO commandstats``, µs per EVALSHA) per
message, one message per call, one thread, against a real redis-server.

    .venv/bin/python -m bench.webhook_events [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from harness.redis import RedisServer
from mailcore.queue import Acceptor, Entry, holding, send_job
from mailcore.redisclient import async_client
from mailcore.status import SENT, StatusStore, event, initial_fields


def _evalsha_usec(client: redis.Redis) -> tuple[int, int]:
    stats: Any = client.info("commandstats")
    entry = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(entry["calls"]), int(entry["usec"])


def _entry() -> Entry:
    message_id = str(uuid.uuid4())
    fields = initial_fields(message_id=message_id, owner="jwt::shop", template="password_reset",
                            recipients=["ada@example.com"], source="api",
                            metadata={"order": "42"})
    return Entry(send_job(message_id, {"template": "password_reset", "to": ["ada@example.com"],
                                       "data": {"code": "123456"}}, source="api"),
                 fields, event("queued", "accepted via api"))


def measure_accept(url: str, client: redis.Redis, messages: int, emit: bool) -> dict[str, float]:
    async def main() -> tuple[float, tuple[int, int], tuple[int, int]]:
        aclient = async_client(url, "ingress")
        prefix = f"bench-hooks-{uuid.uuid4().hex[:6]}"
        acceptor = Acceptor(aclient, queue_name=prefix, prefix=prefix, retention_seconds=600,
                            max_queue_depth=0, emit_events=emit)
        await acceptor.accept([_entry()])  # warm: script loaded, connection made
        entries = [_entry() for _ in range(messages)]
        before = _evalsha_usec(client)
        started = time.process_time()
        for entry in entries:
            await acceptor.accept([entry])
        cpu = time.process_time() - started
        after = _evalsha_usec(client)
        await aclient.aclose()
        return cpu, before, after

    cpu, before, after = asyncio.run(main())
    return {"client_us": round(cpu / messages * 1e6, 1),
            "redis_us": round((after[1] - before[1]) / max(after[0] - before[0], 1), 2)}


def measure_settle(url: str, client: redis.Redis, messages: int, emit: bool
                   ) -> dict[str, float]:
    prefix = f"bench-hooks-{uuid.uuid4().hex[:6]}"
    store = StatusStore.from_url(url, prefix, 600, emit_events=emit)
    hold = holding(prefix, "bench")

    def prepared() -> tuple[str, str]:
        message_id, redis_id = str(uuid.uuid4()), str(uuid.uuid4())
        client.hset(f"{prefix}:msg:{message_id}", mapping={
            "owner": "jwt::shop", "template": "password_reset", "status": "sending",
            "recipients": '["ada@example.com"]', "metadata": '{"order": "42"}'})
        client.sadd(hold.acks, redis_id)
        return message_id, redis_id

    def settle(item: tuple[str, str]) -> None:
        store.settle(item[0], "sent", item[1], hold, status=SENT, detail="250 2.0.0 Ok",
                     transport="smtp", response="250 2.0.0 Ok", code="250")

    settle(prepared())  # warm
    items = [prepared() for _ in range(messages)]
    before = _evalsha_usec(client)
    started = time.process_time()
    for item in items:
        settle(item)
    cpu = time.process_time() - started
    after = _evalsha_usec(client)
    store.close()
    return {"client_us": round(cpu / messages * 1e6, 1),
            "redis_us": round((after[1] - before[1]) / max(after[0] - before[0], 1), 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5, help="best of this many")
    args = parser.parse_args(argv)
    server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-hooks-")))
    server.start()
    try:
        client = server.client()
        steps: dict[str, Callable[[bool], dict[str, float]]] = {
            "accept (queued)": lambda emit: measure_accept(server.url, client, args.messages,
                                                           emit),
            "settle (sent)": lambda emit: measure_settle(server.url, client, args.messages,
                                                         emit),
        }
        print(f"{'step':<18}{'events':>8}{'client µs':>12}{'redis µs':>11}")
        for name, step in steps.items():
            # Off and on interleaved, the best of each: a shared machine's noise only adds.
            runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(args.rounds):
                for emit in (False, True):
                    runs[emit].append(step(emit))
            for emit in (False, True):
                best = {key: min(run[key] for run in runs[emit]) for key in runs[emit][0]}
                print(f"{name:<18}{'on' if emit else 'off':>8}{best['client_us']:>12}"
                      f"{best['redis_us']:>11}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
