"""The duplicate window under load: ``python -m bench.duplicates [--threads 24] [--kills 8]``.

Runs the fault tests' rig (ingress, two worker commands, durable Redis, the in-process recording
relay), floods it with messages in batches, and reports

- the part of the window the workers control, relay ``250`` -> ``sent`` recorded, from their
  ``email_sent_record_seconds`` histogram (a run without kills);
- what a user sees: messages delivered twice per SIGKILL of a worker process, killing one of the
  two ``--kills`` times while they deliver.

``--service-root`` runs another source tree's service (e.g. a ``git archive`` of main) with the
same rig, for before/after figures (its workers need the histogram for the first figure).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path

import httpx

import tests.support
from mailcore.tokens import mint_token
from tests import test_faults
from tests.support import TEST_SECRET, ServiceProcess, free_port, queue_idle, wait_for


class _MeteredRig(test_faults.Rig):
    """The rig, with each worker command serving its metrics on a port of its own."""

    metrics_ports: list[int]

    def start_worker(self) -> ServiceProcess:
        port = free_port()
        self.metrics_ports.append(port)
        env = {**self.env, **self.worker_env, "WORKER_METRICS_PORT": str(port)}
        worker = ServiceProcess(["worker", "--processes", "1", "--threads",
                                 str(test_faults.THREADS)], env,
                                self.tmp / f"worker{len(self.workers)}.log").start()
        self.workers.append(worker)
        return worker


def _flood(rig: test_faults.Rig, total: int, tag: str) -> None:
    token = mint_token(TEST_SECRET, subject="bench-duplicates")
    url = f"http://127.0.0.1:{rig.api_port}/v1/messages/batch"

    async def run() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            async def batch(number: int) -> None:
                messages = [{"template": "password_reset", "to": f"{tag}{number}-{i}@example.org",
                             "data": {"email": f"{tag}{number}-{i}@example.org", "code": "1"}}
                            for i in range(100)]
                answer = await http.post(url, json={"messages": messages},
                                         headers={"Authorization": f"Bearer {token}"})
                assert answer.status_code == 202, answer.text

            await asyncio.gather(*(batch(number) for number in range(total // 100)))

    asyncio.run(run())


def _copies(rig: test_faults.Rig) -> dict[str, int]:
    with rig.smtp.lock:
        counts: dict[str, int] = {}
        for message in rig.smtp.received:
            for rcpt in message.rcpt_tos:
                counts[rcpt] = counts.get(rcpt, 0) + 1
    return counts


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    count = buckets[-1][1]
    target, low, below = q * count, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= target:
            if bound == float("inf"):
                return low
            return low + (bound - low) * (target - below) / max(cumulative - below, 1e-9)
        low, below = bound, cumulative
    return low


def window(total: int) -> str:
    rig = _MeteredRig(Path(tempfile.mkdtemp()), processes=2)
    rig.metrics_ports = []
    with test_faults.running(rig):
        started = time.perf_counter()
        _flood(rig, total, "w")
        wait_for(lambda: len(_copies(rig)) >= total, timeout=600, interval=0.2,
                 message="every message delivered")
        rate = total / (time.perf_counter() - started)
        # Both worker commands share the multiprocess directory: one scrape has everything.
        text = httpx.get(f"http://127.0.0.1:{rig.metrics_ports[0]}/metrics").text
    pattern = r'email_sent_record_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)'
    buckets = sorted((float(le), float(value)) for le, value in re.findall(pattern, text))
    summed = re.search(r"email_sent_record_seconds_sum ([0-9.e+]+)", text)
    if summed is None or not buckets:
        return "relay 250 -> sent recorded: no email_sent_record_seconds in the workers' metrics"
    mean = float(summed[1]) / buckets[-1][1]
    return (f"relay 250 -> sent recorded ({rate:.0f} emails/s): mean {mean * 1000:.2f} ms, "
            f"p50 {_quantile(buckets, 0.5) * 1000:.2f}, p90 {_quantile(buckets, 0.9) * 1000:.2f}, "
            f"p99 {_quantile(buckets, 0.99) * 1000:.2f} ms")


def kills(total: int, count: int) -> str:
    rig = test_faults.Rig(Path(tempfile.mkdtemp()), processes=2)
    with test_faults.running(rig):
        _flood(rig, total, "k")
        wait_for(lambda: len(rig.smtp.received) > total // 20, timeout=120,
                 message="delivery under way")
        for kill in range(count):
            rig.kill_worker(kill % 2)
            time.sleep(0.8)
        client = rig.redis.client()
        copies = wait_for(lambda: (found := _copies(rig)) and len(found) >= total
                          and queue_idle(client) and found, timeout=600, interval=0.5,
                          message="every message delivered")
    duplicates = sum(n - 1 for n in copies.values())
    return (f"{count} SIGKILLs while delivering {total}: {duplicates} duplicates, "
            f"{duplicates / count:.2f} per abrupt worker death")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.duplicates", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=24, help="per worker process")
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--service-root", type=Path)
    args = parser.parse_args()
    test_faults.THREADS = args.threads
    if args.service_root:
        tests.support.REPO = args.service_root.resolve()
    print(f"{args.threads} threads per worker process, 2 processes")
    print(window(args.messages // 2))
    print(kills(args.messages, args.kills))


if __name__ == "__main__":
    main()
