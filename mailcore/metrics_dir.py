"""The folder a command's processes share their Prometheus samples in (multiprocess mode)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def prepare_metrics_dir(role: str) -> Path:
    """Name ``PROMETHEUS_MULTIPROC_DIR`` for the children to inherit, and leave it empty.

    A folder named by the operator is emptied (an earlier run's samples would add to this
    one's); without one, each command gets a private new folder, so two commands on one
    machine (``make dev``, the tests) never empty each other's while their processes write."""
    named = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not named:
        path = Path(tempfile.mkdtemp(prefix=f"email-service-{role}-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
        return path
    path = Path(named)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path
