"""scripts/e2e-kind.sh as far as it can run here (no Docker daemon, kind or API server): its dry
run, on a PATH without docker, kind, kubectl, helm or curl, and every command it prints checked
against what it would act on — the chart rendered by the real helm with the very arguments the
script installs it with, the EmailTemplate CRD, and the template it sends."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ..operator.test_crd_schema import cel_failures, validator
from ..test_bootstrap import TEST_ONLY, restricted_path
from .conftest import CHART, REPO
from .test_chart import by_kind, helm, pod_specs, projected_files

SCRIPT = REPO / "scripts" / "e2e-kind.sh"
CLUSTER = "e2e-test"
CONTEXT = f"kind-{CLUSTER}"
#: What the real run needs and the dry run must not.
CLUSTER_TOOLS = frozenset({"docker", "kind", "kubectl", "helm", "curl"})

Command = list[str]


@dataclass(frozen=True)
class DryRun:
    commands: list[Command]
    comments: list[str]
    work: Path


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    tmp = tmp_path_factory.mktemp("e2e-kind")
    path = restricted_path(tmp / "bin", without=TEST_ONLY | CLUSTER_TOOLS)
    env = {**os.environ, "PATH": path, "E2E_WORK_DIR": str(tmp / "work")}
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--cluster", CLUSTER], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    return DryRun(commands=[shlex.split(line[2:]) for line in lines if line.startswith("+ ")],
                  comments=[line[2:] for line in lines if line.startswith("# ")],
                  work=tmp / "work")


def find(commands: list[Command], *prefix: str) -> list[Command]:
    return [c for c in commands if c[:len(prefix)] == list(prefix)]


def only(commands: list[Command], *prefix: str) -> Command:
    [command] = find(commands, *prefix)
    return command


def option(command: Command, name: str) -> str:
    return command[command.index(name) + 1]


def options(command: Command, name: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == name]


def kubectl(commands: list[Command], verb: str) -> list[Command]:
    """kubectl commands by verb, without the --context/--namespace prefix the script adds."""
    found = []
    for command in find(commands, "kubectl"):
        rest = command[1:]
        while rest and rest[0] in {"--context", "--namespace"}:
            rest = rest[2:]
        if rest and rest[0] == verb:
            found.append(rest)
    return found


def install(commands: list[Command]) -> Command:
    return only(commands, "helm", "upgrade", "--install")


def rendered(helm_binary: str, commands: list[Command]) -> list[dict[str, Any]]:
    """What the script's `helm upgrade --install` installs: `helm template` with its arguments."""
    command = install(commands)
    release, chart = command[3], command[4]
    args = ["template", release, str(REPO / chart), "--namespace", option(command, "--namespace")]
    for values in options(command, "--values"):
        args += ["--values", str(REPO / values)]
    for setting in options(command, "--set"):
        args += ["--set", setting]
    return [doc for doc in yaml.safe_load_all(helm(helm_binary, *args).stdout) if doc]


def applied_manifest(run: DryRun) -> dict[str, Any]:
    [apply] = kubectl(run.commands, "apply")
    path = Path(option(apply, "--filename"))
    assert path.parent == run.work
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    return manifest


def check_targets(commands: list[Command], docs: list[dict[str, Any]]) -> None:
    """Everything the script waits on, forwards to, execs in or tests exists in the render."""
    namespace = option(install(commands), "--namespace")
    services = by_kind(docs, "Service")
    deployments = by_kind(docs, "Deployment")
    for forward in kubectl(commands, "port-forward"):
        kind, name = forward[1].split("/")
        assert kind == "svc", forward
        service = services[name]
        assert service["metadata"]["namespace"] == namespace
        assert int(forward[2].removeprefix(":")) in {p["port"] for p in service["spec"]["ports"]}
    [token] = kubectl(commands, "exec")
    kind, name = token[1].split("/")
    assert kind == "deploy"
    assert token[token.index("--") + 1:][:2] == ["email-service", "token"]
    # The pod it mints the token in holds the JWT secret the ingress checks.
    assert deployments[name]["metadata"]["labels"]["app.kubernetes.io/component"] == "ingress"
    assert "jwt_secret" in projected_files(pod_specs(docs)[name])
    release = install(commands)[3]
    [test] = find(commands, "helm", "test")
    assert test[2] == release
    hooks = [d for d in docs if d["kind"] == "Pod"
             and d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert hooks, "helm test would find no test"


def test_the_dry_run_prints_every_step_in_order(dry_run: DryRun) -> None:
    steps = ["kind create cluster", "docker build", "kind load docker-image",
             "helm upgrade --install", " apply --filename ", " wait --for=condition=Ready ",
             " port-forward svc/", " exec deploy/", "curl -sS --fail-with-body",
             "/api/v1/messages?limit=100", "/v1/messages/MESSAGE_ID", "helm test",
             "kind delete cluster"]
    lines = [" ".join(command) for command in dry_run.commands]

    def position(step: str) -> int:
        return next(i for i, line in enumerate(lines) if step in line)

    positions = [position(step) for step in steps]
    assert positions == sorted(positions), list(zip(steps, positions, strict=True))
    assert dry_run.commands[-1] == ["kind", "delete", "cluster", "--name", CLUSTER]
    assert dry_run.comments[-1] == "e2e-kind: dry run, nothing was run"


def test_it_only_ever_talks_to_the_kind_cluster(dry_run: DryRun) -> None:
    for command in dry_run.commands:
        if command[0] == "kubectl":
            assert option(command, "--context") == CONTEXT, command
        elif command[0] == "helm":
            assert option(command, "--kube-context") == CONTEXT, command
        elif command[0] == "kind":
            assert option(command, "--name") == CLUSTER, command
        elif command[0] == "curl":
            assert re.match(r"http://127\.0\.0\.1:", next(w for w in command if "://" in w))


def test_the_chart_runs_the_image_it_built_and_loaded(helm_binary: str,
                                                      dry_run: DryRun) -> None:
    image = option(only(dry_run.commands, "docker", "build"), "--tag")
    assert only(dry_run.commands, "kind", "load", "docker-image")[3] == image
    docs = rendered(helm_binary, dry_run.commands)
    ours = {name: spec for name, spec in pod_specs(docs).items()
            if not name.endswith(("-mailpit", "-redis"))}
    assert {"email-service-ingress", "email-service-worker", "email-service-operator"} <= set(ours)
    for name, spec in ours.items():
        for container in spec["containers"]:
            assert container["image"] == image, name
            # Never pulled: a registry does not have it, the nodes do.
            assert container["imagePullPolicy"] == "Never", name
    assert "--wait" in install(dry_run.commands)


def test_what_it_waits_on_and_talks_to_exists_in_the_render(helm_binary: str,
                                                           dry_run: DryRun) -> None:
    docs = rendered(helm_binary, dry_run.commands)
    check_targets(dry_run.commands, docs)
    # The dev values bring the mail catcher it reads, and the workers deliver to it.
    forwarded = {f[1].removeprefix("svc/") for f in kubectl(dry_run.commands, "port-forward")}
    mailpit = next(name for name in forwarded if name.endswith("-mailpit"))
    config = next(iter(by_kind(docs, "ConfigMap").values()))["data"]
    assert config["SMTP_HOST"] == mailpit


def test_the_target_check_is_live(helm_binary: str, dry_run: DryRun) -> None:
    docs = rendered(helm_binary, dry_run.commands)
    renamed = [[word.replace("-mailpit", "-catcher") for word in c] for c in dry_run.commands]
    with pytest.raises(KeyError):
        check_targets(renamed, docs)
    wrong_port = [[":8026" if word == ":8025" else word for word in c] for c in dry_run.commands]
    with pytest.raises(AssertionError):
        check_targets(wrong_port, docs)


def test_the_template_it_applies_is_valid_and_watched(helm_binary: str, dry_run: DryRun) -> None:
    manifest = applied_manifest(dry_run)
    validator().validate(manifest)
    assert cel_failures(manifest) == []
    crd = yaml.safe_load((CHART / "crds" / "emailtemplates.yaml").read_text())
    version = crd["spec"]["versions"][0]
    assert manifest["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert manifest["kind"] == crd["spec"]["names"]["kind"]
    # It waits on the object it applied, by the condition the operator reports.
    [wait] = kubectl(dry_run.commands, "wait")
    assert "--for=condition=Ready" in wait
    assert wait[wait.index("--for=condition=Ready") + 1] == (
        f"{crd['spec']['names']['singular']}/{manifest['metadata']['name']}")
    assert any('type=="Ready"' in column["jsonPath"]
               for column in version["additionalPrinterColumns"])
    # In a namespace the operator watches (and has rights in): the release's.
    namespace = option(install(dry_run.commands), "--namespace")
    assert manifest["metadata"]["namespace"] == namespace
    docs = rendered(helm_binary, dry_run.commands)
    config = next(iter(by_kind(docs, "ConfigMap").values()))["data"]
    assert namespace in config["TEMPLATE_NAMESPACES"].split(",")
    assert {role["metadata"]["namespace"] for role in by_kind(docs, "Role").values()} == {
        namespace}
    # The example as shipped, only moved to that namespace.
    example = yaml.safe_load((REPO / "examples" / "emailtemplates" /
                              f"{manifest['metadata']['name']}.yaml").read_text())
    assert manifest["spec"] == example["spec"]


def test_the_message_it_sends_fits_the_template(dry_run: DryRun) -> None:
    manifest = applied_manifest(dry_run)
    [post] = [c for c in find(dry_run.commands, "curl") if "POST" in c]
    assert post[post.index("-X") + 2].endswith("/v1/messages")
    assert "Authorization: Bearer TOKEN" in options(post, "-H")
    body = json.loads(option(post, "-d"))
    assert body["template"] == manifest["metadata"]["name"]
    jsonschema.validate(body["data"], manifest["spec"]["variables"],
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    # Mailpit is searched for that recipient, and our status API asked about that message.
    assert f"accepted: message MESSAGE_ID to {body['to']}" in dry_run.comments
    urls = [word for c in find(dry_run.commands, "curl") for word in c if "://" in word]
    assert any(url.endswith("/api/v1/messages?limit=100") for url in urls)
    assert any(url.endswith("/v1/messages/MESSAGE_ID") for url in urls)


def test_help_and_unknown_arguments() -> None:
    shown = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True,
                           timeout=30, check=False)
    assert shown.returncode == 0
    assert "Usage: scripts/e2e-kind.sh [--dry-run]" in shown.stdout
    refused = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True,
                             timeout=30, check=False)
    assert refused.returncode == 2
    assert "unknown argument --bogus" in refused.stderr


def test_make_e2e_kind_runs_the_script(tmp_path: Path) -> None:
    result = subprocess.run(["make", "--no-print-directory", "e2e-kind",
                             f"E2E_ARGS=--dry-run --cluster {CLUSTER}"], cwd=REPO,
                            env={**os.environ, "E2E_WORK_DIR": str(tmp_path)},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"+ kind create cluster --name {CLUSTER} " in result.stdout


# --- the Mailpit check of the real run, against a server speaking Mailpit's API ----------------
# Mailpit cannot run here (no package ships it), so a local server answers GET /api/v1/messages
# as Mailpit documents it (newest first; To is a list of {Name, Address}), and the script's own
# check function runs against it, sourced from the script.

def mailpit_message(to: str, subject: str) -> dict[str, Any]:
    return {"ID": f"id-{to}", "MessageID": f"{to}@mailpit", "Read": False,
            "From": {"Name": "Email service (dev)", "Address": "dev@example.com"},
            "To": [{"Name": "", "Address": to}], "Cc": [], "Bcc": [], "ReplyTo": [],
            "Subject": subject, "Created": "2026-01-01T00:00:00.000Z", "Tags": [],
            "Size": 2048, "Attachments": 0, "Snippet": ""}


class MailpitAPI(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), MailpitHandler)
        self.messages: list[dict[str, Any]] = []
        self.paths: list[str] = []


class MailpitHandler(BaseHTTPRequestHandler):
    server: MailpitAPI

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.path.split("?")[0] != "/api/v1/messages":
            self.send_error(404)
            return
        messages = self.server.messages
        body = json.dumps({"total": len(messages), "unread": len(messages),
                           "count": len(messages), "messages_count": len(messages),
                           "start": 0, "tags": [], "messages": messages}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def mailpit_api() -> Iterator[MailpitAPI]:
    server = MailpitAPI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def email_arrived(port: int, recipient: str, work: Path) -> subprocess.CompletedProcess[str]:
    """The script's email_arrived, sourced (positional parameters cleared: `source` passes
    them on), with the port-forward's port and the recipient the real run would have."""
    check = 'script=$1 port=$2 to=$3; set --; source "$script"; ' \
            'MAILPIT_PORT=$port RECIPIENT=$to; email_arrived'
    return subprocess.run(["bash", "-c", check, "check", str(SCRIPT), str(port), recipient],
                          env={**os.environ, "E2E_WORK_DIR": str(work)}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_mailpit_check_finds_the_email_by_recipient(mailpit_api: MailpitAPI,
                                                        tmp_path: Path) -> None:
    port = mailpit_api.server_address[1]
    mailpit_api.messages = [mailpit_message("other@example.com", "Welcome, Kind!"),
                            mailpit_message("e2e-1@example.com", "Welcome to Dev, Kind!")]
    found = email_arrived(port, "e2e-1@example.com", tmp_path)
    assert found.returncode == 0, found.stderr
    assert "in Mailpit: Welcome to Dev, Kind!" in found.stderr
    assert mailpit_api.paths == ["/api/v1/messages?limit=100"]
    # Not there yet: a plain failure, so the caller keeps waiting.
    missing = email_arrived(port, "e2e-2@example.com", tmp_path)
    assert missing.returncode == 1
    assert "lacks" not in missing.stderr


def test_the_mailpit_check_stops_at_a_wrongly_rendered_email(mailpit_api: MailpitAPI,
                                                             tmp_path: Path) -> None:
    port = mailpit_api.server_address[1]
    mailpit_api.messages = [mailpit_message("e2e-1@example.com", "Welcome to Dev, !")]
    wrong = email_arrived(port, "e2e-1@example.com", tmp_path)
    assert wrong.returncode == 1
    assert "the email's subject lacks the data sent" in wrong.stderr


def test_the_mailpit_check_keeps_waiting_while_mailpit_does_not_answer(tmp_path: Path) -> None:
    server = MailpitAPI()
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    result = email_arrived(port, "e2e-1@example.com", tmp_path)
    assert result.returncode == 1


# --- the port-forward of the real run, with a stand-in for kubectl ------------------------------
# `kubectl port-forward` needs an API server; the stand-in prints what kubectl prints once it
# listens (on a port it chose for ":PORT") and stays up, or fails as kubectl does.
CHOSEN_PORT = 43210  # only printed by the stand-in, never bound
STAND_IN_KUBECTL = """#!/usr/bin/env bash
echo "$*" >>"$KUBECTL_CALLS"
case "$*" in
  *svc/missing*) echo 'Error from server (NotFound): services "missing" not found' >&2; exit 1 ;;
esac
echo "Forwarding from 127.0.0.1:$CHOSEN_PORT -> 8000"
echo "Forwarding from [::1]:$CHOSEN_PORT -> 8000"
exec sleep 300
"""


def port_forward(service: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(STAND_IN_KUBECTL)
    kubectl.chmod(0o755)
    check = ('script=$1 service=$2; set --; source "$script"; port_forward "$service" 80 PORT; '
             'echo "port=$PORT"; kill "${PIDS[@]}"')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "E2E_WORK_DIR": str(tmp_path / "work"), "KUBECTL_CALLS": str(tmp_path / "calls"),
           "CHOSEN_PORT": str(CHOSEN_PORT)}
    return subprocess.run(["bash", "-c", check, "check", str(SCRIPT), service], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_port_forward_reads_the_port_kubectl_chose(tmp_path: Path) -> None:
    result = port_forward("email-service", tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"port={CHOSEN_PORT}" in result.stdout
    assert (tmp_path / "calls").read_text().split() == [
        "--context", "kind-email-service-e2e", "--namespace", "email-service", "port-forward",
        "svc/email-service", ":80"]


def test_a_failed_port_forward_ends_the_run_at_once(tmp_path: Path) -> None:
    result = port_forward("missing", tmp_path)
    assert result.returncode == 1
    assert 'services "missing" not found' in result.stderr
    assert "e2e-kind: port-forward failed" in result.stderr
    assert "port=" not in result.stdout
