"""The chart's Redis Sentinel option, rendered by the real helm: an existing Sentinel setup, or a
bundled primary/replica/sentinel set; what it renders is valid for the Kubernetes API, hardened,
and read by the service's own settings code without complaint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from mailcore.config import Settings

from .test_chart import (
    CRD_KINDS,
    KUBERNETES_VERSIONS,
    REQUIRED,
    by_kind,
    helm,
    pod_specs,
    projected_files,
    render,
)

CHART_ARGS = ("template", "mail", "charts/email-service", "--namespace", "email")
BUNDLED = (*REQUIRED, "--set", "redis.sentinel.enabled=true")
EXTERNAL = (REQUIRED[0], REQUIRED[1], "--set", "redis.bundled=false",
            "--set", "redis.sentinel.enabled=true",
            "--set", "redis.sentinel.hosts={s0.redis.svc:26379,10.0.0.9:26380,[fd00::5]:26379}",
            "--set", "redis.sentinel.masterName=mail-primary",
            "--set", "redis.sentinel.password=sentinel-pw", "--set", "redis.password=data-pw")


def config_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = by_kind(docs, "ConfigMap")["mail-email-service"]["data"]
    return data


def valid(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


def settings_from(config: dict[str, str], tmp_path: Path) -> Settings:
    """What a pod's process reads: the ConfigMap's variables and its secret files."""
    for name in ("redis_password", "redis_sentinel_password"):
        (tmp_path / name).write_text("from-a-file\n")
    return Settings.from_env({**config, "SECRETS_DIR": str(tmp_path), "JWT_SECRET": "x" * 32})


def test_bundled_set_primary_replicas_and_sentinels(helm_binary: str, tmp_path: Path) -> None:
    docs = render(helm_binary, *BUNDLED)
    valid(docs)
    sets = by_kind(docs, "StatefulSet")
    assert list(sets) == ["mail-email-service-redis"]
    redis_set = sets["mail-email-service-redis"]
    assert redis_set["spec"]["replicas"] == 3
    assert redis_set["spec"]["serviceName"] == "mail-email-service-redis-headless"
    spec = redis_set["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["redis", "sentinel"]
    for container in spec["containers"]:  # hardened and probed like every pod of the chart
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(container)
        assert "redis_password" in str(container["readinessProbe"])  # the file, not the value
        assert container["resources"]["limits"]
    assert "redis-pw-1" not in str(redis_set)  # the password never sits in the pod spec
    headless = by_kind(docs, "Service")["mail-email-service-redis-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert "mail-email-service-redis" in by_kind(docs, "PodDisruptionBudget")
    scripts = by_kind(docs, "ConfigMap")["mail-email-service-redis-scripts"]["data"]
    assert "sentinel monitor mymaster $PRIMARY 6379 2" in scripts["sentinel.sh"]
    assert "--replicaof" in scripts["redis.sh"]

    config = config_of(docs)
    assert "REDIS_HOST" not in config and "REDIS_PORT" not in config
    sentinels = settings_from(config, tmp_path).redis.sentinel
    assert sentinels is not None
    assert [host for host, _ in sentinels.sentinels] == [
        f"mail-email-service-redis-{i}.mail-email-service-redis-headless.email.svc"
        for i in range(3)]
    assert sentinels.sentinel_password == sentinels.password == "from-a-file"
    # Each process reads the sentinels' password (the Redis password) from its own file.
    for name in ("ingress", "worker", "operator"):
        files = projected_files(pod_specs(docs)[f"mail-email-service-{name}"])
        assert files["redis_sentinel_password"] == files["redis_password"]
    policy = by_kind(docs, "NetworkPolicy")["mail-email-service-redis"]
    assert {"port": "sentinel", "protocol": "TCP"} in policy["spec"]["ingress"][0]["ports"]


def test_an_existing_sentinel_setup(helm_binary: str, tmp_path: Path) -> None:
    docs = render(helm_binary, *EXTERNAL)
    valid(docs)
    assert not by_kind(docs, "StatefulSet")
    config = config_of(docs)
    assert config["REDIS_SENTINELS"] == "s0.redis.svc:26379,10.0.0.9:26380,[fd00::5]:26379"
    assert config["REDIS_SENTINEL_MASTER"] == "mail-primary"
    sentinels = settings_from(config, tmp_path).redis.sentinel
    assert sentinels is not None and sentinels.master == "mail-primary"
    assert sentinels.sentinels[2] == ("fd00::5", 26379)
    secret = by_kind(docs, "Secret")["mail-email-service"]
    assert {"redis_password", "redis_sentinel_password"} <= set(secret["data"])
    worker = projected_files(pod_specs(docs)["mail-email-service-worker"])
    assert worker["redis_sentinel_password"] == ("mail-email-service", "redis_sentinel_password")


def test_an_existing_sentinel_password_secret_is_referenced(helm_binary: str) -> None:
    docs = render(helm_binary, REQUIRED[0], REQUIRED[1], "--set", "redis.bundled=false",
                  "--set", "redis.sentinel.enabled=true",
                  "--set", "redis.sentinel.hosts={s0:26379}",
                  "--set", "redis.sentinel.existingSecret=ops-sentinel",
                  "--set", "redis.sentinel.existingSecretKey=pw")
    worker = projected_files(pod_specs(docs)["mail-email-service-worker"])
    assert worker == {"redis_sentinel_password": ("ops-sentinel", "pw")}
    assert "redis_sentinel_password" not in str(by_kind(docs, "Secret"))


def test_keda_scales_on_the_queue_behind_sentinel(helm_binary: str) -> None:
    docs = render(helm_binary, *BUNDLED, "--set", "worker.keda.enabled=true")
    scaled = by_kind(docs, "ScaledObject")["mail-email-service-worker"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-sentinel"
    assert trigger["metadata"]["sentinelMaster"] == "mymaster"
    assert trigger["metadata"]["addresses"].count(":26379") == 3
    auth = by_kind(docs, "TriggerAuthentication")["mail-email-service-worker"]
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {
        "password", "sentinelPassword"}


def test_wait_replicas_reaches_the_ingress(helm_binary: str) -> None:
    docs = render(helm_binary, *BUNDLED, "--set", "redis.waitReplicas=1",
                  "--set", "redis.waitTimeoutMilliseconds=250")
    config = config_of(docs)
    assert (config["REDIS_WAIT_REPLICAS"], config["REDIS_WAIT_TIMEOUT_MS"]) == ("1", "250")
    assert "REDIS_WAIT_REPLICAS" not in config_of(render(helm_binary, *BUNDLED))


@pytest.mark.parametrize(("settings", "message"), [
    (["redis.bundled=false", "redis.sentinel.enabled=true"], "redis.sentinel.hosts is required"),
    (["redis.sentinel.hosts={sentinel}"], "/redis/sentinel/hosts/0"),
    (["redis.sentinel.hosts={a:1,a:1}"], "items at 0 and 1 are equal"),
    (["redis.sentinel.masterName=my master"], "/redis/sentinel/masterName"),
    (["redis.sentinel.nodes=1"], "minimum: got 1, want 2"),
    (["redis.sentinel.unknown=1"], "additional properties 'unknown' not allowed"),
    (["redis.waitReplicas=-1"], "/redis/waitReplicas': minimum: got -1, want 0"),
], ids=["no-hosts", "no-port", "duplicate", "master-name", "one-node", "unknown-key",
        "negative-wait"])
def test_wrong_sentinel_values_are_refused(helm_binary: str, settings: list[str],
                                           message: str) -> None:
    args = [*REQUIRED]
    for setting in settings:
        args += ["--set", setting]
    result = helm(helm_binary, "template", "mail", "charts/email-service", *args, check=False)
    assert result.returncode != 0
    assert message.lower() in result.stderr.lower(), result.stderr


def test_the_bundled_set_scripts_pass_shellcheck(helm_binary: str) -> None:
    scripts = by_kind(render(helm_binary, *BUNDLED), "ConfigMap")[
        "mail-email-service-redis-scripts"]["data"]
    assert set(scripts) == {"primary.sh", "redis.sh", "sentinel.sh"}
    shellcheck = Path(sys.executable).parent / "shellcheck"
    for name, script in scripts.items():
        result = subprocess.run([str(shellcheck), "-s", "sh", "-"], input=script,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{name}:\n{result.stdout}"
