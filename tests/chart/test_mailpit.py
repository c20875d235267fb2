"""The optional in-chart mail catcher (Mailpit): off by default, on in the dev values, hardened
like the service's pods, the workers' relay when no other is named, reachable by SMTP only from
this release's workers, and its web UI forwarded by `skaffold dev`. Rendered by the real helm."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import CHART, REPO
from .test_chart import (
    CRD_KINDS,
    KUBERNETES_VERSIONS,
    REQUIRED,
    by_kind,
    helm,
    pod_specs,
    render,
    values_file,
)

MAILPIT = "mail-email-service-mailpit"
CONFIG = "mail-email-service"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, and matchExpressions with In, NotIn, Exists or
    DoesNotExist) picks an object with these labels."""
    if not all(labels.get(key) == value
               for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, operator = labels.get(expression["key"]), expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if (operator == "Exists") != (value is not None) and operator in ("Exists",
                                                                          "DoesNotExist"):
            return False
    return True


def pod_labels(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    labels: dict[str, str] = by_kind(docs, "Deployment")[name]["spec"]["template"]["metadata"][
        "labels"]
    return labels


def validate_all(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("env", ["default", "staging", "prod"])
def test_off_unless_asked_for(helm_binary: str, env: str) -> None:
    docs = render(helm_binary, *REQUIRED) if env == "default" else render(
        helm_binary, "-f", values_file(env))
    assert not [d for d in docs if "mailpit" in d["metadata"]["name"]]
    assert "mailpit" not in by_kind(docs, "ConfigMap")[CONFIG]["data"]["SMTP_HOST"]


def test_dev_values_run_it_and_the_workers_deliver_to_it(helm_binary: str) -> None:
    docs = render(helm_binary, "-f", values_file("dev"))
    validate_all(docs)
    service = by_kind(docs, "Service")[MAILPIT]
    labels = pod_labels(docs, MAILPIT)
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    spec = pod_specs(docs)[MAILPIT]
    [container] = spec["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert service_ports == {"smtp": (1025, "smtp"), "http": (8025, "http")}
    assert container_ports == {"smtp": 1025, "http": 8025}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["MP_SMTP_BIND_ADDR"], env["MP_UI_BIND_ADDR"]) == (":1025", ":8025")

    # The workers' relay is that Service, on its SMTP port, without TLS (as Mailpit speaks).
    config = by_kind(docs, "ConfigMap")[CONFIG]["data"]
    assert config["SMTP_HOST"] == MAILPIT
    assert config["SMTP_PORT"] == str(service_ports["smtp"][0])
    assert config["SMTP_SECURITY"] == "none"
    assert "SMTP_USERNAME" not in config
    worker = pod_specs(docs)["mail-email-service-worker"]["containers"][0]
    assert {"configMapRef": {"name": CONFIG}} in worker["envFrom"]

    # Hardened like the other pods, probed on Mailpit's own health endpoints.
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert container["image"].startswith("axllent/mailpit:v")


def test_network_policy_admits_smtp_from_this_release_s_workers_only(helm_binary: str) -> None:
    docs = render(helm_binary, "-f", values_file("dev"), "--set", "networkPolicy.enabled=true")
    validate_all(docs)
    policy = by_kind(docs, "NetworkPolicy")[MAILPIT]["spec"]
    assert selects(policy["podSelector"], pod_labels(docs, MAILPIT))
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"port": "smtp", "protocol": "TCP"}]
    [peer] = rule["from"]
    callers = {name: selects(peer["podSelector"], pod_labels(docs, name))
               for name in by_kind(docs, "Deployment")}
    assert callers == {"mail-email-service-worker": True, "mail-email-service-worker-bulk": True,
                       "mail-email-service-ingress": False,
                       "mail-email-service-operator": False, MAILPIT: False}
    # Not another release's workers: the selector names this release.
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "mail"
    assert "namespaceSelector" not in peer


def test_a_named_relay_wins_over_the_catcher(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "mailpit.enabled=true")
    assert MAILPIT in by_kind(docs, "Deployment")
    config = by_kind(docs, "ConfigMap")[CONFIG]["data"]
    assert (config["SMTP_HOST"], config["SMTP_PORT"], config["SMTP_SECURITY"]) == (
        "smtp.example.com", "587", "starttls")


def test_no_relay_and_no_catcher_is_refused(helm_binary: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED, "--set", "smtp.host=",
                  check=False)
    assert result.returncode != 0
    assert "smtp.host is required (or leave it empty with mailpit.enabled=true" in result.stderr


@pytest.mark.parametrize(("setting", "complaint"), [
    ("mailpit.enabled=yes", "/mailpit/enabled"),
    ("mailpit.colour=blue", "additional properties 'colour' not allowed"),
    ("mailpit.maxMessages=-1", "/mailpit/maxMessages"),
    ("mailpit.image.pullPolicy=Sometimes", "/mailpit/image/pullPolicy"),
    ("mailpit.livenessProbe.periodSeconds=0", "/mailpit/livenessProbe/periodSeconds"),
])
def test_schema_covers_the_mailpit_values(helm_binary: str, setting: str, complaint: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED, "--set", setting,
                  check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_notes_say_how_to_open_the_web_ui(helm_binary: str) -> None:
    out = helm(helm_binary, "install", "mail", str(CHART), "--dry-run=client", "--namespace",
               "email", "-f", values_file("dev")).stdout
    assert f"kubectl -n email port-forward svc/{MAILPIT} 8025:8025" in out
    assert "the workers deliver every email to it" in out


def test_skaffold_forwards_the_ingress_and_the_web_ui_to_rendered_services(
        helm_binary: str) -> None:
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    release = config["manifests"]["helm"]["releases"][0]
    args = ["template", release["name"], str(REPO / release["chartPath"]), "--namespace",
            release["namespace"], "--set", "image.tag=abc123"]
    for values in release["valuesFiles"]:
        args += ["-f", str(REPO / values)]
    docs = [d for d in yaml.safe_load_all(helm(helm_binary, *args).stdout) if d]
    services = by_kind(docs, "Service")
    forwards = config["portForward"]
    assert len({f["localPort"] for f in forwards}) == len(forwards)
    for forward in forwards:
        assert forward["resourceType"] == "service"
        service = services[forward["resourceName"]]
        assert service["metadata"]["namespace"] == forward["namespace"]
        assert forward["port"] in {p["port"] for p in service["spec"]["ports"]}
    ui = next(f for f in forwards if f["port"] == 8025)
    assert ui["resourceName"] == f"{release['name']}-mailpit"
    assert ui["localPort"] == 8025
    # prod installs no catcher and forwards nothing.
    prod = next(p for p in config["profiles"] if p["name"] == "prod")
    assert prod["portForward"] == []
