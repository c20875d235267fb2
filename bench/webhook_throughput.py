"""How fast ``email-service webhooks`` fans out and delivers: lifecycle events written straight
into the stream, one endpoint subscribed, a local receiver that answers 200 at once; the rate
at which signed deliveries arrive, end to end.

    .venv/bin/python -m bench.webhook_throughput [--events N] [--processes P] [--threads T]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from harness.env import service_env
from harness.processes import ServiceProcess
from harness.redis import RedisServer
from harness.waiting import wait_for
from mailcore.lifecycle import lifecycle_event, stream_key
from mailcore.webhook_endpoints import EndpointSpec, WebhookStore


class _Receiver(ThreadingHTTPServer):
    request_queue_size = 1024  # http.server's 5 would refuse connections under load


class _Count(BaseHTTPRequestHandler):
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        with _Count.lock:
            _Count.received += 1

    def log_message(self, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    server = RedisServer(work)
    server.start()
    receiver = _Receiver(("127.0.0.1", 0), _Count)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    prefix = "bench-webhooks"
    env = service_env(server.url, 1, "bench-secret-0123456789abcdef0123456789",
                      KEY_PREFIX=prefix, WEBHOOKS_ENABLED="true",
                      WEBHOOKS_ALLOWED_HOSTS="127.0.0.1", WEBHOOKS_CLUSTER_HOSTS="127.0.0.1",
                      WEBHOOKS_ALLOWED_NETWORKS="127.0.0.1/32", WORKER_METRICS_PORT="0",
                      WORKER_HEARTBEAT_DIR=str(work / "heartbeat"))
    client = server.client()
    WebhookStore(client, prefix).create("jwt::bench", EndpointSpec(
        url=f"http://127.0.0.1:{receiver.server_address[1]}/hooks", events=["sent"]))
    process = ServiceProcess(["webhooks", "--processes", str(args.processes), "--threads",
                              str(args.threads)], env, work / "webhooks.log")
    process.start()
    try:
        process.wait_until(lambda: "ready for action" in process.output(), timeout=60,
                           message="the webhooks worker")
        pipe = client.pipeline(transaction=False)
        for index in range(args.events):
            pipe.xadd(stream_key(prefix), {"event": lifecycle_event(
                "sent", f"m-{index}", owner="jwt::bench", template="welcome",
                recipients=["ada@example.com"])})
        started = time.perf_counter()
        pipe.execute()
        wait_for(lambda: _Count.received >= args.events, timeout=600, interval=0.05,
                 message="every delivery")
        elapsed = time.perf_counter() - started
        retried = process.output().count("attempt failed")
        print(f"{args.events} events -> {_Count.received} signed deliveries in {elapsed:.2f} s "
              f"({retried} attempts failed and were retried): "
              f"{args.events / elapsed:.0f}/s ({args.processes} process(es) x {args.threads} "
              "threads)")
    finally:
        process.stop()
        receiver.shutdown()
        server.stop()


if __name__ == "__main__":
    main()
