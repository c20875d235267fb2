"""The table a run prints: every figure, and against its target (bench/targets.py) a verdict."""

from __future__ import annotations

import os
from typing import Any

from .run import BATCH_SIZE, Run
from .targets import target_for


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"
    elif isinstance(value, int):
        value = f"{value:,}"
    return f"{value}{unit}"


def _figure(figures: dict[str, Any], path: str) -> float | None:
    value: Any = figures
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def table(run: Run) -> str:
    f = run.figures
    rows: list[tuple[str, str, str, str]] = []

    def add(label: str, value: str, figure: str = "") -> None:
        """One row; with ``figure``, its target and verdict (bench/targets.py) beside it."""
        target = target_for(figure) if figure else None
        if target is None:
            rows.append((label, value, "", ""))
        else:
            rows.append((label, value, target.text, target.verdict(_figure(f, figure))))

    if "smoke" in f:
        s = f["smoke"]
        add("smoke: sent / accepted / delivered",
            f"{s['sent']} / {s['accepted']} / {s['delivered']}")
        add("smoke: sent but not delivered", _fmt(s["lost"]), "smoke.lost")
        add("smoke: delivered twice", _fmt(s["duplicates"]), "smoke.duplicates")
        add("smoke: delivered but never accepted", _fmt(s["unexpected"]), "smoke.unexpected")
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
        add("door at saturation: accepted req/s", _fmt(d["accepted_per_s"]))
        if "door_vs_bare" in f:
            add("door at saturation / a bare uvicorn+Starlette process",
                f"{f['door_vs_bare']:.2f}x", "door_vs_bare")
        add("door at saturation: p50 / p99", f"{_fmt(d['p50_ms'])} / {_fmt(d['p99_ms'])} ms")
    if "door_half_saturation" in f:
        d = f["door_half_saturation"]
        add(f"door at half saturation ({d['rate']:g} req/s, no worker): p50 / p99",
            f"{_fmt(d['p50_ms'])} / {_fmt(d['p99_ms'])} ms", "door_half_saturation.p99_ms")
    if "door_fixed_rate" in f:
        d = f["door_fixed_rate"]
        add(f"door at {d['rate']:g} req/s, workers delivering: p50 / p99",
            f"{_fmt(d['p50_ms'])} / {_fmt(d['p99_ms'])} ms")
    if "e2e_loopback" in f:
        e = f["e2e_loopback"]
        add(f"delivered end to end, HTTP, loopback ({e['messages']:,} msgs)",
            _fmt(e["delivered_per_s"], " /s"), "e2e_loopback.delivered_per_s")
    if "e2e_batches" in f:
        e = f["e2e_batches"]
        add(f"delivered end to end, HTTP batches of {BATCH_SIZE} ({e['messages']:,} msgs)",
            _fmt(e["delivered_per_s"], " /s"), "e2e_batches.delivered_per_s")
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
            add("CPU per delivered msg, whole stack", _fmt(cpu["stack_us"], " us"),
                "e2e_loopback.cpu_per_message.stack_us")
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
            f"{_fmt(lat['p50_ms'])} / {_fmt(lat['p99_ms'])} ms", "latency_fixed_rate.p99_ms")
    if "latency_idle" in f:
        lat = f["latency_idle"]
        add(f"accepted->delivered, lone message after {lat['idle_s']:g} s idle: p50 / max",
            f"{_fmt(lat['p50_ms'])} / {_fmt(lat['max_ms'])} ms", "latency_idle.p50_ms")
    if "render_builtin_us" in f:
        for name, cost in f["render_builtin_us"].items():
            add(f"render {name}: compiled best / median; per-message compile",
                f"{_fmt(cost['compiled_best'])} / {_fmt(cost['compiled'])}; "
                f"{_fmt(cost['per_message_compile'])} us",
                f"render_builtin_us.{name}.compiled_best")
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
            _fmt(e["delivered_per_s"], " /s"), "e2e_relay.delivered_per_s")
    if "baseline_loopback" in f:
        add("baseline (1 thread, new SMTP conn/email), loopback",
            _fmt(f["baseline_loopback"]["delivered_per_s"], " /s"))
        add("baseline through 20 ms relay", _fmt(f["baseline_relay"]["delivered_per_s"], " /s"))
        add("ours/baseline, loopback (HTTP / events)",
            f"{_fmt(f['ratio_loopback'])}x / {_fmt(f['ratio_loopback_events'])}x")
        add("ours/baseline, 20 ms relay", f"{_fmt(f['ratio_relay'])}x", "ratio_relay")
    if "propagation_ms" in f:
        add("template change propagation", _fmt(f["propagation_ms"], " ms"), "propagation_ms")
    rss = run.rss
    if rss:
        add("peak RSS: worker processes (each)",
            ", ".join(f"{v:.1f}" for v in rss.get("worker_processes_mb", [])) + " MB",
            "rss_mb.worker_process_max_mb")
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
