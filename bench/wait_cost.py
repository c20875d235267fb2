"""What ``REDIS_WAIT_REPLICAS=1`` costs the door: the accept script alone versus the accept
script and ``WAIT 1`` in one pipeline, against a real primary with one real replica (loopback,
AOF with fsync on every write on both, as the chart runs them).

Latency is per accept, from one caller (sequential, the added round trip shows whole), and
throughput with 32 concurrent accepts (the ingress's event loop under load). Rounds alternate
between the two modes so a slow phase of the VM hits both.

    python -m bench.wait_cost [--accepts 2000] [--rounds 3]
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

from harness.redis import RedisServer
from harness.waiting import wait_for
from mailcore.queue import Acceptor, Entry, send_job
from mailcore.redisclient import async_client
from mailcore.status import QUEUED, event, initial_fields


def _entry() -> Entry:
    message_id = str(uuid.uuid4())
    job = send_job(message_id, {"template": "password_reset", "to": "a@example.org",
                                "data": {"email": "a@example.org", "code": "1"}}, source="api")
    fields = initial_fields(message_id=message_id, owner="bench", template="password_reset",
                            recipients=["a@example.org"], source="api")
    return Entry(job, fields, event(QUEUED, "accepted via api"))


async def _round(url: str, wait: int, accepts: int) -> dict[str, float]:
    client = async_client(url, "ingress")  # as the door makes it
    acceptor = Acceptor(client, queue_name=f"wait-{uuid.uuid4().hex[:6]}", prefix="bench-wait",
                        retention_seconds=600, max_queue_depth=0, wait_replicas=wait,
                        wait_timeout_ms=1000)
    try:
        entries = [_entry() for _ in range(accepts * 2)]
        await acceptor.accept([entries.pop()])  # warm: connection, script
        latencies = []
        for _ in range(accepts):
            started = time.perf_counter()
            await acceptor.accept([entries.pop()])
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        queue: asyncio.Queue[Entry] = asyncio.Queue()
        for entry in entries[:accepts]:
            queue.put_nowait(entry)

        async def caller() -> None:
            while not queue.empty():
                await acceptor.accept([queue.get_nowait()])

        await asyncio.gather(*(caller() for _ in range(32)))
        rate = accepts / (time.perf_counter() - started)
    finally:
        await client.aclose()
    latencies.sort()
    return {"p50_us": statistics.median(latencies) * 1e6,
            "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6, "concurrent_per_s": rate}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accepts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wait-cost-") as tmp:
        primary = RedisServer(Path(tmp) / "primary", fsync_always=True).start()
        replica = RedisServer(Path(tmp) / "replica", fsync_always=True,
                              extra=("--replicaof", "127.0.0.1", str(primary.port))).start()
        with replica.client() as client:
            wait_for(lambda: client.info("replication").get("master_link_status") == "up",
                     timeout=15, message="the replica to sync")
        try:
            results: dict[int, list[dict[str, float]]] = {0: [], 1: []}
            for _ in range(args.rounds):
                for wait in (0, 1):
                    results[wait].append(asyncio.run(_round(primary.url, wait,
                                                            args.accepts)))
        finally:
            replica.stop()
            primary.stop()
    for wait, rounds in results.items():
        line = {key: [round(r[key]) for r in rounds] for key in rounds[0]}
        print(json.dumps({"wait_replicas": wait, **line}))


if __name__ == "__main__":
    main()
