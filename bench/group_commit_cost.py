"""``python -m bench.group_commit_cost``: group commit in the workers (mailcore/group_commit.py)
on its own. N threads of one process (1, 8, 24) each loop over the worker's two status steps
per message, ``begin_attempt`` then ``settle`` (sent), through :class:`StatusStore` with the
committer on (``WORKER_GROUP_COMMIT=true``) and off (a connection per thread, one round trip
per step), rounds alternating between the two, against a private in-memory redis-server.

Per message: client CPU (this process's CPU time / messages: the threads, the committer and
redis-py), Redis CPU (``INFO cpu``), wall-clock rate, and with the committer the mean number of
calls per round trip. Best and median of the rounds. Then what a lone call pays for the
committer: a trivial script called from one thread, directly (``Script.__call__``) and through
the committer, client CPU per call.

    python -m bench.group_commit_cost [--messages 4800] [--rounds 3] [--threads 1,8,24]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

from harness.redis import RedisServer
from mailcore.group_commit import GroupCommitter
from mailcore.redisclient import sync_client
from mailcore.status import SENT, Holding, StatusStore


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _round(url: str, threads: int, group: bool, messages: int) -> dict[str, float]:
    """One measured run: ``threads`` threads, ``messages`` messages between them."""
    prefix = f"gcb-{uuid.uuid4().hex[:8]}"
    holding = Holding(acks=f"{prefix}:acks", messages=f"{prefix}:msgs", delayed=f"{prefix}:DQ",
                      delayed_messages=f"{prefix}:DQ.msgs", dead=f"{prefix}:XQ",
                      dead_messages=f"{prefix}:XQ.msgs")
    admin = redis.Redis.from_url(url)
    per_thread = messages // threads
    ids = [[f"m{t}-{n}" for n in range(per_thread)] for t in range(threads)]
    with admin.pipeline(transaction=False) as pipe:  # the copies this "worker" holds
        for batch in ids:
            for message_id in batch:
                pipe.sadd(holding.acks, f"r-{message_id}")
                pipe.hset(holding.messages, f"r-{message_id}", b"body")
        pipe.execute()
    store = StatusStore.from_url(url, prefix, 600, group_commit=group)
    ready = threading.Barrier(threads + 1)

    def work(mine: list[str]) -> None:
        store.begin_attempt(f"warm-{mine[0]}", 30)  # connections, scripts
        ready.wait()
        ready.wait()
        for message_id in mine:
            store.begin_attempt(message_id, 30, f"r-{message_id}")
            store.settle(message_id, "sent", f"r-{message_id}", holding, status=SENT,
                         detail="250 ok", transport="smtp", code="250")

    workers = [threading.Thread(target=work, args=(mine,)) for mine in ids]
    for worker in workers:
        worker.start()
    ready.wait()  # all warm
    committer = store.committer
    flushes, calls = (committer.flushes, committer.calls) if committer else (0, 0)
    redis_before, cpu_before, started = _redis_cpu(admin), _cpu(), time.perf_counter()
    ready.wait()  # go
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    cpu, redis_cpu = _cpu() - cpu_before, _redis_cpu(admin) - redis_before
    done = per_thread * threads
    figures = {"client_us": round(cpu / done * 1e6, 1),
               "redis_us": round(redis_cpu / done * 1e6, 1),
               "per_s": round(done / wall)}
    if committer is not None:
        figures["calls_per_trip"] = round(
            (committer.calls - calls) / max(committer.flushes - flushes, 1), 2)
    store.close()
    admin.close()
    return figures


def _lone(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    """Client CPU µs per call of a trivial script, one thread, direct vs through the
    committer (each on its own worker client), rounds alternating."""
    direct = sync_client(url, "worker", single_connection=True).register_script("return 1")
    committer = GroupCommitter(sync_client(url, "worker", single_connection=True))
    through = committer.register("return 1")
    direct(keys=["k"], args=["x"])
    committer.run(through, ["k"], ["x"])
    figures: dict[str, list[float]] = {"lone_direct_us": [], "lone_committer_us": []}
    for _ in range(rounds):
        for name in figures:
            started = _cpu()
            for _ in range(calls):
                if name == "lone_direct_us":
                    direct(keys=["k"], args=["x"])
                else:
                    committer.run(through, ["k"], ["x"])
            figures[name].append(round((_cpu() - started) / calls * 1e6, 1))
    committer.close()
    return figures


def measure(messages: int, rounds: int, thread_counts: list[int]
            ) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[float]]]:
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-group-commit-") as folder:
        server = RedisServer(Path(folder), persistent=False).start()
        try:
            for _ in range(rounds):
                for threads in thread_counts:
                    for group in (False, True):  # alternating: a slow phase hits both
                        name = f"{'on' if group else 'off'}_{threads}"
                        results.setdefault(name, []).append(
                            _round(server.url, threads, group, messages))
            lone = _lone(server.url, messages, rounds * 4)
        finally:
            server.stop()
    return results, lone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4800)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,8,24")
    args = parser.parse_args(argv)
    thread_counts = [int(n) for n in args.threads.split(",")]
    results, lone = measure(args.messages, args.rounds, thread_counts)
    print("per message (begin_attempt + settle)     best / median of "
          f"{args.rounds} rounds, {args.messages} messages each")
    print(f"{'threads':>7} {'committer':>9} {'client µs':>15} {'Redis µs':>15} "
          f"{'messages/s':>15} {'calls/trip':>10}")
    for threads in thread_counts:
        for mode in ("off", "on"):
            runs = results[f"{mode}_{threads}"]

            def cell(key: str, best: str, runs: list[dict[str, float]] = runs) -> str:
                values = [run[key] for run in runs]
                pick = max(values) if best == "max" else min(values)
                return f"{pick:g} / {statistics.median(values):g}"

            trips = (f"{statistics.median(run['calls_per_trip'] for run in runs):.2f}"
                     if mode == "on" else "1")
            print(f"{threads:>7} {mode:>9} {cell('client_us', 'min'):>15} "
                  f"{cell('redis_us', 'min'):>15} {cell('per_s', 'max'):>15} {trips:>10}")
    for name, values in lone.items():
        print(f"{name}: {min(values):g} / {statistics.median(values):g} (best / median of "
              f"{len(values)} rounds of {args.messages} calls)")
    print(json.dumps({**results, **lone}))


if __name__ == "__main__":
    main()
