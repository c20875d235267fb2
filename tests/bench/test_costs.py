"""bench.costs: every per-message figure is measured (a positive CPU time) on this tree, and
``--service-root`` runs the same measurement on another tree and prints both."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import costs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent.parent


def test_every_figure_is_measured() -> None:
    with costs._private_redis() as url:
        door = asyncio.run(costs._door(url, 30))
        door |= asyncio.run(costs._door(url, 30, webhooks=True))
        worker = costs.worker_costs(url, 30)
        lifecycle = costs.lifecycle_costs(url, 30)
    assert {"door_send_us", "door_send_redis_us", "door_send_webhooks_us",
            "door_send_list10k_us", "door_send_suppressed_us"} <= door.keys()
    assert {"worker_begin_attempt_us", "worker_record_sent_us"} <= worker.keys()
    assert {"lifecycle_build_us", "script_emit_us", "script_emit_redis_us"} <= lifecycle.keys()
    for figures in (door, worker, lifecycle):
        assert all(value > 0 for key, value in figures.items() if not key.endswith("redis_us"))


def test_two_trees_side_by_side() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.costs", "--messages", "20", "--rounds", "1",
         "--service-root", str(REPO)], cwd=REPO, capture_output=True, text=True, timeout=600,
        check=True)
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[-2:] == ["this", "other"]
    assert any(line.startswith("dkim_rsa2048_us") for line in lines)
    both = json.loads(lines[-1])
    assert both["this"][0].keys() == both["other"][0].keys()
