"""The Helm chart, linted and rendered by the real helm binary, every object validated against
the Kubernetes API schemas, and the properties the chart promises checked on what it renders."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from .conftest import CHART, REPO

ENVIRONMENTS = ["dev", "staging", "prod"]
#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema known.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
#: Kinds from CRDs (Prometheus Operator, KEDA) that the core API schemas do not know.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "ScaledObject", "TriggerAuthentication",
             "PrometheusRule"}
SECRET = "unit-test-jwt-secret-0123456789abcdef-xyz"
#: What a default install must be given: a JWT secret and the bundled Redis' password.
REQUIRED = ("--set", f"jwt.secret={SECRET}", "--set", "redis.password=redis-pw-1")


def helm(helm_binary: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([helm_binary, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def render(helm_binary: str, *args: str) -> list[dict[str, Any]]:
    out = helm(helm_binary, "template", "mail", str(CHART), "--namespace", "email", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def values_file(env: str) -> str:
    return str(CHART / f"values-{env}.yaml")


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    specs = {}
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            specs[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            specs[doc["metadata"]["name"]] = doc["spec"]
    return specs


@pytest.fixture(scope="module", params=ENVIRONMENTS)
def env_docs(request: pytest.FixtureRequest, helm_binary: str) -> list[dict[str, Any]]:
    return render(helm_binary, "-f", values_file(request.param))


@pytest.fixture(scope="module")
def default_docs(helm_binary: str) -> list[dict[str, Any]]:
    return render(helm_binary, "--set", f"jwt.secret={SECRET}", "--set", "smtp.password=smtp-pw-1",
                  "--set", "redis.password=redis-pw-1")


# --- helm lint and the API schemas -------------------------------------------------------------

@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_helm_lint_passes_for_every_environment(helm_binary: str, env: str) -> None:
    result = helm(helm_binary, "lint", "--strict", str(CHART), "-f", values_file(env))
    assert "0 chart(s) failed" in result.stdout


def test_every_rendered_object_is_valid_for_the_kubernetes_api(env_docs: list[dict[str, Any]]
                                                                ) -> None:
    checked = 0
    for doc in env_docs:
        if doc["kind"] in CRD_KINDS:
            continue  # checked by test_custom_resources_are_well_formed
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 12


def test_the_validation_is_live(default_docs: list[dict[str, Any]]) -> None:
    deployment = next(iter(by_kind(default_docs, "Deployment").values()))
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"] = {"pth": "/"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_the_crd_is_valid_for_the_kubernetes_api() -> None:
    crd = yaml.safe_load((CHART / "crds" / "emailtemplates.yaml").read_text())
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)


def test_custom_resources_are_well_formed(helm_binary: str) -> None:
    docs = render(helm_binary, "-f", values_file("prod"))
    kinds = {d["kind"]: d for d in docs if d["kind"] in CRD_KINDS}
    assert set(kinds) == CRD_KINDS - {"PrometheusRule"}  # checked by the alert tests
    scaled = kinds["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    worker = by_kind(docs, "Deployment")["mail-email-service-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == "dramatiq:email"  # Dramatiq's Redis queue key
    assert trigger["metadata"]["address"] == "redis-master.redis.svc.cluster.local:6379"
    auth = kinds["TriggerAuthentication"]["spec"]["secretTargetRef"][0]
    assert (auth["name"], auth["key"]) == ("email-service-redis", "password")
    # With KEDA the HPA is off (two autoscalers would fight over the replica count).
    assert not by_kind(docs, "HorizontalPodAutoscaler")
    assert "replicas" not in worker["spec"]
    monitors = [kinds["ServiceMonitor"]["spec"]["endpoints"][0],
                *(d["spec"]["podMetricsEndpoints"][0] for d in docs if d["kind"] == "PodMonitor")]
    assert {m["path"] for m in monitors} == {"/metrics"}
    ports = {p["name"] for spec in pod_specs(docs).values() for c in spec["containers"]
             for p in c.get("ports", [])}
    assert {m["port"] for m in monitors} <= ports


# --- values.schema.json --------------------------------------------------------------------------

@pytest.mark.parametrize(("setting", "complaint"), [
    ("worker.threads=many", "/worker/threads"),
    ("bogus=1", "additional properties 'bogus' not allowed"),
    ("ingress.colour=blue", "additional properties 'colour' not allowed"),
    ("smtp.security=tls", "/smtp/security"),
    ("jwt.secret=short", "/jwt/secret"),
    ("service.type=LoadBalancer", "/service/type"),
    ("redis.appendfsync=sometimes", "/redis/appendfsync"),
    ("config.templateNamespaces[0]=Not_A_Namespace", "/config/templateNamespaces/0"),
])
def test_schema_rejects_wrong_types_and_unknown_keys(helm_binary: str, setting: str,
                                                      complaint: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED, "--set", setting,
                  check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_refuses_to_render_without_a_jwt_secret(helm_binary: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), check=False)
    assert result.returncode != 0
    assert "jwt.secret (at least 32 characters) or jwt.existingSecret is required" in result.stderr


def test_external_redis_needs_a_host(helm_binary: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED,
                  "--set", "redis.bundled=false", check=False)
    assert "redis.host is required when redis.bundled is false" in result.stderr


# --- secrets ------------------------------------------------------------------------------------

def test_secrets_are_files_never_env_or_configmap(default_docs: list[dict[str, Any]]) -> None:
    secrets = by_kind(default_docs, "Secret")
    assert len(secrets) == 1
    encoded = next(iter(secrets.values()))["data"]
    data = {key: base64.b64decode(value).decode() for key, value in encoded.items()}
    assert data == {"jwt_secret": SECRET, "smtp_password": "smtp-pw-1",
                    "redis_password": "redis-pw-1"}
    outside = yaml.safe_dump_all([d for d in default_docs if d["kind"] != "Secret"])
    for value in data.values():
        assert value not in outside
    for name, spec in pod_specs(default_docs).items():
        for container in spec["containers"]:
            for env in container.get("env", []):
                assert "valueFrom" not in env, f"{name}: secrets come as files, not env"
    mounts = {name: {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
              for name, spec in pod_specs(default_docs).items()}
    for name in ("mail-email-service-ingress", "mail-email-service-worker",
                 "mail-email-service-operator", "mail-email-service-redis"):
        assert "/run/secrets" in mounts[name]


def projected_files(spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """path under /run/secrets -> (Secret name, key)."""
    volume = next(v for v in spec["volumes"] if v["name"] == "secrets")
    files = {}
    for source in volume.get("projected", {}).get("sources", []):
        for item in source["secret"]["items"]:
            files[item["path"]] = (source["secret"]["name"], item["key"])
    return files


def test_each_process_gets_only_the_secrets_it_uses(default_docs: list[dict[str, Any]]) -> None:
    specs = pod_specs(default_docs)
    assert set(projected_files(specs["mail-email-service-ingress"])) == {"jwt_secret",
                                                                         "redis_password"}
    assert set(projected_files(specs["mail-email-service-worker"])) == {"smtp_password",
                                                                        "redis_password"}
    assert set(projected_files(specs["mail-email-service-operator"])) == {"redis_password"}


def test_existing_secrets_are_referenced_and_no_secret_is_created(helm_binary: str) -> None:
    docs = render(helm_binary, "-f", values_file("staging"))
    assert not by_kind(docs, "Secret")
    specs = pod_specs(docs)
    assert projected_files(specs["mail-email-service-ingress"]) == {
        "jwt_secret": ("email-service-jwt", "secret"),
        "redis_password": ("email-service-redis", "password")}
    assert projected_files(specs["mail-email-service-worker"]) == {
        "smtp_password": ("email-service-smtp", "password"),
        "redis_password": ("email-service-redis", "password")}


def test_bundled_redis_password_is_required_never_generated(helm_binary: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), "--set", f"jwt.secret={SECRET}",
                  check=False)
    assert result.returncode != 0
    assert "redis.password or redis.existingSecret is required with the bundled Redis" in (
        result.stderr)
    # An existing Secret is enough: the chart then makes no Redis password of its own.
    docs = render(helm_binary, "--set", f"jwt.secret={SECRET}",
                  "--set", "redis.existingSecret=my-redis")
    assert "redis_password" not in next(iter(by_kind(docs, "Secret").values()))["data"]
    volume = by_kind(docs, "StatefulSet")["mail-email-service-redis"]["spec"]["template"][
        "spec"]["volumes"]
    assert {"name": "secrets", "secret": {"secretName": "my-redis", "defaultMode": 0o440,
            "items": [{"key": "redis_password", "path": "redis_password"}]}} in volume


def test_bundled_redis_password_is_kept_out_of_the_pod_spec(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED)
    password = base64.b64decode(next(iter(by_kind(docs, "Secret").values()))
                                ["data"]["redis_password"]).decode()
    assert password == "redis-pw-1"
    redis = by_kind(docs, "StatefulSet")["mail-email-service-redis"]
    assert password not in yaml.safe_dump(redis)
    command = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes --appendfsync always" in command
    assert '--requirepass "$(cat /run/secrets/redis_password)"' in command
    probe = redis["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]
    assert probe["command"] == ["sh", "-c", 'REDISCLI_AUTH="$(cat /run/secrets/redis_password)"'
                                " redis-cli -p 6379 ping | grep -q PONG"]


@pytest.mark.parametrize("env", ["default", *ENVIRONMENTS])
def test_two_renders_are_identical(helm_binary: str, env: str) -> None:
    """Nothing random at render time: GitOps tools re-render often, and a changed Secret or
    checksum would roll every pod each time."""
    args = [*REQUIRED, "--set", "metrics.prometheusRule.enabled=true"] if env == "default" else [
        "-f", values_file(env)]
    first, second = (helm(helm_binary, "template", "mail", str(CHART), *args).stdout
                     for _ in range(2))
    assert "kind: Deployment" in first
    assert first == second


# --- pods: probes, hardening, rolling ----------------------------------------------------------

def test_every_container_is_probed_hardened_and_sized(env_docs: list[dict[str, Any]]) -> None:
    specs = pod_specs(env_docs)
    assert {"mail-email-service-ingress", "mail-email-service-worker",
            "mail-email-service-operator", "mail-email-service-test"} <= set(specs)
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
            if spec.get("restartPolicy") == "Never":
                continue  # the helm test pod runs once
            assert {"livenessProbe", "readinessProbe", "startupProbe"} <= set(container), name
        mounts = {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        if spec.get("restartPolicy") != "Never":
            assert "/tmp" in mounts, f"{name}: a writable /tmp on a read-only root"


def test_probes_use_the_right_endpoints(default_docs: list[dict[str, Any]]) -> None:
    specs = pod_specs(default_docs)
    ingress = specs["mail-email-service-ingress"]["containers"][0]
    assert ingress["livenessProbe"]["httpGet"]["path"] == "/health"
    assert ingress["readinessProbe"]["httpGet"]["path"] == "/ready"
    worker = specs["mail-email-service-worker"]["containers"][0]
    assert worker["livenessProbe"]["exec"]["command"] == ["email-service", "probe", "worker"]
    assert worker["readinessProbe"]["exec"]["command"] == ["email-service", "probe", "worker",
                                                           "--ready"]
    operator = specs["mail-email-service-operator"]["containers"][0]
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert "http://0.0.0.0:8080/healthz" in operator["args"]


def test_graceful_shutdown_settings(default_docs: list[dict[str, Any]]) -> None:
    specs = pod_specs(default_docs)
    config = next(iter(by_kind(default_docs, "ConfigMap").values()))["data"]
    worker = specs["mail-email-service-worker"]
    assert worker["terminationGracePeriodSeconds"] * 1000 > int(
        config["WORKER_SHUTDOWN_TIMEOUT_MS"])
    ingress = specs["mail-email-service-ingress"]
    assert ingress["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert ingress["terminationGracePeriodSeconds"] > 5


def test_config_change_rolls_the_pods(helm_binary: str) -> None:
    def annotations(*args: str) -> dict[str, str]:
        docs = render(helm_binary, "--set", f"jwt.secret={SECRET}",
                      "--set", "redis.password=fixed-pw", *args)
        deployment = by_kind(docs, "Deployment")["mail-email-service-worker"]
        return dict(deployment["spec"]["template"]["metadata"]["annotations"])

    before = annotations()
    assert annotations() == before  # stable when nothing changes
    changed = annotations("--set", "config.senderName=Other")
    assert changed["checksum/config"] != before["checksum/config"]
    assert changed["checksum/secret"] == before["checksum/secret"]
    rotated = annotations("--set", "smtp.password=new-pw")
    assert rotated["checksum/secret"] != before["checksum/secret"]


def test_disruption_budgets_only_with_several_replicas(helm_binary: str) -> None:
    assert not by_kind(render(helm_binary, "-f", values_file("dev")), "PodDisruptionBudget")
    budgets = by_kind(render(helm_binary, "-f", values_file("staging")), "PodDisruptionBudget")
    assert set(budgets) == {"mail-email-service-ingress", "mail-email-service-worker"}


def test_worker_autoscaling_on_cpu_by_default(default_docs: list[dict[str, Any]]) -> None:
    hpa = by_kind(default_docs, "HorizontalPodAutoscaler")["mail-email-service-worker"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mail-email-service-worker"


def test_topology_spread_and_one_service(default_docs: list[dict[str, Any]]) -> None:
    specs = pod_specs(default_docs)
    for name in ("mail-email-service-ingress", "mail-email-service-worker"):
        keys = {c["topologyKey"] for c in specs[name]["topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    services = by_kind(default_docs, "Service")
    assert services["mail-email-service"]["spec"]["type"] == "ClusterIP"
    assert services["mail-email-service"]["spec"]["selector"]["app.kubernetes.io/component"] == \
        "ingress"
    assert set(services) == {"mail-email-service", "mail-email-service-redis"}


# --- access: RBAC and network -------------------------------------------------------------------

def test_only_the_operator_talks_to_the_kubernetes_api(default_docs: list[dict[str, Any]]) -> None:
    specs = pod_specs(default_docs)
    for name in ("mail-email-service-ingress", "mail-email-service-worker",
                 "mail-email-service-redis"):
        assert specs[name]["automountServiceAccountToken"] is False, name
    assert specs["mail-email-service-operator"]["automountServiceAccountToken"] is True
    bound = {s["name"] for kind in ("RoleBinding", "ClusterRoleBinding")
             for b in by_kind(default_docs, kind).values() for s in b["subjects"]}
    assert bound == {"mail-email-service-operator"}


def rules(doc: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in doc["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_operator_rbac_is_least_privilege(default_docs: list[dict[str, Any]],
                                          helm_binary: str) -> None:
    group = "email.platform.example.com"
    role = by_kind(default_docs, "Role")["mail-email-service-operator"]
    assert role["metadata"]["namespace"] == "email"  # the release namespace by default
    assert rules(role) == {
        (group, "emailtemplates", "get"), (group, "emailtemplates", "list"),
        (group, "emailtemplates", "watch"), (group, "emailtemplates", "patch"),
        (group, "emailtemplates/status", "get"), (group, "emailtemplates/status", "patch"),
        ("", "events", "create"), ("events.k8s.io", "events", "create")}
    cluster = next(iter(by_kind(default_docs, "ClusterRole").values()))
    assert {verb for _, _, verb in rules(cluster)} == {"get", "list", "watch"}
    # Watching every namespace moves the template rights into the ClusterRole instead.
    docs = render(helm_binary, *REQUIRED, "--set", "config.templateNamespaces={*}")
    assert not by_kind(docs, "Role")
    assert (group, "emailtemplates/status", "patch") in rules(
        next(iter(by_kind(docs, "ClusterRole").values())))


def test_operator_runs_once_with_recreate(default_docs: list[dict[str, Any]]) -> None:
    operator = by_kind(default_docs, "Deployment")["mail-email-service-operator"]
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}


def test_network_policy_admits_only_named_callers(helm_binary: str) -> None:
    docs = render(helm_binary, "-f", values_file("staging"))
    policy = by_kind(docs, "NetworkPolicy")["mail-email-service-ingress"]
    peers = policy["spec"]["ingress"][0]["from"]
    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for p in peers if "namespaceSelector" in p}
    assert namespaces == {"shop", "accounts"}
    own = [p for p in peers if "podSelector" in p]
    assert own == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "email-service",
                                                    "app.kubernetes.io/instance": "mail"}}}]
    redis = by_kind(docs, "NetworkPolicy")["mail-email-service-redis"]
    assert redis["spec"]["ingress"][0]["from"] == own


# --- extras: helm test, NOTES, dashboard -------------------------------------------------------

def test_helm_test_hook_checks_the_ingress(default_docs: list[dict[str, Any]]) -> None:
    pod = by_kind(default_docs, "Pod")["mail-email-service-test"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "http://mail-email-service:80" in script and "/health" in script
    compile(script, "helm-test", "exec")  # the script the pod runs is valid Python


def test_notes_tell_how_to_call_the_service(helm_binary: str) -> None:
    out = helm(helm_binary, "install", "mail", str(CHART), "--dry-run=client", "--namespace",
               "email", *REQUIRED).stdout
    assert "http://mail-email-service.email.svc:80" in out
    assert "Authorization: Bearer $TOKEN" in out


def test_dashboard_uses_only_metrics_the_service_exports(helm_binary: str) -> None:
    dashboard = json.loads((CHART / "dashboards" / "email-service.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(expressions) > 15
    assert_only_exported_metrics(expressions)
    docs = render(helm_binary, *REQUIRED, "--set", "dashboard.enabled=true")
    configmap = by_kind(docs, "ConfigMap")["mail-email-service-dashboard"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["email-service.json"]) == dashboard


# --- skaffold -----------------------------------------------------------------------------------

SKAFFOLD_SCHEMA = REPO.parent / "shared" / "schemas" / "skaffold-v4beta14.json"


@pytest.mark.skipif(not SKAFFOLD_SCHEMA.exists(), reason="../shared/schemas is not beside the repo")
def test_skaffold_config_matches_the_published_schema() -> None:
    schema = json.loads(SKAFFOLD_SCHEMA.read_text())
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert config["apiVersion"] == "skaffold/v4beta14"
    jsonschema.validate(config, schema)
    broken = json.loads(json.dumps(config))
    broken["build"]["artefacts"] = broken["build"].pop("artifacts")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_skaffold_deploys_this_chart_with_the_built_image(helm_binary: str) -> None:
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    image = config["build"]["artifacts"][0]
    assert (REPO / image["docker"]["dockerfile"]).is_file()
    release = config["manifests"]["helm"]["releases"][0]
    assert (REPO / release["chartPath"]) == CHART
    suffix = image["image"].replace("-", "_")
    templates = release["setValueTemplates"]
    assert templates["image.repository"] == "{{.IMAGE_REPO_" + suffix + "}}"
    assert "{{.IMAGE_TAG_" + suffix + "}}" in templates["image.tag"]
    # What skaffold would pass renders: the values exist in the chart.
    args = ["--set", "image.repository=email-service", "--set", "image.tag=abc123"]
    for values in release["valuesFiles"]:
        args += ["-f", str(REPO / values)]
    ingress = by_kind(render(helm_binary, *args), "Deployment")["mail-email-service-ingress"]
    assert ingress["spec"]["template"]["spec"]["containers"][0]["image"] == "email-service:abc123"
    profiles = {p["name"] for p in config["profiles"]}
    assert {"dev", "prod"} <= profiles
    forward = config["portForward"][0]
    assert (forward["resourceType"], forward["resourceName"]) == ("service", "email-service")


def test_helm_is_the_real_binary(helm_binary: str) -> None:
    version = helm(helm_binary, "version", "--short").stdout
    assert version.startswith("v4."), version
    assert shutil.which(helm_binary) or Path(helm_binary).is_file()


@pytest.mark.parametrize("env", ["default", *ENVIRONMENTS])
def test_worker_smtp_sessions_stay_under_a_default_relay_limit(helm_binary: str, env: str) -> None:
    """Each worker thread holds one SMTP session; Postfix admits 50 per client by default."""
    args = [*REQUIRED] if env == "default" else ["-f", values_file(env)]
    worker = by_kind(render(helm_binary, *args), "Deployment")["mail-email-service-worker"]
    command = worker["spec"]["template"]["spec"]["containers"][0]["args"]
    processes = int(command[command.index("--processes") + 1])
    threads = int(command[command.index("--threads") + 1])
    assert processes * threads <= 50


@pytest.mark.parametrize("settings", [
    ["operator.enabled=false"],
    ["networkPolicy.enabled=false", "topologySpread.enabled=false"],
    ["redis.bundled=false", "redis.host=redis.example.internal"],  # no password at all
    ["jwt.secret=", "jwt.jwksUrl=https://idp.example.com/jwks.json"],  # keys from a JWKS only
    ["jwt.jwksUrl=https://idp.example.com/jwks.json"],  # HS256 secret and a JWKS together
    ["worker.autoscaling.enabled=false", "worker.replicas=1", "ingress.replicas=1"],
    ["config.templateNamespaces={*}", "metrics.serviceMonitor.enabled=true",
     "dashboard.enabled=true", "image.digest=sha256:" + "a" * 64],
], ids=["no-operator", "no-policies", "external-redis-no-password", "jwks-only", "jwks-and-secret",
        "single",
        "cluster-wide-monitored"])
def test_optional_paths_render_valid_objects(helm_binary: str, settings: list[str]) -> None:
    # External Redis without auth: no password at all.
    args = [*REQUIRED[:2]] if "redis.bundled=false" in settings else [*REQUIRED]
    for setting in settings:
        args += ["--set", setting]
    docs = render(helm_binary, *args)
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    deployments = by_kind(docs, "Deployment")
    assert "mail-email-service-ingress" in deployments
    if "operator.enabled=false" in settings:
        assert "mail-email-service-operator" not in deployments
        assert not by_kind(docs, "ClusterRole")
    if "redis.bundled=false" in settings:
        assert not by_kind(docs, "StatefulSet")
        worker = pod_specs(docs)["mail-email-service-worker"]
        assert projected_files(worker) == {}  # nothing to mount, and still a valid volume
    # Every Secret a pod mounts exists in the render (or is named as existing by values).
    created = {(name, key) for name, secret in by_kind(docs, "Secret").items()
               for key in secret.get("data", {})}
    for spec in pod_specs(docs).values():
        if any(volume["name"] == "secrets" for volume in spec.get("volumes", [])):
            assert set(projected_files(spec).values()) <= created
    if any(s.startswith("image.digest") for s in settings):
        image = deployments["mail-email-service-ingress"]["spec"]["template"]["spec"][
            "containers"][0]["image"]
        assert image == "ghcr.io/example/email-service@sha256:" + "a" * 64


# --- conventions: namespace, rollout, probes as values ------------------------------------------

def test_namespace_value_places_every_namespaced_object(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "namespace=mail-system",
                  "--set", "metrics.serviceMonitor.enabled=true",
                  "--set", "metrics.prometheusRule.enabled=true")
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    namespaces = {d["metadata"]["namespace"] for d in docs if d["kind"] not in cluster_scoped
                  and d["kind"] not in {"Role", "RoleBinding"}}
    assert namespaces == {"mail-system"}
    # The operator watches the namespace it is installed in, by default.
    roles = by_kind(docs, "Role")
    assert {role["metadata"]["namespace"] for role in roles.values()} == {"mail-system"}
    config = next(iter(by_kind(docs, "ConfigMap").values()))["data"]
    assert "mail-system" in json.dumps(config)


def test_rollout_and_probe_timings_come_from_values(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "revisionHistoryLimit=2",
                  "--set", "ingress.strategy.rollingUpdate.maxSurge=25%",
                  "--set", "worker.livenessProbe.periodSeconds=45",
                  "--set", "redis.readinessProbe.failureThreshold=7")
    deployments = by_kind(docs, "Deployment")
    redis = by_kind(docs, "StatefulSet")["mail-email-service-redis"]
    assert {d["spec"]["revisionHistoryLimit"] for d in [*deployments.values(), redis]} == {2}
    ingress = deployments["mail-email-service-ingress"]
    assert ingress["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}}
    worker = pod_specs(docs)["mail-email-service-worker"]["containers"][0]
    assert worker["livenessProbe"] == {
        "exec": {"command": ["email-service", "probe", "worker"]},
        "periodSeconds": 45, "timeoutSeconds": 10, "failureThreshold": 3}
    assert redis["spec"]["template"]["spec"]["containers"][0]["readinessProbe"][
        "failureThreshold"] == 7
    # The operator's strategy is not a value: two operators must never run at once.
    assert deployments["mail-email-service-operator"]["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize(("setting", "complaint"), [
    ("namespace=Not_A_Namespace", "/namespace"),
    ("revisionHistoryLimit=-1", "/revisionHistoryLimit"),
    ("ingress.strategy.type=Blue", "/ingress/strategy/type"),
    ("worker.livenessProbe.periodSeconds=0", "/worker/livenessProbe/periodSeconds"),
    ("operator.readinessProbe.httpGet.path=/", "additional properties 'httpGet' not allowed"),
    ("metrics.prometheusRule.enabled=yes", "/metrics/prometheusRule/enabled"),
])
def test_schema_covers_the_convention_values(helm_binary: str, setting: str,
                                             complaint: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED, "--set", setting,
                  check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


# --- alerts: an optional PrometheusRule ---------------------------------------------------------

#: A duration as Prometheus and the PrometheusRule CRD accept it (e.g. 90s, 5m, 1h30m).
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?" \
           r"(([0-9]+)ms)?)$"
#: The PrometheusRule spec as monitoring.coreos.com/v1 defines it (the CRD's openAPIV3Schema,
#: restated for the fields this chart uses; unknown fields are refused, as a strict apply would).
PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"],
                 "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                     "type": "object", "required": ["name", "rules"],
                     "additionalProperties": False,
                     "properties": {
                         "name": {"type": "string", "minLength": 1},
                         "interval": {"type": "string", "pattern": DURATION},
                         "rules": {"type": "array", "minItems": 1, "items": {
                             "type": "object", "required": ["alert", "expr"],
                             "additionalProperties": False,
                             "properties": {
                                 "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9]*$"},
                                 "expr": {"type": "string", "minLength": 1},
                                 "for": {"type": "string", "pattern": DURATION},
                                 "labels": {"type": "object",
                                            "additionalProperties": {"type": "string"}},
                                 "annotations": {"type": "object",
                                                 "additionalProperties": {"type": "string"}},
                             }}},
                     }}}}},
    },
}


def exported_metrics() -> set[str]:
    """Every metric name the service exports (ingress, workers, queue and operator gauges)."""
    from prometheus_client import REGISTRY

    import workers.metrics  # registers the worker metrics
    import workers.webhook_metrics  # and the webhook ones
    from service.metrics import IngressMetrics

    exported = {metric.name for metric in IngressMetrics().registry.collect()}
    exported |= {metric.name for metric in REGISTRY.collect()}
    exported |= {"email_queue_depth", "email_queue_delayed", "email_queue_in_flight",
                 "email_queue_oldest_age_seconds", "email_dead_letter_queue_size",
                 "email_operator_reconciles", "email_operator_templates",
                 workers.webhook_metrics.DEAD_LETTER_SIZE}
    return exported


def assert_only_exported_metrics(expressions: list[str]) -> None:
    exported = exported_metrics()
    for expr in expressions:
        names = re.findall(r"\b(email_[a-z_]+)", expr)
        assert names, f"no metric of the service in {expr!r}"
        for name in names:
            base = re.sub(r"_(total|bucket|count|sum|created)$", "", name)
            assert base in exported or name in exported, f"{name} in {expr!r}"


def test_alerts_render_as_a_valid_prometheus_rule(helm_binary: str) -> None:
    assert not by_kind(render(helm_binary, *REQUIRED), "PrometheusRule")  # optional
    docs = render(helm_binary, *REQUIRED, "--set", "metrics.prometheusRule.enabled=true",
                  "--set", "metrics.prometheusRule.labels.release=prom")
    rule = by_kind(docs, "PrometheusRule")["mail-email-service"]
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    assert rule["metadata"]["labels"]["release"] == "prom"
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) >= 7
    assert {r["labels"]["severity"] for r in rules} <= {"warning", "critical"}
    assert all(r["annotations"]["summary"] for r in rules)
    assert_only_exported_metrics([r["expr"] for r in rules])


def test_the_prometheus_rule_schema_is_live() -> None:
    broken = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
              "metadata": {"name": "x", "namespace": "y"},
              "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up",
                                                          "for": "5 minutes"}]}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, PROMETHEUS_RULE_SCHEMA)


def test_readme_links_the_alerts_instead_of_copying_them() -> None:
    readme = (REPO / "README.md").read_text()
    alerts = readme[readme.index("### Alerts"):]
    alerts = alerts[:alerts.index("\n### ", 1)]
    assert "charts/email-service/templates/prometheusrule.yaml" in alerts
    assert "metrics.prometheusRule.enabled" in alerts
    assert "expr:" not in alerts


def test_worker_metrics_listen_on_the_pod_ip(default_docs: list[dict[str, Any]]) -> None:
    # The service binds worker metrics to 127.0.0.1 by default; in a pod Prometheus scrapes the
    # pod IP, so the chart must say so.
    config = next(iter(by_kind(default_docs, "ConfigMap").values()))["data"]
    assert config["WORKER_METRICS_HOST"] == "0.0.0.0"
