"""What ``python -m bench`` runs: the full measurement, the smoke check, a profile or a sweep."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import orjson

from . import httpload
from .phases import (
    baseline,
    e2e_http,
    fit_sizes,
    phase_ceilings,
    phase_door_fixed,
    phase_door_half,
    phase_door_saturation,
    phase_drain,
    phase_e2e,
    phase_e2e_batches,
    phase_events,
    phase_floor,
    phase_idle_latency,
    phase_latency,
    phase_propagation,
    phase_relay,
    phase_render,
    service_redis,
)
from .procs import (
    LineProc,
    PostfixSink,
    RecordingSink,
    WaitTimeout,
    drop_queue,
    python_module,
    wait_for,
)
from .run import SEND_BODY, Run, Sizes, ms, pct, run_async
from .service import Service, stopping


def full(run: Run, sizes: Sizes) -> None:
    phase_ceilings(run, sizes)
    phase_render(run)
    redis = service_redis(run)
    smtp_sink = PostfixSink(run.workdir / "smtp-sink.log")
    with stopping(smtp_sink, redis):
        phase_floor(run, redis, smtp_sink)
        service = Service(run, redis)
        try:
            service.start_api(smtp_sink.port)
            phase_door_saturation(run, sizes, service)
            phase_door_half(run, sizes, service)
            service.start_worker(smtp_sink.port)
            phase_drain(run, sizes, service, smtp_sink)
            fit_sizes(run, sizes)
            phase_door_fixed(run, sizes, service)
            phase_e2e(run, sizes, service, smtp_sink)
            phase_e2e_batches(run, sizes, service, smtp_sink)
            phase_events(run, sizes, service, smtp_sink)
            service.stop_worker()
            recorder = RecordingSink(run.workdir / "sink.log")
            with stopping(recorder):
                service.start_worker(recorder.port)
                phase_latency(run, sizes, service, recorder)
                phase_idle_latency(run, service, recorder)
                phase_propagation(run, service, recorder)
                service.stop_worker()
            proxy = LineProc("proxy", python_module(
                "bench.proxy", "--upstream", f"127.0.0.1:{smtp_sink.port}", "--delay", "0.010"))
            with stopping(proxy):
                service.start_worker(proxy.port)
                phase_relay(run, sizes, service, proxy.port, smtp_sink)
                service.stop()
                run.log(f"baseline on loopback: {sizes.baseline_messages} events")
                run.figures["baseline_loopback"] = baseline(
                    run, redis, smtp_sink.port, smtp_sink, sizes.baseline_messages, "b")
                run.log(f"baseline through the proxy: {sizes.baseline_relay_messages} events")
                run.figures["baseline_relay"] = baseline(
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
    redis = service_redis(run)
    sink = RecordingSink(run.workdir / "sink.log")
    with stopping(sink, redis):
        service = Service(run, redis)
        try:
            service.start_api(sink.port, events=False)
            service.start_worker(sink.port)
            result = run_async(httpload.closed_loop("127.0.0.1", service.port,
                                                     service.request(),
                                                     total=run.args.messages, concurrency=8))
            accepted = {orjson.loads(s.body)["id"]: s.end for s in result.ok(202)}
            try:
                wait_for(lambda: all(i in sink.arrivals for i in accepted), timeout=60,
                         message="every accepted message at the sink", interval=0.02)
            except WaitTimeout as exc:
                run.notes.append(f"smoke: {exc}")  # the counts below show what is missing
            else:
                service.wait_idle()  # settled: a second delivery of any message is in by now
            with sink.lock:
                arrived = dict(sink.arrivals)
                received = sink.count
            delivered = [i for i in accepted if i in arrived]
            delays = sorted(arrived[i] - accepted[i] for i in delivered)
            run.figures["smoke"] = {
                "sent": run.args.messages, "accepted": len(accepted),
                "delivered": len(delivered), "lost": run.args.messages - len(delivered),
                "duplicates": received - len(arrived),
                "unexpected": len(arrived.keys() - accepted.keys()),
                "p50_ms": ms(pct(delays, 50)), "p99_ms": ms(pct(delays, 99)),
            }
        finally:
            service.stop()


def profile_mode(run: Run, sizes: Sizes) -> None:
    """py-spy on the ingress and each worker process while wrk saturates the door."""
    from . import profile

    seconds = run.args.profile_seconds
    redis = service_redis(run)
    smtp_sink = PostfixSink(run.workdir / "smtp-sink.log")
    with stopping(smtp_sink, redis):
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
                     message="deliveries under load")
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
                                           "door_p99_ms": ms(door.p99),
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
    redis = service_redis(run)
    smtp_sink = PostfixSink(run.workdir / "smtp-sink.log")
    proxy = LineProc("proxy", python_module(
        "bench.proxy", "--upstream", f"127.0.0.1:{smtp_sink.port}", "--delay", "0.010"))
    results: dict[str, Any] = {}
    with stopping(proxy, smtp_sink, redis):
        service = Service(run, redis)
        try:
            service.start_api(smtp_sink.port, events=False)
            for processes, threads in specs:
                run.args.processes, run.args.threads = processes, threads
                for setting, port, count in (("loopback", smtp_sink.port, 2000),
                                             ("relay", proxy.port, 1500)):
                    run.log(f"sweep {processes}x{threads} {setting}: {count} messages")
                    service.start_worker(port)
                    outcome = e2e_http(service, smtp_sink, count)
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


def door_mode(run: Run, sizes: Sizes) -> None:
    """The door at saturation (wrk, no worker) with each ingress process count of ``--door``,
    in the order given (repeat counts to interleave them), on one Redis and smtp-sink."""
    counts = [int(n) for n in run.args.door.split(",")]
    redis = service_redis(run)
    smtp_sink = PostfixSink(run.workdir / "smtp-sink.log")
    results: dict[str, Any] = {}
    with stopping(smtp_sink, redis):
        for turn, count in enumerate(counts):
            run.args.ingress_processes = count
            service = Service(run, redis)
            try:
                service.start_api(smtp_sink.port, events=False)
                phase_door_saturation(run, sizes, service)
            finally:
                service.stop()
            drop_queue(redis.conn)
            door = run.figures.pop("door_saturation")
            results[f"{count}p_{turn}"] = door
            print(f"{count} ingress process(es): {door['accepted_per_s']:>6} req/s  p50 "
                  f"{door['p50_ms']} ms  p99 {door['p99_ms']} ms  ingress CPU "
                  f"{door['cpu_per_request']['ingress_us']} us/req", flush=True)
    run.figures["door_processes"] = results
