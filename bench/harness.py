"""``python -m bench``: run every measurement, print a table and, last, one JSON line.

Phases (full run, about 2.5 minutes on 2 cores):

1. ceilings of the tools themselves: wrk and the asyncio HTTP client against a stub server that
   answers at once; smtp-sink and the recording sink against a pipelining asyncio SMTP client;
2. render cost per message, compile-once vs per-message compile;
3. the door: wrk at saturation with no worker running (queue only fills), then an open-loop
   1,000 req/s with the workers delivering;
4. delivered emails/s end to end: N messages POSTed as fast as the door takes them, timed from the
   first 202 to smtp-sink counting the last message; the same through Pub/Sub events; and the
   workers' drain rate on a pre-filled queue (the worker side alone);
5. accepted→delivered latency at an open-loop 200 msg/s, against the recording sink;
6. the same end-to-end throughput through a proxy delaying each direction by 10 ms;
7. the baseline (one Pub/Sub thread, one SMTP connection per email) on loopback and through
   the proxy, and our/baseline ratios;
8. template change propagation, when the template store exists.

Peak RSS (VmHWM) of every process is read before it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import floor, httpload, render, smtpblast
from .procs import (
    REPO,
    LineProc,
    PostfixSink,
    Proc,
    RecordingSink,
    RedisServer,
    children,
    cpu_seconds,
    drop_queue,
    email_service,
    free_port,
    machine_busy_seconds,
    peak_rss_mb,
    python_module,
    queue_idle,
    service_env,
    wait_for,
)

#: The JWT secret of the throwaway stack a run starts (not a credential of anything real).
SECRET = "bench-secret-0123456789abcdef-0123456789"  # noqa: S105
SEND_BODY = orjson.dumps({"template": "password_reset", "to": "a@example.com",
                          "data": {"email": "a@example.com", "code": "123456"}})
#: Messages per ``POST /v1/messages/batch`` in the batch phase (the API's maximum).
BATCH_SIZE = 100
BATCH_BODY = orjson.dumps({"messages": [orjson.loads(SEND_BODY)] * BATCH_SIZE})


@dataclass
class Sizes:
    """How much load each phase offers (full run vs smoke)."""

    wrk_seconds: float = 8.0
    fixed_rate: float = 1000.0
    fixed_seconds: float = 8.0
    e2e_messages: int = 12_000
    event_messages: int = 6_000
    batch_messages: int = 20_000
    drain_window: float = 5.0
    latency_rate: float = 200.0
    latency_seconds: float = 10.0
    relay_messages: int = 3_000
    baseline_messages: int = 3_000
    baseline_relay_messages: int = 100
    ceiling_seconds: float = 3.0
    blast_messages: int = 20_000


@dataclass
class Run:
    args: argparse.Namespace
    workdir: Path
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rss: dict[str, Any] = field(default_factory=dict)
    #: Peak RSS of every worker process seen (each worker start forks new ones), by pid.
    worker_peaks: dict[int, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def log(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[bench {elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)

    def note_rss(self, role: str, value: float | None) -> None:
        if value is not None:
            self.rss[role] = round(max(self.rss.get(role) or 0.0, value), 1)


def _token() -> str:
    from mailcore.tokens import mint_token

    return mint_token(SECRET, subject="bench", ttl_seconds=3600)


def _run_async(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _pct(values: list[float], q: float) -> float | None:
    return httpload.percentile(sorted(values), q)


# --- the service under test --------------------------------------------------------------------


class Service:
    """Ingress and worker processes against one Redis and a given SMTP port."""

    def __init__(self, run: Run, redis: RedisServer) -> None:
        self.run = run
        self.redis = redis
        self.api: Proc | None = None
        self.worker: Proc | None = None
        self.port = 0
        self.token = _token()

    def env(self, smtp_port: int, **extra: str) -> dict[str, str]:
        env = service_env(self.redis.url, smtp_port, SECRET, **extra)
        root = self.run.args.service_root
        if root is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root),
                                                              env.get("PYTHONPATH")]))
        return env

    @property
    def cwd(self) -> Path:
        return self.run.args.service_root or REPO

    def start_api(self, smtp_port: int, *, events: bool = True) -> None:
        import httpx

        self.port = free_port()
        self.api = Proc("api", email_service("api", "--host", "127.0.0.1", "--port",
                                             str(self.port)),
                        env=self.env(smtp_port, EVENTS_ENABLED="true" if events else "false"),
                        log=self.run.workdir / "api.log", cwd=self.cwd)

        def ready() -> bool:
            assert self.api is not None
            self.api.check()
            return bool(httpx.get(f"http://127.0.0.1:{self.port}/ready").status_code == 200)

        wait_for(ready, timeout=30, what="the ingress")
        if events:
            wait_for(lambda: self.redis.client.pubsub_numsub("password_reset_events")[0][1] > 0,
                     timeout=10, what="the event listener to subscribe")

    def start_worker(self, smtp_port: int) -> None:
        before = self._heartbeats()
        self.worker = Proc(
            "worker", email_service("worker", "--processes", str(self.run.args.processes),
                                    "--threads", str(self.run.args.threads)),
            env=self.env(smtp_port), log=self.run.workdir / "worker.log", cwd=self.cwd,
        )

        def ready() -> bool:
            assert self.worker is not None
            self.worker.check()
            return len(self._heartbeats() - before) >= int(self.run.args.processes)

        wait_for(ready, timeout=60, what="the worker processes")

    def _heartbeats(self) -> set[str]:
        """Dramatiq broker ids that have talked to Redis (one per worker process; the ingress
        has one too)."""
        members = self.redis.client.zrange("dramatiq:__heartbeats__", 0, -1)
        return {str(m) for m in members}

    def worker_pids(self) -> list[int]:
        if self.worker is None:
            return []
        return children(self.worker.pid)

    def record_rss(self) -> None:
        if self.api is not None:
            self.run.note_rss("ingress_mb", peak_rss_mb(self.api.pid))
        if self.worker is not None:
            self.run.note_rss("worker_parent_mb", peak_rss_mb(self.worker.pid))
            for pid in self.worker_pids():
                peak = peak_rss_mb(pid)
                if peak is not None:
                    self.run.worker_peaks[pid] = max(self.run.worker_peaks.get(pid, 0.0), peak)
                    self.run.note_rss("worker_process_max_mb", peak)
        self.run.note_rss("redis_mb", peak_rss_mb(self.redis.pid))

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.record_rss()
            self.worker.stop()
            self.worker = None

    def stop_api(self) -> None:
        if self.api is not None:
            self.record_rss()
            self.api.stop()
            self.api = None

    def stop(self) -> None:
        self.stop_worker()
        self.stop_api()

    def request(self) -> bytes:
        return httpload.post_request("127.0.0.1", self.port, "/v1/messages", SEND_BODY,
                                     self.token)

    def batch_request(self) -> bytes:
        return httpload.post_request("127.0.0.1", self.port, "/v1/messages/batch", BATCH_BODY,
                                     self.token)

    def wait_idle(self, timeout: float = 60) -> None:
        def idle() -> bool:
            assert self.worker is not None
            self.worker.check()
            return queue_idle(self.redis.client)

        wait_for(idle, timeout=timeout, what="the queue to drain", interval=0.05)


class CpuMeter:
    """CPU seconds each role of the stack uses between :meth:`start` and :meth:`per`."""

    def __init__(self, service: Service, sink: Proc | None = None) -> None:
        self.service = service
        self.sink = sink
        self.before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        service = self.service
        now = {
            "ingress": cpu_seconds(service.api.pid) if service.api else 0.0,
            "workers": sum(cpu_seconds(p) for p in service.worker_pids())
            + (cpu_seconds(service.worker.pid) if service.worker else 0.0),
            "redis": cpu_seconds(service.redis.pid),
            "machine": machine_busy_seconds(),
        }
        if self.sink is not None:
            now["sink"] = cpu_seconds(self.sink.pid)
        return now

    def start(self) -> CpuMeter:
        self.before = self._now()
        return self

    def per(self, count: int, wall: float) -> dict[str, Any]:
        """Microseconds of CPU per message by role, and the machine's other load."""
        after = self._now()
        used = {k: after[k] - self.before.get(k, 0.0) for k in after}
        ours = sum(v for k, v in used.items() if k != "machine")
        out: dict[str, Any] = {f"{k}_us": round(v / count * 1e6) for k, v in used.items()
                               if k != "machine" and count}
        out["stack_us"] = round(ours / count * 1e6) if count else None
        out["machine_busy_cores"] = round(used["machine"] / wall, 2) if wall else None
        return out


@contextlib.contextmanager
def _started(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.stop()


# --- phases ----------------------------------------------------------------------------------


def _service_redis(run: Run) -> RedisServer:
    """The service's Redis: durable like the chart's (AOF, fsync on every write), unless
    ``--volatile-redis`` asks for the in-memory Redis earlier sessions measured with."""
    aof_dir = None if run.args.volatile_redis else run.workdir / "redis-data"
    if aof_dir is not None:
        aof_dir.mkdir(exist_ok=True)
    return RedisServer(run.workdir / "redis.log", aof_dir=aof_dir)


def phase_ceilings(run: Run, sizes: Sizes) -> None:
    run.log("load generator and sink ceilings")
    stub = LineProc("stub-http", python_module("bench.stub_http"))
    with _started(stub):
        request = httpload.post_request("127.0.0.1", stub.port, "/v1/messages", SEND_BODY, "x")
        if httpload.have_wrk():
            result = httpload.run_wrk(f"http://127.0.0.1:{stub.port}/v1/messages",
                                      body=SEND_BODY, token="x",  # noqa: S106
                                      duration=sizes.ceiling_seconds, connections=64)
            run.figures["wrk_ceiling_rps"] = round(result.accepted_per_s)
        client = _run_async(httpload.closed_loop("127.0.0.1", stub.port, request,
                                                 duration=sizes.ceiling_seconds, concurrency=64))
        run.figures["asyncio_client_ceiling_rps"] = round(len(client.samples) / client.wall)
    if httpload.have_wrk():
        _bare_framework_ceiling(run, sizes)
    sinks: list[tuple[str, Callable[[], Any]]] = [("recording_sink", RecordingSink)]
    if not run.args.smoke:
        sinks.insert(0, ("smtp_sink", PostfixSink))
    for name, factory in sinks:
        sink = factory()
        with _started(sink):
            rate = _run_async(smtpblast.blast("127.0.0.1", sink.port,
                                              total=sizes.blast_messages, connections=8))
        run.figures[f"{name}_ceiling_msgs_per_s"] = round(rate)


def _bare_framework_ceiling(run: Run, sizes: Sizes) -> None:
    """One uvicorn + Starlette process that does no work, then one that only makes a Redis
    round trip per request: what any one ingress process tops at, and any that records what
    it accepts."""
    redis = RedisServer(run.workdir / "bare-redis.log")
    with _started(redis):
        for key, extra in (("bare_framework", []), ("bare_framework_redis", ["--redis",
                                                                          redis.url])):
            bare = LineProc("bare-app", python_module("bench.bare_app", *extra))
            with _started(bare):
                url = f"http://127.0.0.1:{bare.port}/v1/messages"
                httpload.run_wrk(url, body=SEND_BODY, token="x", duration=1,  # noqa: S106
                                 connections=16)
                before = cpu_seconds(bare.pid)
                result = httpload.run_wrk(url, body=SEND_BODY, token="x",  # noqa: S106
                                          duration=sizes.ceiling_seconds, connections=64)
                used = cpu_seconds(bare.pid) - before
            run.figures[key] = {
                "accepted_per_s": round(result.accepted_per_s),
                "cpu_per_request_us": round(used / max(result.requests, 1) * 1e6),
            }


def phase_render(run: Run) -> None:
    run.log("render cost")
    builtin, real = render.measure(0.05 if run.args.smoke else 0.4)
    run.figures["render_builtin_us"] = {
        c.name: {"compiled": round(c.compiled_us, 1),
                 "compiled_best": round(c.compiled_best_us, 1),
                 "per_message_compile": round(c.per_message_us)}
        for c in builtin
    }
    run.figures["worker_cpu_breakdown_us"] = render.measure_message_build(
        0.05 if run.args.smoke else 0.4)
    if real:
        compiled = sorted(c.compiled_us for c in real)
        per_message = sorted(c.per_message_us for c in real)
        run.figures["render_realworld_us"] = {
            "templates": len(real),
            "compiled_median": round(compiled[len(compiled) // 2], 1),
            "compiled_max": round(compiled[-1], 1),
            "per_message_compile_median": round(per_message[len(per_message) // 2]),
            "per_message_compile_max": round(per_message[-1]),
        }
    else:
        run.figures["render_realworld_us"] = None
        run.notes.append("render_realworld_us: ../shared/testdata/mjml is absent")


def phase_floor(run: Run, redis: RedisServer, sink: PostfixSink) -> None:
    run.log("one delivery's own cost: one thread in-process, no Dramatiq")
    run.figures["delivery_floor_cpu_us"] = floor.measure(
        redis.url, sink.port, 100 if run.args.smoke else 2000)


def phase_door_saturation(run: Run, sizes: Sizes, service: Service) -> None:
    run.log("door at saturation (wrk, no worker: the queue only fills)")
    url = f"http://127.0.0.1:{service.port}/v1/messages"
    httpload.run_wrk(url, body=SEND_BODY, token=service.token, duration=1, connections=16)
    meter = CpuMeter(service).start()
    result = httpload.run_wrk(url, body=SEND_BODY, token=service.token,
                              duration=sizes.wrk_seconds, connections=64)
    run.figures["door_saturation"] = {
        "accepted_per_s": round(result.accepted_per_s),
        "p50_ms": _ms(result.p50), "p99_ms": _ms(result.p99),
        "non_2xx": result.non_2xx, "socket_errors": result.errors, "connections": 64,
        "cpu_per_request": meter.per(result.requests - result.non_2xx, result.duration),
    }


def _sink_count_rate(sink: PostfixSink, window: float) -> float:
    """Deliveries per second counted by smtp-sink over ``window`` seconds."""
    first, t0 = sink.count, time.monotonic()
    deadline = t0 + window
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return (sink.count - first) / (time.monotonic() - t0)


def phase_drain(run: Run, sizes: Sizes, service: Service, sink: PostfixSink) -> None:
    backlog = service.redis.client.llen("dramatiq:email")
    run.log(f"worker drain rate on a pre-filled queue ({backlog} waiting)")
    if backlog < 2000:
        run.figures["worker_drain_msgs_per_s"] = None
        return
    # Let the workers reach steady state, then count over the window.
    start = sink.count
    wait_for(lambda: sink.count - start >= 300, timeout=30, what="first deliveries")
    meter = CpuMeter(service, sink).start()
    first = sink.count
    rate = _sink_count_rate(sink, sizes.drain_window)
    run.figures["worker_drain_msgs_per_s"] = round(rate)
    run.figures["worker_drain_cpu_per_message"] = meter.per(sink.count - first,
                                                            sizes.drain_window)
    service.record_rss()
    drop_queue(service.redis.client)
    service.wait_idle()


def phase_door_fixed(run: Run, sizes: Sizes, service: Service) -> None:
    run.log(f"door at a fixed {sizes.fixed_rate:g} req/s with workers delivering")
    result = _run_async(httpload.open_loop("127.0.0.1", service.port, service.request(),
                                           rate=sizes.fixed_rate, duration=sizes.fixed_seconds))
    latencies = result.latencies()
    run.figures["door_fixed_rate"] = {
        "rate": sizes.fixed_rate, "sent": len(result.samples) + result.errors,
        "accepted": len(result.ok(202)), "errors": result.errors,
        "p50_ms": _ms(_pct(latencies, 50)), "p99_ms": _ms(_pct(latencies, 99)),
        "max_ms": _ms(latencies[-1] if latencies else None),
    }
    service.record_rss()
    service.wait_idle()


def _e2e_http(service: Service, sink: PostfixSink, total: int, concurrency: int = 64, *,
              per_request: int = 1) -> dict[str, Any]:
    """``total`` messages through the HTTP API (``per_request`` > 1: batches), timed from the
    first accept to the sink's last message; the accept rate is from first to last answer."""
    base = sink.count
    meter = CpuMeter(service, sink).start()
    request = service.batch_request() if per_request > 1 else service.request()
    result = _run_async(httpload.closed_loop("127.0.0.1", service.port, request,
                                             total=max(1, total // per_request),
                                             concurrency=concurrency))
    accepted = result.ok(202)
    messages = len(accepted) * per_request
    first_accept = min(s.end for s in accepted)
    accept_window = max(s.end for s in accepted) - first_accept
    wait_for(lambda: sink.count - base >= messages, timeout=300,
             what=f"{messages} deliveries", interval=0.005)
    elapsed = sink.changed_at - first_accept
    service.record_rss()
    return {
        "messages": messages, "seconds": round(elapsed, 3),
        "delivered_per_s": round(messages / elapsed, 1),
        "accept_per_s": round(messages / accept_window, 1) if accept_window else None,
        "refused": len(result.samples) - len(accepted) + result.errors,
        "cpu_per_message": meter.per(messages, elapsed),
    }


def phase_e2e(run: Run, sizes: Sizes, service: Service, sink: PostfixSink) -> None:
    run.log(f"end to end over HTTP: {sizes.e2e_messages} messages -> smtp-sink")
    run.figures["e2e_loopback"] = _e2e_http(service, sink, sizes.e2e_messages)
    service.wait_idle()


def phase_e2e_batches(run: Run, sizes: Sizes, service: Service, sink: PostfixSink) -> None:
    run.log(f"end to end over HTTP in batches of {BATCH_SIZE}: {sizes.batch_messages} messages")
    run.figures["e2e_batches"] = _e2e_http(service, sink, sizes.batch_messages, concurrency=4,
                                           per_request=BATCH_SIZE)
    service.wait_idle()


def _publish_events(client: Any, count: int, tag: str) -> float:
    """Publish ``count`` distinct reset events in one pipeline; returns the first publish time."""
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.publish("password_reset_events", orjson.dumps(
            {"email": "a@example.com", "code": f"{tag}{i:07d}", "timestamp": time.time()}))
    started = time.monotonic()
    pipe.execute()
    return started


def phase_events(run: Run, sizes: Sizes, service: Service, sink: PostfixSink) -> None:
    run.log(f"end to end over Pub/Sub events: {sizes.event_messages} events -> smtp-sink")
    base = sink.count
    meter = CpuMeter(service, sink).start()
    started = _publish_events(service.redis.client, sizes.event_messages, "e")
    wait_for(lambda: sink.count - base >= sizes.event_messages, timeout=300,
             what="event deliveries", interval=0.005)
    elapsed = sink.changed_at - started
    run.figures["e2e_events_loopback"] = {
        "messages": sizes.event_messages, "seconds": round(elapsed, 3),
        "delivered_per_s": round(sizes.event_messages / elapsed, 1),
        "cpu_per_message": meter.per(sizes.event_messages, elapsed),
    }
    service.record_rss()
    service.wait_idle()


def phase_latency(run: Run, sizes: Sizes, service: Service, sink: RecordingSink) -> None:
    run.log(f"accepted->delivered latency at {sizes.latency_rate:g} msg/s (recording sink)")
    result = _run_async(httpload.open_loop("127.0.0.1", service.port, service.request(),
                                           rate=sizes.latency_rate,
                                           duration=sizes.latency_seconds))
    accepted = {orjson.loads(s.body)["id"]: s.end for s in result.ok(202)}
    wait_for(lambda: all(i in sink.arrivals for i in accepted), timeout=120,
             what="every accepted message at the sink", interval=0.02)
    with sink.lock:
        delays = sorted(sink.arrivals[i] - t for i, t in accepted.items())
    door = result.latencies()
    run.figures["latency_fixed_rate"] = {
        "rate": sizes.latency_rate, "messages": len(accepted),
        "p50_ms": _ms(_pct(delays, 50)), "p99_ms": _ms(_pct(delays, 99)),
        "max_ms": _ms(delays[-1] if delays else None),
        "door_p99_ms": _ms(_pct(door, 99)),
    }
    service.record_rss()
    service.wait_idle()


def phase_idle_latency(run: Run, service: Service, sink: RecordingSink, count: int = 8,
                       gap: float = 1.5) -> None:
    """A lone message on a quiet system (the usual password reset): the workers have been idle
    for ``gap`` seconds, long enough for their queue polling to back off fully."""
    import httpx

    run.log(f"accepted->delivered of a lone message after {gap:g} s idle, {count} times")
    delays: list[float] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{service.port}") as client:
        for _ in range(count):
            time.sleep(gap)  # the idleness being measured, not a wait for a result
            response = client.post("/v1/messages", content=SEND_BODY, headers={
                "Authorization": f"Bearer {service.token}", "Content-Type": "application/json"})
            accepted_at = time.monotonic()
            response.raise_for_status()
            message_id = response.json()["id"]
            wait_for(lambda message_id=message_id: message_id in sink.arrivals, timeout=30,
                     what="the lone message at the sink", interval=0.001)
            with sink.lock:
                delays.append(sink.arrivals[message_id] - accepted_at)
    delays.sort()
    run.figures["latency_idle"] = {"messages": count, "idle_s": gap,
                                   "p50_ms": _ms(_pct(delays, 50)), "max_ms": _ms(delays[-1])}


def phase_relay(run: Run, sizes: Sizes, service: Service, proxy_port: int,
                sink: PostfixSink) -> None:
    run.log(f"end to end through the 10 ms/direction proxy: {sizes.relay_messages} messages")
    run.figures["e2e_relay"] = _e2e_http(service, sink, sizes.relay_messages)
    service.wait_idle(timeout=120)


def _baseline(run: Run, redis: RedisServer, smtp_port: int, sink: PostfixSink, count: int,
              tag: str) -> dict[str, Any]:
    proc = LineProc("baseline", python_module(
        "bench.baseline", "--redis", redis.url, "--smtp", f"127.0.0.1:{smtp_port}"),
        log=run.workdir / "baseline.log")
    with _started(proc):
        base = sink.count
        started = _publish_events(redis.client, count, tag)
        wait_for(lambda: sink.count - base >= count, timeout=120, what="baseline deliveries",
                 interval=0.005)
        elapsed = sink.changed_at - started
        run.note_rss("baseline_mb", peak_rss_mb(proc.pid))
    return {"messages": count, "seconds": round(elapsed, 3),
            "delivered_per_s": round(count / elapsed, 1)}


def phase_propagation(run: Run, service: Service, sink: RecordingSink) -> None:
    """Store update -> first delivered email rendered from the new version, under steady load."""
    run.log("template change propagation (store update under 100 msg/s)")
    try:
        from mailcore.store import TemplateStoreWriter
    except ImportError:
        run.figures["propagation_ms"] = None
        run.notes.append("propagation_ms: null - there is no template store (mailcore/store.py)")
        return
    import dataclasses

    from mailcore.templates import builtin_templates_dir, load_template_dir

    source = load_template_dir(builtin_templates_dir() / "password_reset")
    changed = dataclasses.replace(source, subject=f"{source.subject} {RecordingSink.MARKER}")
    writer = TemplateStoreWriter(service.redis.client, "email-service")
    key = "default/password_reset"
    updated_at: list[float] = []

    async def load_with_update() -> httpload.Results:
        loop = asyncio.get_running_loop()
        traffic = asyncio.create_task(httpload.open_loop(
            "127.0.0.1", service.port, service.request(), rate=100, duration=3.0))
        await asyncio.sleep(1.0)  # steady traffic before the change
        updated_at.append(time.monotonic())
        await loop.run_in_executor(None, writer.put, key, changed, {"source": "bench"})
        results: httpload.Results = await traffic
        return results

    with sink.lock:
        sink.marked.clear()
    try:
        _run_async(load_with_update())
        try:
            first = wait_for(lambda: min(sink.marked, default=0.0), timeout=30,
                             what="an email rendered from the updated template")
        except TimeoutError as exc:
            run.figures["propagation_ms"] = None
            run.notes.append(f"propagation_ms: null - {exc}")
        else:
            run.figures["propagation_ms"] = _ms(first - updated_at[0])
    finally:
        writer.delete(key)
    service.wait_idle()


def _fit_sizes(run: Run, sizes: Sizes) -> None:
    """Size the remaining phases from the rates measured so far, so that each lasts seconds
    (not minutes) whatever this machine manages and the whole run stays under 5 minutes."""
    door = run.figures["door_saturation"]["accepted_per_s"]
    drain = run.figures.get("worker_drain_msgs_per_s") or door
    expected = max(50.0, min(door, drain))
    sizes.e2e_messages = int(min(sizes.e2e_messages, max(1000, expected * 10)))
    sizes.event_messages = int(min(sizes.event_messages, max(500, expected * 6)))
    sizes.batch_messages = int(min(sizes.batch_messages, max(2000, drain * 12)))
    connections = run.args.processes * run.args.threads
    relay_guess = min(expected, connections / 0.08)  # 4 round trips of 20 ms per message
    sizes.relay_messages = int(min(sizes.relay_messages, max(300, relay_guess * 10)))
    run.figures["sizes"] = {"e2e_messages": sizes.e2e_messages,
                            "event_messages": sizes.event_messages,
                            "batch_messages": sizes.batch_messages,
                            "relay_messages": sizes.relay_messages}


# --- orchestration ---------------------------------------------------------------------------


def full(run: Run, sizes: Sizes) -> None:
    phase_ceilings(run, sizes)
    phase_render(run)
    redis = _service_redis(run)
    smtp_sink = PostfixSink(run.workdir / "smtp-sink.log")
    with _started(smtp_sink, redis):
        phase_floor(run, redis, smtp_sink)
        service = Service(run, redis)
        try:
            service.start_api(smtp_sink.port)
            phase_door_saturation(run, sizes, service)
            service.start_worker(smtp_sink.port)
            phase_drain(run, sizes, service, smtp_sink)
            _fit_sizes(run, sizes)
            phase_door_fixed(run, sizes, service)
            phase_e2e(run, sizes, service, smtp_sink)
            phase_e2e_batches(run, sizes, service, smtp_sink)
            phase_events(run, sizes, service, smtp_sink)
            service.stop_worker()
            recorder = RecordingSink(run.workdir / "sink.log")
            with _started(recorder):
                service.start_worker(recorder.port)
                phase_latency(run, sizes, service, recorder)
                phase_idle_latency(run, service, recorder)
                phase_propagation(run, service, recorder)
                service.stop_worker()
            proxy = LineProc("proxy", python_module(
                "bench.proxy", "--upstream", f"127.0.0.1:{smtp_sink.port}", "--delay", "0.010"))
            with _started(proxy):
                service.start_worker(proxy.port)
                phase_relay(run, sizes, service, proxy.port, smtp_sink)
                service.stop()
                run.log(f"baseline on loopback: {sizes.baseline_messages} events")
                run.figures["baseline_loopback"] = _baseline(
                    run, redis, smtp_sink.port, smtp_sink, sizes.baseline_messages, "b")
                run.log(f"baseline through the proxy: {sizes.baseline_relay_messages} events")
                run.figures["baseline_relay"] = _baseline(
                    run, redis, proxy.port, smtp_sink, sizes.baseline_relay_messages, "r")
        finally:
            service.stop()
    ours, base = run.figures["e2e_loopback"], run.figures["baseline_loopback"]
    run.figures["ratio_loopback"] = round(ours["delivered_per_s"] / base["delivered_per_s"], 2)
    run.figures["ratio_loopback_events"] = round(
        run.figures["e2e_events_loopback"]["delivered_per_s"] / base["delivered_per_s"], 2)
    ours, base = run.figures["e2e_relay"], run.figures["baseline_relay"]
    run.figures["ratio_relay"] = round(ours["delivered_per_s"] / base["delivered_per_s"], 2)


def smoke(run: Run, sizes: Sizes) -> None:
    """A few seconds: the pipeline delivers every accepted message (recording sink only)."""
    redis = _service_redis(run)
    sink = RecordingSink(run.workdir / "sink.log")
    with _started(sink, redis):
        service = Service(run, redis)
        try:
            service.start_api(sink.port, events=False)
            service.start_worker(sink.port)
            result = _run_async(httpload.closed_loop("127.0.0.1", service.port,
                                                     service.request(),
                                                     total=run.args.messages, concurrency=8))
            accepted = {orjson.loads(s.body)["id"]: s.end for s in result.ok(202)}
            wait_for(lambda: all(i in sink.arrivals for i in accepted), timeout=60,
                     what="every accepted message at the sink", interval=0.02)
            with sink.lock:
                delivered = sum(1 for i in accepted if i in sink.arrivals)
                delays = sorted(sink.arrivals[i] - t for i, t in accepted.items())
            run.figures["smoke"] = {
                "sent": run.args.messages, "accepted": len(accepted), "delivered": delivered,
                "p50_ms": _ms(_pct(delays, 50)), "p99_ms": _ms(_pct(delays, 99)),
            }
        finally:
            service.stop()


def profile_mode(run: Run, sizes: Sizes) -> None:
    """py-spy on the ingress and each worker process while wrk saturates the door."""
    from . import profile

    seconds = run.args.profile_seconds
    redis = _service_redis(run)
    smtp_sink = PostfixSink(run.workdir / "smtp-sink.log")
    with _started(smtp_sink, redis):
        service = Service(run, redis)
        try:
            service.start_api(smtp_sink.port)
            service.start_worker(smtp_sink.port)
            script = run.workdir / "post.lua"
            args = httpload.wrk_args(f"http://127.0.0.1:{service.port}/v1/messages", script,
                                     body=SEND_BODY, token=service.token,
                                     duration=seconds + 6, connections=64)
            run.log(f"profiling for {seconds:g}s under wrk load (raw stacks in {run.workdir})")
            wrk = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
            base = smtp_sink.count
            wait_for(lambda: smtp_sink.count - base >= 200, timeout=30,
                     what="deliveries under load")
            targets = [("ingress", service.api.pid if service.api else 0)]
            targets += [(f"worker-{i}", pid) for i, pid in enumerate(service.worker_pids())]
            before = smtp_sink.count
            started = time.monotonic()
            spies = [(label, run.workdir / f"profile-{label}.txt",) for label, _ in targets]
            procs = [profile.record(pid, out, seconds, gil=run.args.profile_view == "cpu")
                     for (_, pid), (_, out) in zip(targets, spies, strict=True)]
            for proc in procs:
                proc.wait(timeout=seconds + 60)
            delivered = (smtp_sink.count - before) / (time.monotonic() - started)
            out, _ = wrk.communicate(timeout=seconds + 60)
            door = httpload.parse_wrk(out)
            service.record_rss()
            run.figures["profile_load"] = {"door_accepted_per_s": round(door.accepted_per_s),
                                           "door_p99_ms": _ms(door.p99),
                                           "delivered_per_s": round(delivered)}
            for label, raw in spies:
                if raw.exists():
                    print(profile.report(label, raw))
        finally:
            service.stop()


def sweep_mode(run: Run, sizes: Sizes) -> None:
    """End-to-end rate and CPU per message for several worker sizings (``--sweep 1x8,2x8``),
    on loopback and through the 10 ms/direction proxy."""
    specs = [tuple(int(n) for n in spec.split("x")) for spec in run.args.sweep.split(",")]
    redis = _service_redis(run)
    smtp_sink = PostfixSink(run.workdir / "smtp-sink.log")
    proxy = LineProc("proxy", python_module(
        "bench.proxy", "--upstream", f"127.0.0.1:{smtp_sink.port}", "--delay", "0.010"))
    results: dict[str, Any] = {}
    with _started(proxy, smtp_sink, redis):
        service = Service(run, redis)
        try:
            service.start_api(smtp_sink.port, events=False)
            for processes, threads in specs:
                run.args.processes, run.args.threads = processes, threads
                for setting, port, count in (("loopback", smtp_sink.port, 2000),
                                             ("relay", proxy.port, 1500)):
                    run.log(f"sweep {processes}x{threads} {setting}: {count} messages")
                    service.start_worker(port)
                    outcome = _e2e_http(service, smtp_sink, count)
                    service.wait_idle(timeout=120)
                    service.stop_worker()
                    results[f"{processes}x{threads}_{setting}"] = {
                        "delivered_per_s": outcome["delivered_per_s"],
                        "worker_cpu_us": outcome["cpu_per_message"]["workers_us"],
                        "stack_cpu_us": outcome["cpu_per_message"]["stack_us"],
                    }
        finally:
            service.stop()
    run.figures["sweep"] = results
    for key, value in results.items():
        print(f"{key:<20} {value['delivered_per_s']:>8.1f} /s   worker CPU "
              f"{value['worker_cpu_us']:>6} us/msg   stack CPU {value['stack_cpu_us']:>6} us/msg")


# --- output ----------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"
    elif isinstance(value, int):
        value = f"{value:,}"
    return f"{value}{unit}"


def _verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "-"
    ok = value >= target if higher_is_better else value < target
    return "met" if ok else "MISSED"


def table(run: Run) -> str:
    f = run.figures
    rows: list[tuple[str, str, str, str]] = []

    def add(label: str, value: str, target: str = "", verdict: str = "") -> None:
        rows.append((label, value, target, verdict))

    if "smoke" in f:
        s = f["smoke"]
        add("smoke: sent / accepted / delivered",
            f"{s['sent']} / {s['accepted']} / {s['delivered']}", "all delivered",
            "met" if s["accepted"] == s["delivered"] == s["sent"] else "MISSED")
        add("smoke: accepted->delivered p50 / p99", f"{_fmt(s['p50_ms'])} / {_fmt(s['p99_ms'])} ms")
    if "wrk_ceiling_rps" in f or "asyncio_client_ceiling_rps" in f:
        add("load generator ceiling: wrk / asyncio client (stub server)",
            f"{_fmt(f.get('wrk_ceiling_rps'))} / {_fmt(f.get('asyncio_client_ceiling_rps'))} req/s")
    if "smtp_sink_ceiling_msgs_per_s" in f or "recording_sink_ceiling_msgs_per_s" in f:
        add("sink ceiling: smtp-sink / recording sink",
            f"{_fmt(f.get('smtp_sink_ceiling_msgs_per_s'))} / "
            f"{_fmt(f.get('recording_sink_ceiling_msgs_per_s'))} msg/s")
    if "bare_framework" in f:
        b = f["bare_framework"]
        add("bare uvicorn+Starlette process, no work: req/s; CPU/request",
            f"{_fmt(b['accepted_per_s'])}; {_fmt(b['cpu_per_request_us'])} us")
    if "bare_framework_redis" in f:
        b = f["bare_framework_redis"]
        add("  the same with one Redis PING per request: req/s; CPU/request",
            f"{_fmt(b['accepted_per_s'])}; {_fmt(b['cpu_per_request_us'])} us")
    if "door_saturation" in f:
        d = f["door_saturation"]
        add("door at saturation: accepted req/s", _fmt(d["accepted_per_s"]), ">= 5,000",
            _verdict(d["accepted_per_s"], 5000, True))
        add("door at saturation: p50 / p99", f"{_fmt(d['p50_ms'])} / {_fmt(d['p99_ms'])} ms")
    if "door_fixed_rate" in f:
        d = f["door_fixed_rate"]
        add(f"door at {d['rate']:g} req/s: p50 / p99",
            f"{_fmt(d['p50_ms'])} / {_fmt(d['p99_ms'])} ms", "p99 < 20 ms",
            _verdict(d["p99_ms"], 20, False))
    if "e2e_loopback" in f:
        e = f["e2e_loopback"]
        add(f"delivered end to end, HTTP, loopback ({e['messages']:,} msgs)",
            _fmt(e["delivered_per_s"], " /s"), ">= 1,500/s", _verdict(e["delivered_per_s"], 1500,
                                                                     True))
    if "e2e_batches" in f:
        e = f["e2e_batches"]
        add(f"delivered end to end, HTTP batches of {BATCH_SIZE} ({e['messages']:,} msgs)",
            _fmt(e["delivered_per_s"], " /s"), ">= 1,500/s", _verdict(e["delivered_per_s"], 1500,
                                                                     True))
        cpu = e["cpu_per_message"]
        add("  batches: door accepted msgs/s; CPU/msg ingress / workers",
            f"{_fmt(e['accept_per_s'])} /s; {cpu['ingress_us']} / {cpu['workers_us']} us")
    if "e2e_events_loopback" in f:
        e = f["e2e_events_loopback"]
        add(f"delivered end to end, Pub/Sub events ({e['messages']:,})",
            _fmt(e["delivered_per_s"], " /s"))
    cpu = (f.get("e2e_loopback") or {}).get("cpu_per_message")
    if cpu:
        add("CPU per delivered msg: ingress / workers / redis / sink",
            f"{cpu['ingress_us']} / {cpu['workers_us']} / {cpu['redis_us']} / "
            f"{cpu.get('sink_us', 0)} us")
        if cpu.get("stack_us"):
            cores = os.cpu_count() or 1
            add(f"=> CPU-bound ceiling on {cores} cores (stack CPU {cpu['stack_us']} us/msg)",
                _fmt(round(cores * 1e6 / cpu["stack_us"]), " /s"))
    if "delivery_floor_cpu_us" in f:
        d = f["delivery_floor_cpu_us"]
        add("one delivery, 1 thread, no Dramatiq: begin / deliver / record",
            f"{d['begin_attempt_us']} / {d['deliver_us']} / {d['record_sent_us']} us")
        add("  => floor of a worker's CPU per email (the three together)",
            f"{d['whole_us']} us")
    if "door_saturation" in f and f["door_saturation"].get("cpu_per_request"):
        d = f["door_saturation"]["cpu_per_request"]
        add("door CPU per accepted request: ingress / redis",
            f"{d['ingress_us']} / {d['redis_us']} us")
    if "worker_drain_msgs_per_s" in f:
        add("worker drain rate (pre-filled queue, ingress idle)",
            _fmt(f["worker_drain_msgs_per_s"], " /s"))
    if "latency_fixed_rate" in f:
        lat = f["latency_fixed_rate"]
        add(f"accepted->delivered at {lat['rate']:g} msg/s: p50 / p99",
            f"{_fmt(lat['p50_ms'])} / {_fmt(lat['p99_ms'])} ms", "p99 < 200 ms",
            _verdict(lat["p99_ms"], 200, False))
    if "latency_idle" in f:
        lat = f["latency_idle"]
        add(f"accepted->delivered, lone message after {lat['idle_s']:g} s idle: p50 / max",
            f"{_fmt(lat['p50_ms'])} / {_fmt(lat['max_ms'])} ms")
    if "render_builtin_us" in f:
        for name, cost in f["render_builtin_us"].items():
            # Judged on the fastest batch, the code's own cost; the median shows the VM's noise.
            add(f"render {name}: compiled best / median; per-message compile",
                f"{_fmt(cost['compiled_best'])} / {_fmt(cost['compiled'])}; "
                f"{_fmt(cost['per_message_compile'])} us",
                "<= 50 us", _verdict(cost["compiled_best"], 50.0001, False))
    if f.get("worker_cpu_breakdown_us"):
        b = f["worker_cpu_breakdown_us"]
        add("per message in a worker: render / MIME build / serialise",
            f"{b['render_us']} / {b['mime_build_us']} / {b['mime_serialise_us']} us")
    if f.get("render_realworld_us"):
        r = f["render_realworld_us"]
        add(f"render real-world MJML ({r['templates']}): compiled median / max",
            f"{_fmt(r['compiled_median'])} / {_fmt(r['compiled_max'])} us")
        add("render real-world MJML: per-message compile median / max",
            f"{_fmt(r['per_message_compile_median'])} / {_fmt(r['per_message_compile_max'])} us")
    if "e2e_relay" in f:
        e = f["e2e_relay"]
        add(f"delivered through 20 ms relay ({e['messages']:,} msgs)",
            _fmt(e["delivered_per_s"], " /s"), ">= 400/s", _verdict(e["delivered_per_s"], 400,
                                                                   True))
    if "baseline_loopback" in f:
        add("baseline (1 thread, new SMTP conn/email), loopback",
            _fmt(f["baseline_loopback"]["delivered_per_s"], " /s"))
        add("baseline through 20 ms relay", _fmt(f["baseline_relay"]["delivered_per_s"], " /s"))
        add("ours/baseline, loopback (HTTP / events)",
            f"{_fmt(f['ratio_loopback'])}x / {_fmt(f['ratio_loopback_events'])}x")
        add("ours/baseline, 20 ms relay", f"{_fmt(f['ratio_relay'])}x", ">= 50x",
            _verdict(f["ratio_relay"], 50, True))
    if "propagation_ms" in f:
        add("template change propagation", _fmt(f["propagation_ms"], " ms"), "< 1,000 ms",
            _verdict(f["propagation_ms"], 1000, False))
    rss = run.rss
    if rss:
        worst = rss.get("worker_process_max_mb")
        add("peak RSS: worker processes (each)",
            ", ".join(f"{v:.1f}" for v in rss.get("worker_processes_mb", [])) + " MB",
            "<= 100 MB", _verdict(worst, 100.0001, False))
        add("peak RSS: worker parent / ingress / redis",
            f"{_fmt(rss.get('worker_parent_mb'))} / {_fmt(rss.get('ingress_mb'))} / "
            f"{_fmt(rss.get('redis_mb'))} MB")
        if "baseline_mb" in rss:
            add("peak RSS: baseline", _fmt(rss["baseline_mb"], " MB"))
    machine = f.get("machine")
    if machine:
        add("machine: cpus / load at start / busy cores during run",
            f"{machine['cpus']} / {machine['loadavg_1m_at_start']} / "
            f"{machine['busy_cores_during_run']}")
    if f.get("config", {}).get("redis"):
        add("service's Redis", f["config"]["redis"])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    widths = [max(w, len(h)) for w, h in zip(widths, ("figure", "measured", "target", ""),
                                               strict=True)]
    lines = [f"{'figure':<{widths[0]}}  {'measured':>{widths[1]}}  {'target':<{widths[2]}}  "]
    lines.append("-" * (sum(widths) + 6))
    for label, value, target, verdict in rows:
        lines.append(f"{label:<{widths[0]}}  {value:>{widths[1]}}  {target:<{widths[2]}}  "
                     f"{verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds: check the pipeline delivers what it accepts")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the ingress and workers under load instead of measuring")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--profile-view", choices=("cpu", "wall"), default="cpu",
                        help="cpu: samples holding the GIL; wall: every busy thread (waits too)")
    parser.add_argument("--sweep", metavar="PxT,...",
                        help="compare worker sizings (processes x threads), e.g. 1x8,2x8,2x32")
    parser.add_argument("--messages", type=int, default=50, help="messages in smoke mode")
    parser.add_argument("--processes", type=int, default=int(os.environ.get("BENCH_PROCESSES",
                                                                            "2")),
                        help="worker processes (default: the CLI's default, 2)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "24")),
                        help="threads per worker process (default: the CLI's default, 24)")
    parser.add_argument("--service-root", type=Path,
                        help="run the service from this source tree (e.g. a `git archive` of a "
                             "commit) instead of the checkout; the bench code stays the same")
    parser.add_argument("--volatile-redis", action="store_true",
                        help="run the service's Redis without its append-only file (the chart "
                             "runs it with appendfsync always; earlier figures were without)")
    parser.add_argument("--workdir", type=Path, help="keep logs here (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.processes, args.threads = 1, 2
    import tempfile

    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        load_at_start = round(os.getloadavg()[0], 2)
        busy_at_start = machine_busy_seconds()
        run = Run(args=args, workdir=workdir)
        sizes = Sizes()
        mode = (smoke if args.smoke else profile_mode if args.profile
                else sweep_mode if args.sweep else full)
        mode(run, sizes)
        run.rss["worker_processes_mb"] = sorted(
            (round(v, 1) for v in run.worker_peaks.values()), reverse=True)[:args.processes]
        run.figures["rss_mb"] = run.rss
        run.figures["machine"] = {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "loadavg_1m_at_start": load_at_start,
            "busy_cores_during_run": round(
                (machine_busy_seconds() - busy_at_start) / (time.monotonic() - run.started), 2),
        }
        run.figures["config"] = {"worker_processes": args.processes,
                                 "worker_threads": args.threads, "mode": mode.__name__,
                                 "redis": "volatile" if args.volatile_redis
                                 else "aof-appendfsync-always",
                                 "seconds": round(time.monotonic() - run.started, 1)}
        run.figures["notes"] = run.notes
        print(table(run))
        for note in run.notes:
            print(f"note: {note}")
        print(json.dumps(run.figures, separators=(",", ":")), flush=True)
    return 0
