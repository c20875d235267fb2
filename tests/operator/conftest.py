"""Fixtures for the operator tests: the kmock emulator serving our CRD, a real kopf operator
process (``email-service operator``) against it, and a private redis-server for the store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest
import yaml

from ..support import REPO, RedisServer, ServiceProcess, free_port, wait_for
from .emulator import Emulator

CRD_PATH = REPO / "charts" / "email-service" / "crds" / "emailtemplates.yaml"
EXAMPLES = REPO / "examples" / "emailtemplates"
GROUP = "email.platform.example.com"
TEMPLATES = f"{GROUP}/v1/emailtemplates"
#: Namespaces the test operator watches (bare names resolve in this order).
NAMESPACES = ("team-a", "team-b")


def load_crd() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    assert isinstance(crd, dict)
    return crd


class Cluster:
    """A kmock emulator on a background event loop, driven over HTTP like kubectl would."""

    def __init__(self) -> None:
        self.emulator: Emulator | None = None
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self.http: httpx.Client | None = None

    def start(self) -> Cluster:
        self._thread.start()
        assert self._ready.wait(10) and self.url, "the emulator did not start"
        self.http = httpx.Client(base_url=self.url, timeout=10)
        return self

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._ready.set()  # also on failure, so start() fails at once
            self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            crd = load_crd()
            names = crd["spec"]["names"]
            emulator.resources[TEMPLATES] = kmock.ResourceInfo(
                kind=names["kind"], singular=names["singular"], namespaced=True,
                shortnames=set(names["shortNames"]), subresources={"status"},
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            )
            emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
                kind="Namespace", singular="namespace", namespaced=False,
                verbs={"get", "list", "watch"})
            emulator.resources["v1/events"] = kmock.ResourceInfo(
                kind="Event", singular="event", namespaced=True,
                verbs={"get", "list", "watch", "create"})
            emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = (
                kmock.ResourceInfo(kind="CustomResourceDefinition",
                                   singular="customresourcedefinition", namespaced=False,
                                   verbs={"get", "list", "watch"}))
            emulator.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None,
                             crd["metadata"]["name"]] = crd
            for namespace in (*NAMESPACES, "elsewhere"):
                emulator.objects["v1/namespaces", None, namespace] = {
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stopped.wait()

    # -- kubectl-like helpers ---------------------------------------------------------------------

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        path = f"/apis/{GROUP}/v1/namespaces/{namespace}/emailtemplates"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        namespace = obj["metadata"]["namespace"]
        response = self.http.post(self.path(namespace), json=obj)
        assert response.status_code < 300, response.text
        return dict(response.json())

    def patch_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        response = self.http.patch(self.path(namespace, name), json={"spec": spec},
                                   headers={"Content-Type": "application/merge-patch+json"})
        assert response.status_code < 300, response.text
        return dict(response.json())

    def delete(self, namespace: str, name: str) -> None:
        assert self.http is not None
        response = self.http.delete(self.path(namespace, name))
        assert response.status_code < 300, response.text

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert self.http is not None
        response = self.http.get(self.path(namespace, name))
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return dict(response.json())

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        assert self.http is not None
        response = self.http.get(f"/api/v1/namespaces/{namespace}/events")
        assert response.status_code == 200, response.text
        return [event for event in response.json()["items"]
                if event.get("involvedObject", {}).get("name") == name]

    def watching(self, resource: str) -> bool:
        """Whether some client holds a watch on ``resource`` (kopf is ready for changes)."""
        assert self.emulator is not None
        return any(request.action == kmock.action.WATCH and request.resource == resource
                   for request in list(self.emulator))

    def ready(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Ready condition of an object, or None."""
        obj = self.get(namespace, name)
        for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
            if condition.get("type") == "Ready":
                return dict(condition)
        return None


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock",
                                                    "namespace": NAMESPACES[0]}}],
    }))
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def store_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("store-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def operator_env(redis_url: str, kubeconfig_path: Path, **overrides: str) -> dict[str, str]:
    import os

    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("REDIS_", "KUBE", "TEMPLATE_", "OPERATOR_"))}
    env.update(
        REDIS_URL=redis_url, KUBECONFIG=str(kubeconfig_path),
        TEMPLATE_NAMESPACES=",".join(NAMESPACES), OPERATOR_RETRY_MAX_SECONDS="1",
        OPERATOR_RESYNC_SECONDS="0.5", OPERATOR_RENDER_TIMEOUT_SECONDS="1",
        SECRETS_DIR="/nonexistent", PYTHONUNBUFFERED="1", OPERATOR_METRICS_PORT="0",
    )
    env.update(overrides)
    return env


class Operator:
    """The ``email-service operator`` process under test."""

    def __init__(self, process: ServiceProcess, cluster: Cluster, liveness: str,
                 metrics: str | None = None) -> None:
        self.process = process
        self.cluster = cluster
        self.liveness = liveness
        self.metrics = metrics

    def output(self) -> str:
        return self.process.output()

    def wait_started(self) -> None:
        watches = self._watches()
        self.process.wait_until(lambda: self._watches() > watches, timeout=30,
                                message="kopf to watch emailtemplates")
        self.process.wait_until(lambda: httpx.get(self.liveness, timeout=1).status_code == 200,
                                message="kopf's liveness endpoint")

    def _watches(self) -> int:
        assert self.cluster.emulator is not None
        return sum(1 for request in list(self.cluster.emulator)
                   if request.action == kmock.action.WATCH and request.resource == TEMPLATES)


@pytest.fixture(scope="module")
def operator_args() -> list[str]:
    """Which namespaces the operator watches (a module may override this fixture)."""
    return [arg for namespace in NAMESPACES for arg in ("--namespace", namespace)]


@pytest.fixture(scope="module")
def operator_overrides() -> dict[str, str]:
    """Extra environment for the operator (a module may override this fixture)."""
    return {}


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, store_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory,
    operator_args: list[str], operator_overrides: dict[str, str],
) -> Iterator[Operator]:
    workdir = tmp_path_factory.mktemp("operator")
    port = free_port()
    liveness = f"http://127.0.0.1:{port}/healthz"
    metrics_port = free_port()
    env = operator_env(store_redis.url, kubeconfig(workdir / "kubeconfig", cluster.url),
                       OPERATOR_METRICS_PORT=str(metrics_port), **operator_overrides)
    args = ["operator", "--liveness", liveness, *operator_args]
    process = ServiceProcess(args, env, workdir / "operator.log")
    operator = Operator(process, cluster, liveness, f"http://127.0.0.1:{metrics_port}/metrics")
    process.start()
    try:
        operator.wait_started()
        yield operator
    finally:
        process.stop()
        print(process.output()[-6000:])


def wait_ready(cluster: Cluster, namespace: str, name: str, *, status: str, generation: int,
               reason: str | None = None, timeout: float = 20) -> dict[str, Any]:
    """Wait for the Ready condition of ``generation`` with ``status`` (and ``reason``)."""

    def check() -> dict[str, Any] | None:
        condition = cluster.ready(namespace, name)
        if (condition and condition["status"] == status
                and condition.get("observedGeneration") == generation
                and (reason is None or condition["reason"] == reason)):
            return condition
        return None

    result = wait_for(check, timeout=timeout,
                      message=f"{namespace}/{name} Ready={status} for generation {generation}"
                      + (f" ({reason})" if reason else ""))
    assert isinstance(result, dict)
    return result
