"""A keep-alive asyncio HTTP/1.1 load generator (closed loop and open loop), and a wrk wrapper.

Open loop sends on a fixed schedule and measures each latency from the request's *scheduled*
time, so a stalled server cannot hide its queueing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def post_request(host: str, port: int, path: str, body: bytes, token: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


@dataclass
class Sample:
    start: float  #: scheduled (open loop) or actual (closed loop) send time, time.monotonic()
    end: float  #: response fully read
    status: int
    body: bytes


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    wall: float = 0.0

    def latencies(self) -> list[float]:
        return sorted(s.end - s.start for s in self.samples)

    def ok(self, status: int) -> list[Sample]:
        return [s for s in self.samples if s.status == status]


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        body = await self.reader.readexactly(int(match.group(1))) if match else b""
        return status, body

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def _connect(host: str, port: int) -> _Conn:
    reader, writer = await asyncio.open_connection(host, port)
    return _Conn(reader, writer)


async def closed_loop(host: str, port: int, request: bytes, *, total: int | None = None,
                      duration: float | None = None, concurrency: int = 32) -> Results:
    """``concurrency`` connections each sending back to back, for ``total`` requests or
    ``duration`` seconds."""
    results = Results()
    remaining = [total if total is not None else 1 << 62]
    stop_at = time.monotonic() + duration if duration else float("inf")

    async def run() -> None:
        conn = await _connect(host, port)
        try:
            while remaining[0] > 0 and time.monotonic() < stop_at:
                remaining[0] -= 1
                start = time.monotonic()
                try:
                    status, body = await conn.roundtrip(request)
                except (OSError, asyncio.IncompleteReadError):
                    results.errors += 1
                    conn.close()
                    conn = await _connect(host, port)
                    continue
                results.samples.append(Sample(start, time.monotonic(), status, body))
        finally:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(run() for _ in range(concurrency)))
    results.wall = time.monotonic() - started
    return results


#: An idle connection older than this is not reused (the ingress closes idle keep-alive
#: connections after HTTP_KEEPALIVE_SECONDS, 5 by default).
STALE_SECONDS = 4.0


async def open_loop(host: str, port: int, request: bytes, *, rate: float, duration: float,
                    max_connections: int = 1024) -> Results:
    """Send at ``rate`` per second for ``duration`` seconds, opening connections as needed."""
    results = Results()
    #: Connections waiting for a request, with when each was last used (newest last).
    idle: list[tuple[_Conn, float]] = []
    opened = [0]
    tasks: set[asyncio.Task[None]] = set()

    def reusable() -> _Conn | None:
        # One idle past the server's keep-alive timeout may be closed under us: a request sent
        # on it would fail through no fault of the server's, so it is dropped instead.
        while idle:
            conn, used = idle.pop()
            if time.monotonic() - used < STALE_SECONDS:
                return conn
            conn.close()
            opened[0] -= 1
        return None

    async def one(due: float) -> None:
        conn = reusable()
        if conn is None:
            if opened[0] >= max_connections:
                results.errors += 1
                return
            opened[0] += 1
            conn = await _connect(host, port)
        try:
            status, body = await conn.roundtrip(request)
        except (OSError, asyncio.IncompleteReadError):
            results.errors += 1
            conn.close()
            opened[0] -= 1
            return
        done = time.monotonic()
        results.samples.append(Sample(due, done, status, body))
        idle.append((conn, done))

    # Warm a few connections so the first requests do not pay the TCP handshake.
    for _ in range(min(16, max_connections)):
        idle.append((await _connect(host, port), time.monotonic()))
        opened[0] += 1
    count = int(rate * duration)
    started = time.monotonic()
    for i in range(count):
        due = started + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.wait(set(tasks))
    results.wall = time.monotonic() - started
    for conn, _ in idle:
        conn.close()
    return results


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


# --- wrk ------------------------------------------------------------------------------------

_LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
"""
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class WrkResult:
    requests: int
    non_2xx: int
    errors: int
    duration: float
    p50: float | None
    p99: float | None

    @property
    def accepted_per_s(self) -> float:
        return (self.requests - self.non_2xx) / self.duration


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk_args(url: str, script: Path, *, body: bytes, token: str, duration: float,
             connections: int = 64, threads: int = 1) -> list[str]:
    """The wrk command line; writes the Lua script that POSTs ``body`` to ``script``."""
    script.write_text(_LUA.format(body=body.decode(), token=token))
    return ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s",
            "--latency", "-s", str(script), url]


def run_wrk(url: str, *, body: bytes, token: str, duration: float, connections: int = 64,
            threads: int = 1) -> WrkResult:
    with tempfile.TemporaryDirectory() as tmp:
        args = wrk_args(url, Path(tmp) / "post.lua", body=body, token=token, duration=duration,
                        connections=connections, threads=threads)
        out = subprocess.run(args, check=True, capture_output=True, text=True,
                             timeout=duration + 60).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> WrkResult:
    def seconds(text: str) -> float:
        match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
        assert match, text
        return float(match.group(1)) * _UNITS[match.group(2)]

    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    assert done, out
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests=int(done.group(1)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=sum(int(g) for g in errors.groups()) if errors else 0,
        duration=float(done.group(2)) * _UNITS[done.group(3)],
        p50=seconds(p50.group(1)) if p50 else None,
        p99=seconds(p99.group(1)) if p99 else None,
    )
