"""The measurements, one function each: every phase offers load, reads what it needs off the
processes and writes its figures into the run."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import orjson

from mailcore.store import TemplateStoreWriter
from mailcore.templates import builtin_templates_dir, load_template_dir

from . import floor, httpload, render, smtpblast
from .procs import (
    LineProc,
    PostfixSink,
    RecordingSink,
    RedisServer,
    cpu_seconds,
    drop_queue,
    peak_rss_mb,
    python_module,
    wait_for,
)
from .run import BATCH_SIZE, SEND_BODY, Run, Sizes, ms, pct, run_async
from .service import CpuMeter, Service, stopping


def service_redis(run: Run) -> RedisServer:
    """The service's Redis: durable like the chart's (AOF, fsync on every write), unless
    ``--volatile-redis`` asks for the in-memory Redis earlier sessions measured with."""
    aof_dir = None if run.args.volatile_redis else run.workdir / "redis-data"
    if aof_dir is not None:
        aof_dir.mkdir(exist_ok=True)
    return RedisServer(run.workdir / "redis.log", aof_dir=aof_dir)


def phase_ceilings(run: Run, sizes: Sizes) -> None:
    run.log("load generator and sink ceilings")
    stub = LineProc("stub-http", python_module("bench.stub_http"))
    with stopping(stub):
        request = httpload.post_request("127.0.0.1", stub.port, "/v1/messages", SEND_BODY, "x")
        if httpload.have_wrk():
            result = httpload.run_wrk(f"http://127.0.0.1:{stub.port}/v1/messages",
                                      body=SEND_BODY, token="x",  # noqa: S106
                                      duration=sizes.ceiling_seconds, connections=64)
            run.figures["wrk_ceiling_rps"] = round(result.accepted_per_s)
        client = run_async(httpload.closed_loop("127.0.0.1", stub.port, request,
                                                 duration=sizes.ceiling_seconds, concurrency=64))
        run.figures["asyncio_client_ceiling_rps"] = round(len(client.samples) / client.wall)
    if httpload.have_wrk():
        _bare_framework_ceiling(run, sizes)
    sinks: list[tuple[str, Callable[[], Any]]] = [("recording_sink", RecordingSink)]
    if not run.args.smoke:
        sinks.insert(0, ("smtp_sink", PostfixSink))
    for name, factory in sinks:
        sink = factory()
        with stopping(sink):
            rate = run_async(smtpblast.blast("127.0.0.1", sink.port,
                                              total=sizes.blast_messages, connections=8))
        run.figures[f"{name}_ceiling_msgs_per_s"] = round(rate)


def _bare_framework_ceiling(run: Run, sizes: Sizes) -> None:
    """One uvicorn + Starlette process that does no work, then one that only makes a Redis
    round trip per request: what any one ingress process tops at, and any that records what
    it accepts."""
    redis = RedisServer(run.workdir / "bare-redis.log")
    with stopping(redis):
        for key, extra in (("bare_framework", []), ("bare_framework_redis", ["--redis",
                                                                          redis.url])):
            bare = LineProc("bare-app", python_module("bench.bare_app", *extra))
            with stopping(bare):
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
        "p50_ms": ms(result.p50), "p99_ms": ms(result.p99),
        "non_2xx": result.non_2xx, "socket_errors": result.errors, "connections": 64,
        "cpu_per_request": meter.per(result.requests - result.non_2xx, result.duration),
    }


def phase_door_half(run: Run, sizes: Sizes, service: Service) -> None:
    """Open-loop load at half the rate the door just saturated at, still without workers:
    the latency a door sized with 2x headroom gives (issue 18's target)."""
    saturation = run.figures["door_saturation"]["accepted_per_s"]
    rate = max(10.0, round(saturation / 2))
    run.log(f"door at half its saturation rate: {rate:g} req/s (no worker)")
    result = run_async(httpload.open_loop("127.0.0.1", service.port, service.request(),
                                           rate=rate, duration=sizes.fixed_seconds))
    latencies = result.latencies()
    run.figures["door_half_saturation"] = {
        "rate": rate, "sent": len(result.samples) + result.errors,
        "accepted": len(result.ok(202)), "errors": result.errors,
        "p50_ms": ms(pct(latencies, 50)), "p99_ms": ms(pct(latencies, 99)),
        "max_ms": ms(latencies[-1] if latencies else None),
    }
    bare = run.figures.get("bare_framework")
    if bare and bare.get("accepted_per_s"):
        run.figures["door_vs_bare"] = round(saturation / bare["accepted_per_s"], 3)


def _sink_count_rate(sink: PostfixSink, window: float) -> float:
    """Deliveries per second counted by smtp-sink over ``window`` seconds."""
    first, t0 = sink.count, time.monotonic()
    deadline = t0 + window
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return (sink.count - first) / (time.monotonic() - t0)


def phase_drain(run: Run, sizes: Sizes, service: Service, sink: PostfixSink) -> None:
    backlog = service.redis.conn.llen("dramatiq:email")
    run.log(f"worker drain rate on a pre-filled queue ({backlog} waiting)")
    if backlog < 2000:
        run.figures["worker_drain_msgs_per_s"] = None
        return
    # Let the workers reach steady state, then count over the window.
    start = sink.count
    wait_for(lambda: sink.count - start >= 300, timeout=30, message="first deliveries")
    meter = CpuMeter(service, sink).start()
    first = sink.count
    rate = _sink_count_rate(sink, sizes.drain_window)
    run.figures["worker_drain_msgs_per_s"] = round(rate)
    run.figures["worker_drain_cpu_per_message"] = meter.per(sink.count - first,
                                                            sizes.drain_window)
    service.record_rss()
    drop_queue(service.redis.conn)
    service.wait_idle()


def phase_door_fixed(run: Run, sizes: Sizes, service: Service) -> None:
    run.log(f"door at a fixed {sizes.fixed_rate:g} req/s with workers delivering")
    result = run_async(httpload.open_loop("127.0.0.1", service.port, service.request(),
                                           rate=sizes.fixed_rate, duration=sizes.fixed_seconds))
    latencies = result.latencies()
    run.figures["door_fixed_rate"] = {
        "rate": sizes.fixed_rate, "sent": len(result.samples) + result.errors,
        "accepted": len(result.ok(202)), "errors": result.errors,
        "p50_ms": ms(pct(latencies, 50)), "p99_ms": ms(pct(latencies, 99)),
        "max_ms": ms(latencies[-1] if latencies else None),
    }
    service.record_rss()
    service.wait_idle()


def e2e_http(service: Service, sink: PostfixSink, total: int, concurrency: int = 64, *,
              per_request: int = 1) -> dict[str, Any]:
    """``total`` messages through the HTTP API (``per_request`` > 1: batches), timed from the
    first accept to the sink's last message; the accept rate is from first to last answer."""
    base = sink.count
    meter = CpuMeter(service, sink).start()
    request = service.batch_request() if per_request > 1 else service.request()
    result = run_async(httpload.closed_loop("127.0.0.1", service.port, request,
                                             total=max(1, total // per_request),
                                             concurrency=concurrency))
    accepted = result.ok(202)
    messages = len(accepted) * per_request
    first_accept = min(s.end for s in accepted)
    accept_window = max(s.end for s in accepted) - first_accept
    wait_for(lambda: sink.count - base >= messages, timeout=300,
             message=f"{messages} deliveries", interval=0.005)
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
    run.figures["e2e_loopback"] = e2e_http(service, sink, sizes.e2e_messages)
    service.wait_idle()


def phase_e2e_batches(run: Run, sizes: Sizes, service: Service, sink: PostfixSink) -> None:
    run.log(f"end to end over HTTP in batches of {BATCH_SIZE}: {sizes.batch_messages} messages")
    run.figures["e2e_batches"] = e2e_http(service, sink, sizes.batch_messages, concurrency=4,
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
    started = _publish_events(service.redis.conn, sizes.event_messages, "e")
    wait_for(lambda: sink.count - base >= sizes.event_messages, timeout=300,
             message="event deliveries", interval=0.005)
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
    result = run_async(httpload.open_loop("127.0.0.1", service.port, service.request(),
                                           rate=sizes.latency_rate,
                                           duration=sizes.latency_seconds))
    accepted = {orjson.loads(s.body)["id"]: s.end for s in result.ok(202)}
    wait_for(lambda: all(i in sink.arrivals for i in accepted), timeout=120,
             message="every accepted message at the sink", interval=0.02)
    with sink.lock:
        delays = sorted(sink.arrivals[i] - t for i, t in accepted.items())
    door = result.latencies()
    run.figures["latency_fixed_rate"] = {
        "rate": sizes.latency_rate, "messages": len(accepted),
        "p50_ms": ms(pct(delays, 50)), "p99_ms": ms(pct(delays, 99)),
        "max_ms": ms(delays[-1] if delays else None),
        "door_p99_ms": ms(pct(door, 99)),
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
            wait_for(functools.partial(sink.arrivals.__contains__, message_id), timeout=30,
                     message="the lone message at the sink", interval=0.001)
            with sink.lock:
                delays.append(sink.arrivals[message_id] - accepted_at)
    delays.sort()
    run.figures["latency_idle"] = {"messages": count, "idle_s": gap,
                                   "p50_ms": ms(pct(delays, 50)), "max_ms": ms(delays[-1])}


def phase_relay(run: Run, sizes: Sizes, service: Service, proxy_port: int,
                sink: PostfixSink) -> None:
    run.log(f"end to end through the 10 ms/direction proxy: {sizes.relay_messages} messages")
    run.figures["e2e_relay"] = e2e_http(service, sink, sizes.relay_messages)
    service.wait_idle(timeout=120)


def baseline(run: Run, redis: RedisServer, smtp_port: int, sink: PostfixSink, count: int,
              tag: str) -> dict[str, Any]:
    proc = LineProc("baseline", python_module(
        "bench.baseline", "--redis", redis.url, "--smtp", f"127.0.0.1:{smtp_port}"),
        log=run.workdir / "baseline.log")
    with stopping(proc):
        base = sink.count
        started = _publish_events(redis.conn, count, tag)
        wait_for(lambda: sink.count - base >= count, timeout=120, message="baseline deliveries",
                 interval=0.005)
        elapsed = sink.changed_at - started
        run.note_rss("baseline_mb", peak_rss_mb(proc.pid))
    return {"messages": count, "seconds": round(elapsed, 3),
            "delivered_per_s": round(count / elapsed, 1)}


def phase_propagation(run: Run, service: Service, sink: RecordingSink) -> None:
    """Store update -> first delivered email rendered from the new version, under steady load."""
    run.log("template change propagation (store update under 100 msg/s)")
    source = load_template_dir(builtin_templates_dir() / "password_reset")
    changed = dataclasses.replace(source, subject=f"{source.subject} {RecordingSink.MARKER}")
    writer = TemplateStoreWriter(service.redis.conn, "email-service")
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
        run_async(load_with_update())
        try:
            first = wait_for(lambda: min(sink.marked, default=0.0), timeout=30,
                             message="an email rendered from the updated template")
        except TimeoutError as exc:
            run.figures["propagation_ms"] = None
            run.notes.append(f"propagation_ms: null - {exc}")
        else:
            run.figures["propagation_ms"] = ms(first - updated_at[0])
    finally:
        writer.delete(key)
    service.wait_idle()


def fit_sizes(run: Run, sizes: Sizes) -> None:
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
