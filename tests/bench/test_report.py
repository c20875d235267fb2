"""The table of a full run: every row renders, and each target's verdict comes from the table
of targets (met, missed, or '-' when the figure was not measured)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.report import table
from bench.run import Run
from bench.targets import MET, MISSED, TARGETS, judge

CPU = {"ingress_us": 700, "workers_us": 1000, "redis_us": 200, "sink_us": 100, "stack_us": 2000}


def full_figures() -> dict[str, Any]:
    """The figures of a full run, shaped as bench/phases.py writes them."""
    e2e = {"messages": 1000, "seconds": 1.0, "delivered_per_s": 800.0, "accept_per_s": 900.0,
           "refused": 0, "cpu_per_message": CPU}
    return {
        "wrk_ceiling_rps": 90000, "asyncio_client_ceiling_rps": 50000,
        "smtp_sink_ceiling_msgs_per_s": 17000, "recording_sink_ceiling_msgs_per_s": 9000,
        "bare_framework": {"accepted_per_s": 9000, "cpu_per_request_us": 110},
        "bare_framework_redis": {"accepted_per_s": 2900, "cpu_per_request_us": 335},
        "door_saturation": {"accepted_per_s": 1400, "p50_ms": 40.0, "p99_ms": 90.0,
                            "cpu_per_request": {"ingress_us": 700, "redis_us": 150}},
        "door_vs_bare": 0.156,
        "door_half_saturation": {"rate": 700.0, "p50_ms": 3.0, "p99_ms": 19.5},
        "door_fixed_rate": {"rate": 1000.0, "p50_ms": 30.0, "p99_ms": 400.0},
        "e2e_loopback": e2e, "e2e_batches": e2e, "e2e_events_loopback": e2e, "e2e_relay": e2e,
        "delivery_floor_cpu_us": {"begin_attempt_us": 150, "deliver_us": 500,
                                  "record_sent_us": 150, "whole_us": 800},
        "worker_drain_msgs_per_s": 1100,
        "latency_fixed_rate": {"rate": 200.0, "p50_ms": 6.0, "p99_ms": 120.0},
        "latency_idle": {"idle_s": 1.5, "p50_ms": 10.0, "max_ms": 60.0},
        "render_builtin_us": {"password_reset": {"compiled": 17.0, "compiled_best": 16.0,
                                                 "per_message_compile": 9000},
                              "order_confirmation": {"compiled": 60.0, "compiled_best": 55.0,
                                                     "per_message_compile": 12000}},
        "worker_cpu_breakdown_us": {"render_us": 30, "mime_build_us": 65,
                                    "mime_serialise_us": 20},
        "render_realworld_us": {"templates": 18, "compiled_median": 11.0, "compiled_max": 40.0,
                                "per_message_compile_median": 7000,
                                "per_message_compile_max": 20000},
        "baseline_loopback": {"delivered_per_s": 300.0}, "baseline_relay": {"delivered_per_s": 7.0},
        "ratio_loopback": 2.7, "ratio_loopback_events": 2.9, "ratio_relay": 80.0,
        "propagation_ms": None,
        "machine": {"cpus": 2, "loadavg_1m_at_start": 0.5, "busy_cores_during_run": 1.9},
        "config": {"redis": "aof-appendfsync-always"},
    }


def test_a_full_run_renders_with_verdicts_from_the_targets(tmp_path: Path) -> None:
    run = Run(args=argparse.Namespace(), workdir=tmp_path)
    run.figures = full_figures()
    run.rss = {"worker_process_max_mb": 61.0, "worker_processes_mb": [61.0, 60.0],
               "worker_parent_mb": 40.0, "ingress_mb": 70.0, "redis_mb": 13.0}
    run.figures["rss_mb"] = run.rss
    rows = {line.split("  ")[0]: line for line in table(run).splitlines()[2:]}
    assert len(rows) > 25
    assert rows["door at saturation / a bare uvicorn+Starlette process"].rstrip().endswith(MISSED)
    assert "0.16x" in rows["door at saturation / a bare uvicorn+Starlette process"]
    assert rows["door at half saturation (700 req/s, no worker): p50 / p99"
                ].rstrip().endswith(MET)  # 19.5 < 20
    assert rows["door at 1000 req/s, workers delivering: p50 / p99"].rstrip().endswith("400.0 ms")
    assert rows["CPU per delivered msg, whole stack"].rstrip().endswith(MISSED)  # 2000 > 1300
    assert rows["accepted->delivered, lone message after 1.5 s idle: p50 / max"
                ].rstrip().endswith(MET)
    assert rows["render order_confirmation: compiled best / median; per-message compile"
                ].rstrip().endswith(MISSED)  # 55 > 50
    assert rows["template change propagation"].rstrip().endswith("-")  # not measured
    verdicts = judge(run.figures)
    assert verdicts["ratio_relay"] == MET
    assert verdicts["render_builtin_us.password_reset.compiled_best"] == MET
    # Every target except the smoke's and the unmeasured propagation is judged in a full run.
    judged = {target.figure.split(".")[0] for target in TARGETS} - {"smoke", "propagation_ms"}
    assert judged <= {path.split(".")[0] for path in verdicts}
