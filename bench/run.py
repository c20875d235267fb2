"""One benchmark run: what it offers (sizes), what it found (figures, notes, peak RSS) and the
request it sends."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import httpload

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


def token() -> str:
    from mailcore.tokens import mint_token

    return mint_token(SECRET, subject="bench", ttl_seconds=3600)


def run_async(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def pct(values: list[float], q: float) -> float | None:
    return httpload.percentile(sorted(values), q)
