"""The operator's metrics move with reconciles, and its logs are the service's JSON lines."""

from __future__ import annotations

import copy
import json
import uuid

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .conftest import EXAMPLES, Cluster, Operator, wait_ready


def _value(operator: Operator, name: str, **labels: str) -> float:
    assert operator.metrics is not None
    for family in text_string_to_metric_families(httpx.get(operator.metrics).text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_reconcile_metrics_and_json_logs(cluster: Cluster, operator: Operator) -> None:
    compiled = _value(operator, "email_operator_reconciles_total", outcome="Compiled")
    invalid = _value(operator, "email_operator_reconciles_total", outcome="InvalidMJML")
    ready = _value(operator, "email_operator_templates", ready="true")
    not_ready = _value(operator, "email_operator_templates", ready="false")

    good = yaml.safe_load((EXAMPLES / "welcome.yaml").read_text())
    good["metadata"].update(name=f"metrics-{uuid.uuid4().hex[:6]}", namespace="team-a")
    bad = copy.deepcopy(good)
    bad["metadata"]["name"] = f"broken-{uuid.uuid4().hex[:6]}"
    bad["spec"]["mjml"] = "<mjml><mj-body><mj-section>"
    cluster.create(good)
    cluster.create(bad)
    wait_ready(cluster, "team-a", good["metadata"]["name"], status="True", generation=1)
    wait_ready(cluster, "team-a", bad["metadata"]["name"], status="False", generation=1)

    assert _value(operator, "email_operator_reconciles_total", outcome="Compiled") == compiled + 1
    assert _value(operator, "email_operator_reconciles_total",
                  outcome="InvalidMJML") == invalid + 1
    assert _value(operator, "email_operator_templates", ready="true") == ready + 1
    assert _value(operator, "email_operator_templates", ready="false") == not_ready + 1

    structured = [json.loads(line) for line in operator.output().splitlines()
                  if line.startswith("{")]
    assert any(good["metadata"]["name"] in entry["message"] for entry in structured)
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in structured)
