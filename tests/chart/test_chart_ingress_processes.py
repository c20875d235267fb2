"""The chart's ``ingress.processes``: the ingress container runs that many processes, one by
default; the schema refuses counts the command would refuse."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import CHART
from .test_chart import REQUIRED, by_kind, helm, pod_specs, render


def ingress_args(docs: list[dict[str, Any]]) -> list[str]:
    [spec] = [spec for name, spec in pod_specs(docs).items() if name.endswith("-ingress")]
    [container] = spec["containers"]
    return list(container["args"])


def test_one_process_by_default(helm_binary: str) -> None:
    args = ingress_args(render(helm_binary, *REQUIRED))
    assert args[args.index("--processes") + 1] == "1"


def test_processes_reach_the_command(helm_binary: str) -> None:
    args = ingress_args(render(helm_binary, *REQUIRED, "--set", "ingress.processes=4"))
    assert args == ["api", "--host", "0.0.0.0", "--port", "8000", "--processes", "4"]


@pytest.mark.parametrize("value", ["0", "-1", "65", '"two"', "1.5", "true", "[2]"])
def test_the_schema_refuses_bad_counts(helm_binary: str, value: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED,
                  "--set-json", f"ingress.processes={value}", check=False)
    assert result.returncode != 0 and "processes" in result.stderr, result.stderr


def test_accept_coalescing_is_on_unless_turned_off(helm_binary: str) -> None:
    """``ingress.coalesceAccepts`` (ACCEPT_COALESCE, service/coalescer.py): on by default."""
    default = by_kind(render(helm_binary, *REQUIRED), "ConfigMap")["mail-email-service"]["data"]
    assert "ACCEPT_COALESCE" not in default
    off = by_kind(render(helm_binary, *REQUIRED, "--set", "ingress.coalesceAccepts=false"),
                  "ConfigMap")["mail-email-service"]["data"]
    assert off["ACCEPT_COALESCE"] == "false"
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED,
                  "--set-json", 'ingress.coalesceAccepts="no"', check=False)
    assert result.returncode != 0 and "coalesceAccepts" in result.stderr, result.stderr


def test_worker_group_commit_is_on_unless_turned_off(helm_binary: str) -> None:
    """``worker.groupCommit`` (WORKER_GROUP_COMMIT, mailcore/group_commit.py): on by default."""
    default = by_kind(render(helm_binary, *REQUIRED), "ConfigMap")["mail-email-service"]["data"]
    assert "WORKER_GROUP_COMMIT" not in default
    off = by_kind(render(helm_binary, *REQUIRED, "--set", "worker.groupCommit=false"),
                  "ConfigMap")["mail-email-service"]["data"]
    assert off["WORKER_GROUP_COMMIT"] == "false"
    for value in ('"no"', "0", "[true]"):
        result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED,
                      "--set-json", f"worker.groupCommit={value}", check=False)
        assert result.returncode != 0 and "groupCommit" in result.stderr, (value, result.stderr)
