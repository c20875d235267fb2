"""The chart's bounce receiver, rendered by the real helm: a Deployment, Service, PDB and
NetworkPolicy valid for the Kubernetes API; BOUNCE_DOMAIN for workers and receiver, the HMAC key
in the workers' and the receiver's secrets only, a configuration the service accepts; the
Mailtrap webhook secret in the ingress only; bad values refused."""

from __future__ import annotations

import base64
from pathlib import Path

import kubernetes_validate
import pytest

from mailcore.config import Settings

from .conftest import CHART
from .test_chart import (
    KUBERNETES_VERSIONS,
    REQUIRED,
    by_kind,
    helm,
    pod_specs,
    projected_files,
    render,
)

KEY = "0123456789abcdef0123456789abcdef"
ENABLED = ("--set", "bounces.enabled=true", "--set", "bounces.domain=bounces.example.com",
           "--set", f"bounces.secret={KEY}")
RECEIVER = "mail-email-service-bounces"


def test_off_by_default(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED)
    assert not [d for d in docs if "bounces" in d["metadata"]["name"]]
    assert "BOUNCE_DOMAIN" not in by_kind(docs, "ConfigMap")["mail-email-service"]["data"]
    for spec in pod_specs(docs).values():
        if "volumes" in spec:  # the helm test pod has none
            assert "bounce_secret" not in projected_files(spec)


def test_the_receiver_and_its_configuration(helm_binary: str, tmp_path: Path) -> None:
    docs = render(helm_binary, *REQUIRED, *ENABLED,
                  "--set", "networkPolicy.monitoringNamespace=mon")
    for doc in docs:
        if RECEIVER in doc["metadata"]["name"]:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
    deployment = by_kind(docs, "Deployment")[RECEIVER]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["bounces", "--host", "0.0.0.0", "--port", "2525",
                                 "--http-port", "9193"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = by_kind(docs, "Service")[RECEIVER]
    assert service["spec"]["ports"] == [{"name": "smtp", "port": 25, "targetPort": "smtp",
                                         "protocol": "TCP"}]
    assert RECEIVER in by_kind(docs, "PodDisruptionBudget")
    policy = by_kind(docs, "NetworkPolicy")[RECEIVER]["spec"]
    assert policy["ingress"][0] == {"ports": [{"port": "smtp", "protocol": "TCP"}]}  # anyone
    assert policy["ingress"][1]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    # The key reaches the workers (they sign) and the receiver (it verifies), nobody else.
    specs = pod_specs(docs)
    secret_name = "mail-email-service"
    for name in ("mail-email-service-worker", RECEIVER):
        assert projected_files(specs[name])["bounce_secret"] == (secret_name, "bounce_secret")
    for name in ("mail-email-service-ingress", "mail-email-service-operator"):
        assert "bounce_secret" not in projected_files(specs[name])
    secret = by_kind(docs, "Secret")[secret_name]["data"]
    assert base64.b64decode(secret["bounce_secret"]).decode() == KEY
    # What the receiver's pod reads is a configuration the service accepts.
    configmap = by_kind(docs, "ConfigMap")["mail-email-service"]["data"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (tmp_path / "bounce_secret").write_text(KEY)
    settings = Settings.from_env({**configmap, **env, "SECRETS_DIR": str(tmp_path)})
    assert settings.bounces.domain == "bounces.example.com"
    assert settings.bounces.secret == KEY and settings.bounces.lmtp is False
    assert settings.bounces.max_connections == 100 and settings.bounces.max_recipients == 16


def test_allowed_networks_existing_secret_and_lmtp(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "bounces.enabled=true",
                  "--set", "bounces.domain=bounces.example.com",
                  "--set", "bounces.existingSecret=shop-bounces",
                  "--set", "bounces.existingSecretKey=key", "--set", "bounces.lmtp=true",
                  "--set", "bounces.replicas=1", "--set", "bounces.allowedCidrs[0]=10.0.0.0/8",
                  "--set", "bounces.service.type=LoadBalancer")
    policy = by_kind(docs, "NetworkPolicy")[RECEIVER]["spec"]
    assert policy["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    assert RECEIVER not in by_kind(docs, "PodDisruptionBudget")
    assert projected_files(pod_specs(docs)[RECEIVER])["bounce_secret"] == ("shop-bounces", "key")
    assert "bounce_secret" not in by_kind(docs, "Secret")["mail-email-service"]["data"]
    [container] = by_kind(docs, "Deployment")[RECEIVER]["spec"]["template"]["spec"]["containers"]
    assert {"name": "BOUNCES_LMTP", "value": "true"} in container["env"]
    assert by_kind(docs, "Service")[RECEIVER]["spec"]["type"] == "LoadBalancer"


def test_mailtrap_webhook_secret_reaches_the_ingress_only(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "mailtrapWebhook.signingSecret=whsec-1")
    specs = pod_specs(docs)
    assert "mailtrap_webhook_secret" in projected_files(specs["mail-email-service-ingress"])
    for name in ("mail-email-service-worker", "mail-email-service-operator"):
        assert "mailtrap_webhook_secret" not in projected_files(specs[name])


@pytest.mark.parametrize(("args", "error"), [
    (("--set", "bounces.enabled=true", "--set", f"bounces.secret={KEY}"), "bounces.domain"),
    (("--set", "bounces.enabled=true", "--set", "bounces.domain=b.example.com"),
     "bounces.secret"),
    ((*ENABLED, "--set", "bounces.secret=short"), "secret"),
    ((*ENABLED, "--set", "bounces.domain=Not A Domain"), "domain"),
    ((*ENABLED, "--set", "bounces.port=0"), "port"),
    ((*ENABLED, "--set", "bounces.service.type=ExternalName"), "type"),
])
def test_bad_values_are_refused(helm_binary: str, args: tuple[str, ...], error: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED, *args, check=False)
    assert result.returncode != 0 and error in result.stderr


