"""The chart's webhooks, rendered by the real helm: off by default; on, every component gets the
WEBHOOKS_* settings, a `webhooks` Deployment runs `email-service webhooks` with the declared
endpoints mounted from a Secret (a configuration the service loads), and bad values are refused."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from mailcore.webhook_endpoints import load_declared

from .conftest import CHART
from .test_chart import REQUIRED, by_kind, helm, pod_specs, render

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
ENABLED = ("--set", "webhooks.enabled=true")
DECLARED = (*ENABLED, "--set", "webhooks.endpoints[0].id=audit",
            "--set", "webhooks.endpoints[0].url=http://audit.ops.svc.cluster.local/events",
            "--set", "webhooks.endpoints[0].events={sent,dead,bounced}",
            "--set", f"webhooks.endpoints[0].secrets={{{SECRET}}}")
NAME = "mail-email-service-webhooks"


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = pod_specs(docs)[NAME]["containers"]
    found: dict[str, Any] = container
    return found


def test_off_by_default(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED)
    assert NAME not in pod_specs(docs)
    assert not [k for k in by_kind(docs, "ConfigMap")["mail-email-service"]["data"]
                if k.startswith("WEBHOOKS_")]


def test_declared_endpoints_reach_the_webhooks_pods(helm_binary: str, tmp_path: Path) -> None:
    docs = render(helm_binary, *REQUIRED, *DECLARED,
                  "--set", "webhooks.allowedNetworks={10.20.0.0/16}")
    for doc in docs:
        if doc["metadata"]["name"].startswith(NAME):
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
    container = _container(docs)
    assert container["args"] == ["webhooks", "--processes", "1", "--threads", "16"]
    env = {item["name"]: item["value"] for item in container["env"]}
    path = Path(env["WEBHOOKS_ENDPOINTS_FILE"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["endpoints"] == str(path.parent)
    volumes = {v["name"]: v for v in pod_specs(docs)[NAME]["volumes"]}
    assert volumes["endpoints"]["secret"]["secretName"] == NAME
    # Only the webhooks pods mount the endpoints (they hold secrets).
    for other, spec in pod_specs(docs).items():
        if other != NAME:
            assert "endpoints" not in {v["name"] for v in spec.get("volumes", [])}
    secret = by_kind(docs, "Secret")[NAME]
    written = tmp_path / "endpoints.json"
    written.write_bytes(base64.b64decode(secret["data"]["endpoints.json"]))
    # The ConfigMap and the file are a configuration the service accepts.
    configmap = by_kind(docs, "ConfigMap")["mail-email-service"]["data"]
    assert configmap["WEBHOOKS_ENABLED"] == "true"
    from mailcore.config import Settings

    settings = Settings.from_env({**configmap, "SECRETS_DIR": "/nonexistent",
                                  "REDIS_PASSWORD": "x", "WEBHOOKS_ENDPOINTS_FILE": str(written)})
    assert [str(n) for n in settings.webhooks.allowed_networks] == ["10.20.0.0/16"]
    [endpoint] = load_declared(written, settings.webhooks.policy)
    assert (endpoint.id, endpoint.owner, endpoint.events) == ("audit", None,
                                                              ("sent", "dead", "bounced"))
    assert endpoint.valid_secrets() == [SECRET]
    # The probes are the workers' heartbeat probe; Prometheus may scrape the metrics port.
    assert container["livenessProbe"]["exec"]["command"][-1] == "worker"
    policies = by_kind(docs, "NetworkPolicy")
    internal = next(p for name, p in policies.items() if name.endswith("-internal"))
    assert "webhooks" in json.dumps(internal["spec"]["podSelector"])


def test_an_existing_secret_instead(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, *ENABLED, "--set", "webhooks.existingSecret=hooks")
    assert NAME not in by_kind(docs, "Secret")
    volumes = {v["name"]: v for v in pod_specs(docs)[NAME]["volumes"]}
    assert volumes["endpoints"]["secret"]["secretName"] == "hooks"


def test_enabled_without_declared_endpoints(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, *ENABLED)
    container = _container(docs)
    assert "WEBHOOKS_ENDPOINTS_FILE" not in json.dumps(container)
    assert NAME not in by_kind(docs, "Secret")


@pytest.mark.parametrize(("args", "complaint"), [
    (("--set", "webhooks.endpoints[0].id=x"), "missing properties"),
    ((*DECLARED, "--set", "webhooks.endpoints[0].events={delivered}"), "/webhooks/endpoints/0/"),
    ((*DECLARED, "--set", "webhooks.endpoints[0].secrets={sk_live}"), "/webhooks/endpoints/0/"),
    ((*DECLARED, "--set", "webhooks.endpoints[0].url=ftp://x"), "/webhooks/endpoints/0/url"),
    (("--set", "webhooks.allowedHosts={a b}"), "/webhooks/allowedHosts/0"),
    (("--set", "webhooks.allowedNetworks={not-a-net}"), "/webhooks/allowedNetworks/0"),
    (("--set", "webhooks.threads=0"), "/webhooks/threads"),
    (("--set", "webhooks.url=x"), "additional properties 'url' not allowed"),
])
def test_bad_webhook_values_are_refused(helm_binary: str, args: tuple[str, ...],
                                        complaint: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED, *args, check=False)
    assert result.returncode != 0 and complaint in result.stderr, result.stderr


def test_scraped_and_drained_like_the_workers(helm_binary: str) -> None:
    monitored = ("--set", "metrics.serviceMonitor.enabled=true")
    docs = render(helm_binary, *REQUIRED, *ENABLED, *monitored, "--set", "webhooks.replicas=2")
    assert NAME in by_kind(docs, "PodMonitor")
    assert NAME in by_kind(docs, "PodDisruptionBudget")
    single = render(helm_binary, *REQUIRED, *ENABLED, *monitored)
    assert NAME not in by_kind(single, "PodDisruptionBudget")  # one replica: no PDB
    off = render(helm_binary, *REQUIRED, *monitored)
    assert NAME not in by_kind(off, "PodMonitor")
    assert NAME not in by_kind(off, "PodDisruptionBudget")
