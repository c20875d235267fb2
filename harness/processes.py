"""Processes started in their own session, so stopping one ends exactly what it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

#: The checkout: where service processes run from.
REPO = Path(__file__).resolve().parent.parent


def stop_group(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM the process group of ``process`` (started with ``start_new_session``), SIGKILL it
    after ``timeout`` seconds, and make sure no child lingers; return the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    # Children (e.g. Dramatiq's worker processes) share the group and may outlive the parent.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode
