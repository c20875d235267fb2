"""``python -m bench.coalesce_cost``: the door's accept coalescer (service/coalescer.py) on its
own: client CPU per script call, sent directly (``Script.__call__``, as without the coalescer)
or through the coalescer, one caller at a time and 32 callers at once, rounds alternating, on a
private in-memory redis-server. The script is a trivial one, so the figures are the round trip
and the Python around it, not the accept script's work."""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
from pathlib import Path

import redis.asyncio as aioredis

from harness.redis import RedisServer
from service.coalescer import AcceptCoalescer

_SCRIPT = "return {'queued', ''}"
_KEYS = ["bench-coalesce"]
_ARGS: list[str] = ["x"] * 8


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    client = aioredis.Redis.from_url(url)
    script = client.register_script(_SCRIPT)
    coalescer = AcceptCoalescer(client, script)
    await script(keys=_KEYS, args=_ARGS)
    figures: dict[str, list[float]] = {}

    async def call(through: bool) -> None:
        if through:
            await coalescer.run(_KEYS, _ARGS)
        else:
            await script(keys=_KEYS, args=_ARGS)

    try:
        for _ in range(rounds):
            for concurrency in (1, 32):
                for through in (False, True):
                    per_caller = calls // concurrency
                    flushes = coalescer.flushes
                    started = _cpu()

                    async def caller(through: bool = through, count: int = per_caller) -> None:
                        for _ in range(count):
                            await call(through)

                    await asyncio.gather(*(caller() for _ in range(concurrency)))
                    done = per_caller * concurrency
                    name = f"{'coalescer' if through else 'direct'}_{concurrency}"
                    figures.setdefault(f"{name}_us", []).append(
                        round((_cpu() - started) / done * 1e6, 1))
                    if through:
                        figures.setdefault(f"{name}_per_flush", []).append(
                            round(done / (coalescer.flushes - flushes), 1))
    finally:
        await client.aclose()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir), persistent=False).start()
        try:
            figures = asyncio.run(_measure(server.url, args.calls, args.rounds))
        finally:
            server.stop()
    for name, values in figures.items():
        print(f"{name:<28} " + " ".join(f"{value:>8}" for value in values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
