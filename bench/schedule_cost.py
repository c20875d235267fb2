"""What the door's accept step costs per message, and what a scheduled message adds: single
accepts (p50), accepts in batches of 100 (per message), scheduled accepts in batches of 100,
and dispatching due messages (one Lua step each), against a real redis-server (no
persistence: the script's own cost, not the disk's).

Run it on two commits to compare (bench/README.md: Streams):

    python -m bench.schedule_cost [--accepts 3000] [--scheduled 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from harness.redis import RedisServer
from mailcore.queue import Acceptor, Entry, send_job
from mailcore.status import QUEUED, event, initial_fields


def _entry(due: float | None = None) -> Entry:
    message_id = str(uuid.uuid4())
    job = send_job(message_id, {"template": "password_reset", "to": "a@example.org",
                                "data": {"email": "a@example.org", "code": "1"}}, source="api")
    fields = initial_fields(message_id=message_id, owner="bench", template="password_reset",
                            recipients=["a@example.org"], source="api")
    if due is None:
        return Entry(job, fields, event(QUEUED, "accepted via api"))
    fields.update(status="scheduled", stream="transactional")
    return Entry(job, fields, event("scheduled", "accepted via api"), due=due)


async def _accepts(url: str, count: int, scheduled: int) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url)
    prefix, queue = f"sc-{uuid.uuid4().hex[:6]}", f"sq-{uuid.uuid4().hex[:6]}"
    acceptor = Acceptor(client, queue_name=queue, prefix=prefix, retention_seconds=3600,
                        max_queue_depth=0)
    for _ in range(200):  # warm-up
        await acceptor.accept([_entry()])
    singles = []
    for _ in range(count):
        entry = _entry()
        started = time.perf_counter()
        await acceptor.accept([entry])
        singles.append(time.perf_counter() - started)
    batches = []
    for _ in range(max(count // 100, 1)):
        entries = [_entry() for _ in range(100)]
        started = time.perf_counter()
        await acceptor.accept(entries)
        batches.append(time.perf_counter() - started)
    figures: dict[str, Any] = {
        "single_p50_us": round(statistics.median(singles) * 1e6),
        "batch100_per_message_us": round(statistics.median(batches) * 1e4, 1)}
    if scheduled:  # this checkout schedules (Entry has ``due``)
        due = time.time() + 1
        started = time.perf_counter()
        for _ in range(scheduled // 100):
            await acceptor.accept([_entry(due) for _ in range(100)])
        figures["scheduled_batch100_per_message_us"] = round(
            (time.perf_counter() - started) / scheduled * 1e6, 1)
        figures.update(await asyncio.to_thread(_dispatch, url, prefix, queue, due))
    await client.aclose()
    return figures


def _dispatch(url: str, prefix: str, queue: str, due: float) -> dict[str, Any]:
    import redis

    from mailcore.schedule import Dispatcher

    while time.time() <= due:
        time.sleep(due - time.time() + 0.01)
    dispatcher = Dispatcher(redis.Redis.from_url(url), prefix=prefix,
                            queues={"transactional": f"dramatiq:{queue}"},
                            default_queue=f"dramatiq:{queue}", retention_seconds=3600)
    started, total = time.perf_counter(), 0
    while (done := dispatcher.dispatch_due()).queued:
        total += done.queued
    took = time.perf_counter() - started
    return {"dispatch_per_message_us": round(took / max(total, 1) * 1e6, 1),
            "dispatched_per_second": round(total / took) if took else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accepts", type=int, default=3000)
    parser.add_argument("--scheduled", type=int, default=20000,
                        help="scheduled messages accepted then dispatched (0: skip)")
    args = parser.parse_args()
    server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-schedule-")), persistent=False)
    server.start()
    try:
        print(json.dumps(asyncio.run(_accepts(server.url, args.accepts, args.scheduled))))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
