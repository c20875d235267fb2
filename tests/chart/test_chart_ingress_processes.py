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


@pytest.mark.parametrize(("value", "variable"), [
    ("ingress.coalesceAccepts", "ACCEPT_COALESCE"),  # service/coalescer.py
    ("worker.groupCommit", "WORKER_GROUP_COMMIT"),  # mailcore/group_commit.py
])
def test_group_commit_is_on_unless_turned_off(helm_binary: str, value: str,
                                              variable: str) -> None:
    default = by_kind(render(helm_binary, *REQUIRED), "ConfigMap")["mail-email-service"]["data"]
    assert variable not in default
    off = by_kind(render(helm_binary, *REQUIRED, "--set", f"{value}=false"),
                  "ConfigMap")["mail-email-service"]["data"]
    assert off[variable] == "false"
    for bad in ('"no"', "0", "[true]"):
        result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED,
                      "--set-json", f"{value}={bad}", check=False)
        name = value.rpartition(".")[2]
        assert result.returncode != 0 and name in result.stderr, (bad, result.stderr)
