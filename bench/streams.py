"""Does a bulk flood delay transactional mail? Accepted→delivered latency of transactional
messages (status ``created_at`` to the ``sent`` record) with nothing else queued, with a bulk
flood queued just ahead of them on the ``bulk`` stream (its own queue and worker: the design),
and — for contrast — the same flood sent on the transactional stream (what one shared queue
would do).

Real processes: redis-server, an aiosmtpd sink, one ingress, a transactional worker and a bulk
worker (``WORKER_STREAMS``), the same sizes for both. A figure, not a test: the machine's other
load moves it.

    python -m bench.streams [--flood 8000] [--messages 200] [--rate 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from harness.env import service_env
from harness.processes import ServiceProcess
from harness.redis import RedisServer
from harness.smtp import SMTPServer
from harness.stack import ServiceStack
from harness.waiting import wait_for
from mailcore.tokens import mint_token

SECRET = "bench-secret-0123456789abcdef-0123456789"  # noqa: S105 - a local run's own
PREFIX = "bench-streams"


def _message(stream: str) -> dict[str, Any]:
    to = f"{stream}-{uuid.uuid4().hex[:10]}@example.org"
    return {"template": "password_reset", "to": to, "data": {"email": to, "code": "1234"},
            "stream": stream}


def _flood(client: httpx.Client, url: str, count: int, stream: str) -> None:
    for start in range(0, count, 100):
        batch = [_message(stream) for _ in range(min(100, count - start))]
        response = client.post(f"{url}/v1/messages/batch", json={"messages": batch})
        response.raise_for_status()


def _latencies(client: httpx.Client, url: str, redis: Any, count: int,
               rate: float) -> list[float]:
    ids = []
    for _ in range(count):
        started = time.monotonic()
        response = client.post(f"{url}/v1/messages", json=_message("transactional"))
        response.raise_for_status()
        ids.append(response.json()["id"])
        time.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))

    def all_sent() -> list[float] | None:
        pipe = redis.pipeline(transaction=False)
        for message_id in ids:
            pipe.hmget(f"{PREFIX}:msg:{message_id}", "status", "created_at", "updated_at")
        rows = pipe.execute()
        if any(row[0] != b"sent" for row in rows):
            return None
        return [float(updated) - float(created) for _, created, updated in rows]

    found: list[float] = wait_for(all_sent, timeout=600, interval=0.2,
                                  message="the transactional messages to be sent")
    return found


def _drain(redis: Any, queues: list[str]) -> None:
    wait_for(lambda: all(redis.llen(f"dramatiq:{q}") == 0 for q in queues), timeout=1200,
             interval=0.5, message="the queues to drain")


def _figures(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"{name:<44} p50 {statistics.median(ordered) * 1000:8.1f} ms   "
            f"p99 {p99 * 1000:8.1f} ms   max {ordered[-1] * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=8000, help="bulk messages queued ahead")
    parser.add_argument("--messages", type=int, default=200,
                        help="transactional messages measured per scenario")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="transactional messages per second")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    redis_server, smtp = RedisServer(work / "redis"), SMTPServer()
    redis_server.start()
    smtp.start()
    env = service_env(redis_server.url, smtp.port, SECRET, KEY_PREFIX=PREFIX,
                      WORKER_STREAMS="transactional", RATE_LIMIT="off",
                      RESET_LIMIT_PER_RECIPIENT="off", EVENTS_ENABLED="false",
                      WORKER_METRICS_PORT="0",
                      WORKER_HEARTBEAT_DIR=str(work / "heartbeat"))
    bulk = ServiceProcess(["worker", "--processes", "1", "--threads", "8"],
                          {**env, "WORKER_STREAMS": "bulk",
                           "WORKER_HEARTBEAT_DIR": str(work / "heartbeat-bulk")},
                          work / "bulk.log")
    redis: Any = redis_server.client()
    headers = {"Authorization": f"Bearer {mint_token(SECRET, subject='bench')}"}
    try:
        with ServiceStack(env, work, processes=1, threads=8) as stack, httpx.Client(
                headers=headers, timeout=60) as client:
            bulk.start()
            bulk.wait_until(lambda: ServiceStack.WORKER_READY in bulk.output(), timeout=60,
                            message="the bulk worker")
            url = stack.base_url
            _latencies(client, url, redis, 20, args.rate)  # warm-up
            quiet = _latencies(client, url, redis, args.messages, args.rate)
            _flood(client, url, args.flood, "bulk")
            flooded = _latencies(client, url, redis, args.messages, args.rate)
            bulk_left = redis.llen("dramatiq:email-bulk")
            _drain(redis, ["email", "email-bulk"])
            _flood(client, url, args.flood, "transactional")
            shared = _latencies(client, url, redis, args.messages, args.rate)
            _drain(redis, ["email"])
    finally:
        bulk.stop()
        smtp.stop()
        redis_server.stop()
    print(f"transactional accepted→delivered, {args.messages} messages at {args.rate:g}/s "
          f"(1 ingress; transactional worker 1x8, bulk worker 1x8)")
    print(_figures("no flood", quiet))
    print(_figures(f"{args.flood} bulk queued ahead (bulk stream)", flooded)
          + f"   (bulk still queued after: {bulk_left})")
    print(_figures(f"{args.flood} queued ahead on the same stream", shared))


if __name__ == "__main__":
    main()
