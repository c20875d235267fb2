"""The per-message Python that issue 18's trimming cut, each piece alone (``python -m
bench.trim_costs``): an address checked (new, and written to again), a template's data checked,
an SMTP address quoted, the door's ``queued`` log line at INFO, the Dramatiq signals a worker
emits for one message (before/after processing and acking, through the workers' middleware).
CPU µs per call, one thread.

``--service-root DIR`` runs the same calls on another tree too (e.g. a ``git archive`` of main),
rounds alternating, and prints both trees' medians side by side.

    python -m bench.trim_costs [--calls 20000] [--rounds 3] [--service-root DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
_ORDER = {"order_id": "A1", "customer": {"name": "Ada", "email": "a@example.org", "phone": None},
          "items": [{"product_id": f"p{n}", "name": "Pen", "quantity": 2, "price": 1.5}
                    for n in range(5)], "total": 3, "currency": "EUR"}


def _per_call(step: Callable[[int], object], calls: int) -> float:
    step(-1)
    started = time.process_time()
    for n in range(calls):
        step(n)
    return round((time.process_time() - started) / calls * 1e6, 1)


def _quoteaddr() -> Callable[[str], str]:
    import smtplib

    from mailcore.transports import smtp

    # The tree's own SMTP quoting where it has one (main before issue 18's trim: smtplib's).
    quote: Callable[[str], str] = getattr(smtp, "quoteaddr", smtplib.quoteaddr)
    return quote


def _log_line(calls: int) -> float:
    from mailcore.config import Settings
    from mailcore.logs import configure_logging

    settings = Settings.from_env({"SECRETS_DIR": "/nonexistent", "REDIS_URL": "redis://x",
                                  "SENDER_EMAIL": "noreply@shop.example.com"})
    saved = os.dup(2)
    with open(os.devnull, "w") as sink:  # the handler writes to stderr: to nowhere here
        os.dup2(sink.fileno(), 2)
        try:
            configure_logging(settings.telemetry)
            log = logging.getLogger("email_service.ingress")
            return _per_call(lambda n: log.info("queued", extra={
                "message_id": "6f1c2f7e-0000-4000-8000-000000000000",
                "template": "password_reset", "source": "api"}), calls)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _worker_signals(calls: int) -> float:
    """The four broker signals around one message, through the tree's worker broker and the
    workers' middleware (Dramatiq's defaults but Retries, CurrentMessage, and five of the
    service's own, which handle only boot and shutdown signals)."""
    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.middleware import CurrentMessage, Middleware, Retries, default_middleware

    from workers.broker import make_broker

    class BootOnly(Middleware):
        def after_worker_boot(self, broker: Any, worker: Any) -> None: ...

    middleware = [m() for m in default_middleware if m is not Retries]
    # Five distinct classes, as the service's are (Dramatiq warns of a type added twice).
    middleware += [CurrentMessage(), *(type(f"BootOnly{n}", (BootOnly,), {})() for n in range(5))]
    broker = make_broker("redis://127.0.0.1:1", middleware=middleware)  # never connects

    @dramatiq.actor(broker=broker, queue_name="signals")
    def job() -> None: ...

    message = MessageProxy(job.message())

    def signals(_: int) -> None:
        broker.emit_before("process_message", message)
        broker.emit_after("process_message", message, result=None)
        broker.emit_before("ack", message)
        broker.emit_after("ack", message)

    return _per_call(signals, calls)


def measure(calls: int) -> dict[str, float]:
    from mailcore.addresses import normalize_address
    from mailcore.templates import TemplateRegistry, builtin_templates_dir

    registry = TemplateRegistry.from_dir(builtin_templates_dir())
    reset, order = registry.get("password_reset"), registry.get("order_confirmation")
    assert reset is not None and order is not None
    quoteaddr = _quoteaddr()
    run = time.monotonic_ns()
    return {
        "address_new_us": _per_call(lambda n: normalize_address(f"r{run}-{n}@example.org"),
                                    calls),
        "address_again_us": _per_call(lambda n: normalize_address(f"r{n % 1000}@example.org"),
                                      calls),
        "reset_data_us": _per_call(lambda n: reset.validate_data(
            {"email": f"r{n}@example.org", "code": "123456"}), calls),
        "order_data_5_items_us": _per_call(lambda n: order.validate_data(_ORDER), calls // 4),
        "quoteaddr_sender_us": _per_call(lambda n: quoteaddr("noreply@shop.example.com"),
                                         calls),
        "quoteaddr_new_us": _per_call(lambda n: quoteaddr(f"q{run}-{n}@example.org"), calls),
        "log_queued_info_us": _log_line(calls),
        "worker_signals_per_message_us": _worker_signals(calls),
    }


def _run_in(root: Path, calls: int) -> dict[str, float]:
    code = (f"import runpy, sys; sys.argv = ['trim', '--calls', '{calls}', '--json']; "
            f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')")
    with tempfile.TemporaryFile() as out:
        subprocess.run([sys.executable, "-c", code], cwd=root, check=True, stdout=out,
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=600)
        out.seek(0)
        result: dict[str, float] = json.loads(out.read().decode().strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--service-root", type=Path, help="also measure this tree")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args.calls)))
        return
    trees = {"this": _REPO, **({"other": args.service_root.resolve()}
                               if args.service_root else {})}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, root in trees.items():
            rounds[name].append(_run_in(root, args.calls))
    keys = list(rounds["this"][0])
    width = max(len(key) for key in keys)
    print(f"{'CPU µs per call (median of rounds)':<{width}}  "
          + "  ".join(f"{name:>8}" for name in trees))
    for key in keys:
        print(f"{key:<{width}}  " + "  ".join(
            f"{statistics.median(r[key] for r in rounds[name]):>8.1f}" for name in trees))


if __name__ == "__main__":
    main()
