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
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from .modes import door_mode, full, profile_mode, smoke, sweep_mode
from .procs import machine_busy_seconds
from .report import table
from .run import Run, Sizes
from .targets import MISSED, judge


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
    parser.add_argument("--ingress-processes", type=int, default=1,
                        help="ingress processes (`email-service api --processes`, default 1)")
    parser.add_argument("--door", metavar="N,...",
                        help="only the door at saturation, with N ingress processes each time "
                             "(e.g. 1,2,1,2: interleaved)")
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

    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        load_at_start = round(os.getloadavg()[0], 2)
        busy_at_start = machine_busy_seconds()
        run = Run(args=args, workdir=workdir)
        sizes = Sizes()
        mode = (smoke if args.smoke else profile_mode if args.profile
                else sweep_mode if args.sweep else door_mode if args.door else full)
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
        run.figures["verdicts"] = verdicts = judge(run.figures)
        print(table(run))
        for note in run.notes:
            print(f"note: {note}")
        print(json.dumps(run.figures, separators=(",", ":")), flush=True)
    # The smoke check fails the command when the pipeline lost, doubled or invented a message;
    # a full run only reports (its figures depend on the machine).
    smoke_failed = any(verdict == MISSED for figure, verdict in verdicts.items()
                       if figure.startswith("smoke."))
    return 1 if smoke_failed else 0
