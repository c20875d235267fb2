"""The chart's delivery streams: one worker Deployment per stream, each consuming only its
stream's queue, with its own replicas, resources and autoscaling (rendered by the real helm)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import CHART
from .test_chart import KUBERNETES_VERSIONS, REQUIRED, by_kind, helm, render

WORKER, BULK = "mail-email-service-worker", "mail-email-service-worker-bulk"


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return found


def streams_of(deployment: dict[str, Any]) -> str:
    env = {item["name"]: item.get("value") for item in container(deployment)["env"]}
    return str(env["WORKER_STREAMS"])


def test_a_transactional_and_a_bulk_worker_deployment_by_default(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED)
    deployments = by_kind(docs, "Deployment")
    assert streams_of(deployments[WORKER]) == "transactional"
    assert streams_of(deployments[BULK]) == "bulk"
    selectors = [deployments[name]["spec"]["selector"]["matchLabels"] for name in (WORKER, BULK)]
    assert selectors[0] != selectors[1]  # no Deployment adopts the other's pods
    for name, selector in zip((WORKER, BULK), selectors, strict=True):
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        assert not selector.items() <= deployments[
            BULK if name == WORKER else WORKER]["spec"]["template"]["metadata"]["labels"].items()
    # The bulk entry overrides threads and requests; the rest comes from worker.*.
    assert container(deployments[BULK])["args"][-1] == "16"
    assert container(deployments[WORKER])["args"][-1] == "24"
    assert container(deployments[BULK])["resources"]["requests"]["cpu"] == "100m"
    assert container(deployments[BULK])["resources"]["limits"] == container(
        deployments[WORKER])["resources"]["limits"]
    scalers = by_kind(docs, "HorizontalPodAutoscaler")
    assert {name: (s["spec"]["minReplicas"], s["spec"]["maxReplicas"])
            for name, s in scalers.items()} == {WORKER: (2, 10), BULK: (1, 5)}
    assert all(s["spec"]["scaleTargetRef"]["name"] == name for name, s in scalers.items())


def test_keda_scales_each_stream_on_its_own_queue(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "worker.keda.enabled=true",
                  "--set", "config.extraEnv.BULK_QUEUE_NAME=campaigns")
    scaled = by_kind(docs, "ScaledObject")
    lists = {name: s["spec"]["triggers"][0]["metadata"]["listName"] for name, s in scaled.items()}
    assert lists == {WORKER: "dramatiq:email", BULK: "dramatiq:campaigns"}
    assert scaled[BULK]["spec"]["minReplicaCount"] == 0
    assert not by_kind(docs, "HorizontalPodAutoscaler")


def test_fixed_replicas_per_stream_and_a_pdb_only_where_more_than_one_runs(
        helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "worker.autoscaling.enabled=false",
                  "--set", "worker.replicas=3", "--set", "worker.streams.bulk.replicas=1")
    deployments = by_kind(docs, "Deployment")
    assert (deployments[WORKER]["spec"]["replicas"], deployments[BULK]["spec"]["replicas"]) == (
        3, 1)
    budgets = by_kind(docs, "PodDisruptionBudget")
    assert WORKER in budgets and BULK not in budgets


def test_without_the_bulk_entry_there_is_one_worker_deployment(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "worker.streams.bulk=null",
                  "--set", "networkPolicy.enabled=true",
                  "--set", "metrics.serviceMonitor.enabled=true")
    assert [name for name in by_kind(docs, "Deployment") if "worker" in name] == [WORKER]
    assert set(by_kind(docs, "PodMonitor")) == {WORKER, "mail-email-service-operator"}


def test_network_policy_and_monitoring_cover_every_stream_s_workers(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "networkPolicy.enabled=true",
                  "--set", "metrics.serviceMonitor.enabled=true")
    internal = by_kind(docs, "NetworkPolicy")["mail-email-service-internal"]
    expression = internal["spec"]["podSelector"]["matchExpressions"][1]
    assert set(expression["values"]) == {"worker", "worker-bulk", "operator", "webhooks"}
    assert {WORKER, BULK} <= set(by_kind(docs, "PodMonitor"))
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            if doc["kind"] in {"Deployment", "NetworkPolicy", "HorizontalPodAutoscaler"}:
                kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(("setting", "complaint"), [
    ("worker.streams.marketing.replicas=1", "additional properties 'marketing' not allowed"),
    ("worker.streams.bulk.threads=lots", "/worker/streams/bulk/threads"),
    ("worker.streams.bulk.colour=blue", "additional properties 'colour' not allowed"),
    ("worker.streams.bulk.autoscaling.maxReplicas=0", "/worker/streams/bulk/autoscaling"),
])
def test_the_schema_refuses_unknown_streams_and_wrong_values(helm_binary: str, setting: str,
                                                              complaint: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED, "--set", setting,
                  check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_the_crd_names_the_streams_a_template_may_default_to() -> None:
    crd = yaml.safe_load((CHART / "crds" / "emailtemplates.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["stream"]["enum"] == ["transactional", "bulk"]


def test_a_bulk_backlog_has_its_own_alert(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "metrics.prometheusRule.enabled=true",
                  "--set", "config.extraEnv.BULK_QUEUE_NAME=campaigns")
    rules = {r["alert"]: r for group in by_kind(docs, "PrometheusRule")["mail-email-service"][
        "spec"]["groups"] for r in group["rules"]}
    assert 'queue!="campaigns"' in rules["EmailQueueFallingBehind"]["expr"]
    assert 'queue="campaigns"' in rules["EmailBulkQueueFallingBehind"]["expr"]
    without = render(helm_binary, *REQUIRED, "--set", "metrics.prometheusRule.enabled=true",
                     "--set", "worker.streams.bulk=null")
    names = {r["alert"] for group in by_kind(without, "PrometheusRule")["mail-email-service"][
        "spec"]["groups"] for r in group["rules"]}
    assert "EmailBulkQueueFallingBehind" not in names and "EmailQueueFallingBehind" in names
