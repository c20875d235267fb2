"""What the suppression list costs each message, against a real redis-server (loopback) holding
``--entries`` suppressions (none of them the benchmark's recipients: the common case).

- Door: the accept step (``Acceptor.accept``) without and with the suppression check, which
  the accept script does itself (the entries carry their recipients' fields, built by
  ``service.suppression_door.door_fields``; no extra round trip). One caller, sequential.
- Send time: ``StatusStore.begin_attempt`` without and with the suppression check (the same one
  script, the check's fields passed along: no extra round trip), including building the check's
  arguments (``SendTimeCheck.for_job``).

Wall time per message (median and p99) and the client's CPU per message (``process_time``).
Rounds alternate between the modes so a slow phase of the VM hits both.

    python -m bench.suppression_cost [--messages 2000] [--rounds 3] [--entries 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.redis import RedisServer
from mailcore.queue import Acceptor, Entry, send_job
from mailcore.redisclient import async_client
from mailcore.send_time_suppression import SendTimeCheck
from mailcore.status import QUEUED, StatusStore, event, initial_fields
from mailcore.suppressions import Suppression, SyncSuppressionList, add_to
from service.suppression_door import door_fields

PREFIX = "bench-supp"


def _job(recipients: int) -> dict[str, Any]:
    to = [f"user{n}-{uuid.uuid4().hex[:6]}@example.org" for n in range(recipients)]
    return send_job(str(uuid.uuid4()), {"template": "password_reset", "to": to,
                                        "data": {"email": to[0], "code": "1"}}, source="api")


def _entry(recipients: int) -> Entry:
    job = _job(recipients)
    fields = initial_fields(message_id=job["id"], owner="bench", template="password_reset",
                            recipients=[r for r in job["request"]["to"]], source="api")
    return Entry(job, fields, event(QUEUED, "accepted via api"))


def _summary(walls: list[float], cpu: float) -> dict[str, float]:
    walls.sort()
    return {"median_us": round(statistics.median(walls) * 1e6, 1),
            "p99_us": round(walls[int(len(walls) * 0.99) - 1] * 1e6, 1),
            "cpu_us": round(cpu / len(walls) * 1e6, 1)}


async def _door(url: str, lookup: bool, messages: int, recipients: int) -> dict[str, float]:
    client = async_client(url, "ingress")
    acceptor = Acceptor(client, queue_name=f"supp-{uuid.uuid4().hex[:6]}", prefix=PREFIX,
                        retention_seconds=600, max_queue_depth=0)
    try:
        entries = [_entry(recipients) for _ in range(messages + 1)]
        await acceptor.accept([entries.pop()])  # warm: connection, script
        walls = []
        cpu_start = time.process_time()
        for entry in entries:
            started = time.perf_counter()
            if lookup:  # what the ingress adds per message: the fields, then the check
                entry = replace(entry, suppression_fields=door_fields(entry.job))
            result = await acceptor.accept([entry])
            walls.append(time.perf_counter() - started)
            assert result.outcome == "queued", result
        return _summary(walls, time.process_time() - cpu_start)
    finally:
        await client.aclose()


def _send_time(url: str, check: bool, messages: int, recipients: int) -> dict[str, float]:
    store = StatusStore.from_url(url, PREFIX, 600)
    try:
        jobs = [_job(recipients) for _ in range(messages + 1)]
        warm = jobs.pop()
        store.begin_attempt(warm["id"], 30, "r", SendTimeCheck.for_job(warm) if check else None)
        walls = []
        cpu_start = time.process_time()
        for job in jobs:
            started = time.perf_counter()
            store.begin_attempt(job["id"], 30, "r",
                                SendTimeCheck.for_job(job, "password_reset") if check else None)
            walls.append(time.perf_counter() - started)
        return _summary(walls, time.process_time() - cpu_start)
    finally:
        store.close()


def _fill(server: RedisServer, entries: int) -> None:
    client = server.client()
    with client.pipeline(transaction=False) as pipe:
        for number in range(entries):
            add_to(pipe, PREFIX, Suppression(address=f"listed{number}@example.net",
                                             reason="manual"))
        pipe.execute()
    assert SyncSuppressionList(client, PREFIX).suppressed(["listed1@example.net"], "bulk")
    client.close()


def _best(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: min(r[key] for r in rounds) for key in rounds[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--recipients", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-supp-") as folder:
        server = RedisServer(Path(folder), persistent=False).start()
        try:
            _fill(server, args.entries)
            results: dict[str, list[dict[str, float]]] = {
                "door_accept_no_check": [], "door_accept_with_check": [],
                "send_begin_only": [], "send_begin_with_check": []}
            runs: list[tuple[str, Callable[[], dict[str, float] | Awaitable[Any]]]] = []
            for _ in range(args.rounds):
                runs = [
                    ("door_accept_no_check", lambda: asyncio.run(
                        _door(server.url, False, args.messages, args.recipients))),
                    ("door_accept_with_check", lambda: asyncio.run(
                        _door(server.url, True, args.messages, args.recipients))),
                    ("send_begin_only", lambda: _send_time(
                        server.url, False, args.messages, args.recipients)),
                    ("send_begin_with_check", lambda: _send_time(
                        server.url, True, args.messages, args.recipients)),
                ]
                for name, run in runs:
                    results[name].append(run())  # type: ignore[arg-type]
        finally:
            server.stop()
    best = {name: _best(rounds) for name, rounds in results.items()}
    door = {key: round(best["door_accept_with_check"][key] - best["door_accept_no_check"][key],
                       1) for key in best["door_accept_no_check"]}
    send = {key: round(best["send_begin_with_check"][key] - best["send_begin_only"][key], 1)
            for key in best["send_begin_only"]}
    print(json.dumps({"settings": vars(args), "best_of_rounds": best,
                      "added_per_message": {"door": door, "send_time": send}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
