"""Where the time goes: py-spy on the ingress and the worker processes under load.

``python -m bench --profile`` starts the stack against smtp-sink, saturates the door with wrk
while the workers deliver, and samples every process with ``py-spy record --format raw``
(collapsed stacks, idle threads excluded). It writes the raw files next to the run's logs and
prints, per process, the functions holding the most samples: by *self* time (the frame on top)
and *inclusive* time (anywhere on the stack).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

#: Frames whose inclusive share says something about the design (matched as substrings).
FOCUS = (
    "validate_token", "verify", "jwt", "model_validate", "enqueue", "orjson", "json",
    "to_thread", "run_sync", "ratelimit", "take", "render", "build_envelope", "as_bytes",
    "sendmail", "send", "readline", "getreply", "_consume", "do_fetch", "dispatch", "ack",
    "execute_command", "read_response", "log", "handle", "status", "pydantic", "jsonschema",
    "starlette", "httptools", "uvicorn",
)


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def record(pid: int, out: Path, seconds: float, *, gil: bool = True
           ) -> subprocess.Popen[bytes]:
    """Sample ``pid``; with ``gil`` only threads holding the GIL (a CPU view), otherwise every
    non-idle thread (a wall-clock view, which shows where threads wait)."""
    binary = py_spy()
    if binary is None:
        raise FileNotFoundError("py-spy is not installed (scripts/install-bench-tools.sh)")
    args = [binary, "record", "--format", "raw", "--rate", "100", "--duration",
            str(int(seconds)), "--pid", str(pid), "--output", str(out), "--nonblocking"]
    if gil:
        args.append("--gil")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)".
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    for anchor in ("site-packages", "python3.11"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1:]
            break
    else:
        parts = parts[-2:]
    return f"{name} ({'/'.join(parts)})"


def summarise(raw: Path, top: int = 12) -> tuple[int, list[tuple[str, float]],
                                                  list[tuple[str, float]]]:
    """(samples, top by self %, top by inclusive %) from a py-spy raw file."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f.strip()]
        # The first frame of a raw stack is the thread/process label when py-spy adds one.
        frames = [f for f in frames if "(" in f]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return 0, [], []
    by_self = [(name, 100 * n / total) for name, n in self_time.most_common(top)]
    focused = [(name, n) for name, n in inclusive.most_common()
               if any(key in name.lower() for key in FOCUS)]
    by_incl = [(name, 100 * n / total) for name, n in focused[:top]]
    return total, by_self, by_incl


def report(label: str, raw: Path) -> str:
    total, by_self, by_incl = summarise(raw)
    lines = [f"== {label}: {total} samples ({raw})"]
    lines.append("   self%  function")
    lines += [f"  {pct:6.1f}  {name}" for name, pct in by_self]
    lines.append("   incl%  function (design-relevant frames)")
    lines += [f"  {pct:6.1f}  {name}" for name, pct in by_incl]
    return "\n".join(lines)
