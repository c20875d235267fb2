"""Template versions end to end: a message renders with the version it was accepted under.

Real processes: the kopf operator on the kmock emulator, the ingress, a Dramatiq worker (stopped
while messages wait, started after the template changed), redis-server and an SMTP server.
"""

from __future__ import annotations

import itertools
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailcore.tokens import mint_token

from ..support import (
    REPO,
    TEST_SECRET,
    RedisServer,
    ServiceProcess,
    SMTPServer,
    base_env,
    free_port,
    wait_for,
)
from .conftest import NAMESPACES, Cluster, Operator, wait_ready

pytestmark = pytest.mark.slow


class Stack:
    """The ingress (always up) and a worker the test starts and stops."""

    def __init__(self, base_url: str, smtp: SMTPServer, env: dict[str, str], logs: Path) -> None:
        self.base_url = base_url
        self.smtp = smtp
        self.env = env
        self.logs = logs
        self.worker: ServiceProcess | None = None
        self.http = httpx.Client(base_url=base_url, timeout=10, headers={
            "Authorization": f"Bearer {mint_token(TEST_SECRET, subject='version-tests')}"})
        self.counter = itertools.count()

    def start_worker(self) -> None:
        worker = ServiceProcess(["worker", "--processes", "1", "--threads", "2"], self.env,
                                self.logs / f"worker-{next(self.counter)}.log").start()
        worker.wait_until(lambda: "ready for action" in worker.output(),
                          message="the worker to start")
        self.worker = worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def post(self, template: str, data: dict[str, Any], **extra: Any) -> httpx.Response:
        to = f"v-{next(self.counter)}-{uuid.uuid4().hex[:6]}@example.org"
        return self.http.post("/v1/messages", json={
            "template": template, "to": to, "data": data, **extra})

    def send(self, template: str, data: dict[str, Any], **extra: Any) -> tuple[str, str]:
        response = self.post(template, data, **extra)
        assert response.status_code == 202, response.text
        return response.json()["id"], response.request.content.decode()

    def status(self, message_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/messages/{message_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def delivered_subject(self, message_id: str, timeout: float = 20) -> str:
        status = wait_for(lambda: (s := self.status(message_id))["status"] == "sent" and s,
                          timeout=timeout, message=f"message {message_id} to be sent")
        to = status["recipients"][0]
        received = wait_for(lambda: self.smtp.handler.to(to), message=f"the email to {to}")
        return str(received[0].message["Subject"])


@pytest.fixture(scope="module")
def stack(store_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    smtp = SMTPServer()
    smtp.start()
    logs = tmp_path_factory.mktemp("versions-live")
    builtins = logs / "templates"
    shutil.copytree(REPO / "templates", builtins)
    port = free_port()
    env = base_env(store_redis.url, smtp.port, TEMPLATE_NAMESPACES=",".join(NAMESPACES),
                   TEMPLATES_DIR=str(builtins))
    api = ServiceProcess(["api", "--host", "127.0.0.1", "--port", str(port)], env,
                         logs / "api.log").start()
    stack = Stack(f"http://127.0.0.1:{port}", smtp, env, logs)
    try:
        api.wait_until(lambda: httpx.get(f"{stack.base_url}/ready").status_code == 200,
                       message="the ingress to be ready")
        yield stack
    finally:
        stack.stop_worker()
        stack.http.close()
        api.stop()
        smtp.stop()


def resource(name: str, variable: str, label: str, *, cause: str | None = None
             ) -> dict[str, Any]:
    """A template whose one required variable is ``variable``; its subject says ``label``."""
    metadata: dict[str, Any] = {"name": name, "namespace": "team-a"}
    if cause:
        metadata["annotations"] = {"kubernetes.io/change-cause": cause}
    return {"apiVersion": "email.platform.example.com/v1", "kind": "EmailTemplate",
            "metadata": metadata, "spec": spec(variable, label)}


def spec(variable: str, label: str) -> dict[str, Any]:
    return {"subject": f"{label} for {{{{ {variable} }}}}",
            "html": f"<p>Hello {{{{ {variable} }}}}</p>",
            "variables": {"type": "object", "required": [variable],
                          "properties": {variable: {"type": "string"}}},
            "sampleData": {variable: "Sample"}}


def serving(cluster: Cluster, name: str) -> dict[str, Any]:
    obj = cluster.get("team-a", name)
    assert obj is not None
    return dict(obj.get("status") or {})


def test_queued_messages_render_with_the_version_they_were_accepted_with(
    cluster: Cluster, operator: Operator, stack: Stack,
) -> None:
    stack.stop_worker()
    cluster.create(resource("renamed", "name", "V1"))
    wait_ready(cluster, "team-a", "renamed", status="True", generation=1)
    v1 = serving(cluster, "renamed")["version"]
    wait_for(lambda: stack.http.get("/v1/templates/renamed").status_code == 200,
             message="the ingress to know v1")
    held = [stack.send("renamed", {"name": f"Ada{i}"})[0] for i in range(3)]
    held.append(stack.send("team-a/renamed", {"name": "Ada3"})[0])
    assert {stack.status(mid)["template_version"] for mid in held} == {v1}

    # v2 renames the variable: v1's data would no longer validate, nor render.
    cluster.patch_spec("team-a", "renamed", spec("user", "V2"))
    wait_ready(cluster, "team-a", "renamed", status="True", generation=2)
    v2 = serving(cluster, "renamed")["version"]
    assert v2 != v1
    wait_for(lambda: stack.post("renamed", {"name": "late"}).status_code == 422,
             message="the ingress to validate against v2")
    new = stack.send("renamed", {"user": "Bob"})[0]
    explicit = stack.send("renamed", {"name": "Cy"}, template_version=v1)[0]
    assert stack.status(explicit)["template_version"] == v1
    assert stack.status(new)["template_version"] == v2

    stack.start_worker()
    try:
        subjects = [stack.delivered_subject(mid) for mid in held]
        assert subjects == ["V1 for Ada0", "V1 for Ada1", "V1 for Ada2", "V1 for Ada3"]
        assert stack.delivered_subject(new) == "V2 for Bob"
        assert stack.delivered_subject(explicit) == "V1 for Cy"
    finally:
        stack.stop_worker()


def test_a_deleted_template_still_renders_messages_accepted_before(
    cluster: Cluster, operator: Operator, stack: Stack,
) -> None:
    stack.stop_worker()
    cluster.create(resource("leaving", "name", "Bye"))
    wait_ready(cluster, "team-a", "leaving", status="True", generation=1)
    wait_for(lambda: stack.http.get("/v1/templates/leaving").status_code == 200,
             message="the ingress to know the template")
    held = stack.send("leaving", {"name": "Ada"})[0]
    cluster.delete("team-a", "leaving")
    wait_for(lambda: cluster.get("team-a", "leaving") is None, message="deletion")
    wait_for(lambda: stack.post("leaving", {"name": "x"}).status_code == 422,
             message="the ingress to forget the template")
    stack.start_worker()
    try:
        assert stack.delivered_subject(held) == "Bye for Ada"
    finally:
        stack.stop_worker()


def test_pinning_rolls_back_and_conditions_say_which_version_serves(
    cluster: Cluster, operator: Operator, stack: Stack,
) -> None:
    stack.start_worker()
    try:
        cluster.create(resource("frozen", "name", "One", cause="first release"))
        wait_ready(cluster, "team-a", "frozen", status="True", generation=1)
        v1 = serving(cluster, "frozen")["version"]
        cluster.patch_spec("team-a", "frozen", spec("name", "Two"))
        wait_ready(cluster, "team-a", "frozen", status="True", generation=2, reason="Compiled")
        v2 = serving(cluster, "frozen")["version"]
        wait_for(lambda: stack.delivered_subject(stack.send("frozen", {"name": "A"})[0])
                 == "Two for A", message="v2 to serve")

        # History: newest first, with who changed it.
        listed = stack.http.get("/v1/templates/frozen/versions").json()
        assert listed["serving"] == v2 and listed["key"] == "team-a/frozen"
        assert [v["version"] for v in listed["versions"]] == [v2, v1]
        assert listed["versions"][1]["origin"]["changeCause"] == "first release"
        assert listed["versions"][1]["origin"]["generation"] == 1
        assert listed["versions"][0]["origin"]["generation"] == 2
        one = stack.http.get(f"/v1/templates/team-a/frozen/versions/{v1}").json()
        assert one["source"]["subject"] == "One for {{ name }}" and not one["serving"]

        # Freeze at v1: v1 serves, the condition says so.
        cluster.patch_spec("team-a", "frozen", {"pinnedVersion": v1})
        condition = wait_ready(cluster, "team-a", "frozen", status="True", generation=3,
                               reason="Pinned")
        assert v1 in condition["message"] and v2 in condition["message"]
        status = serving(cluster, "frozen")
        assert (status["version"], status["latestVersion"], status["pinnedVersion"]) == (
            v1, v2, v1)
        wait_for(lambda: stack.delivered_subject(stack.send("frozen", {"name": "B"})[0])
                 == "One for B", message="the pinned v1 to serve")

        # A version the store does not keep: refused, v1 keeps serving.
        cluster.patch_spec("team-a", "frozen", {"pinnedVersion": "0123456789abcdef"})
        condition = wait_ready(cluster, "team-a", "frozen", status="False", generation=4,
                               reason="UnknownVersion")
        assert "0123456789abcdef" in condition["message"]
        assert serving(cluster, "frozen")["version"] == v1
        assert stack.delivered_subject(stack.send("frozen", {"name": "C"})[0]) == "One for C"

        # Unpin: the spec's version serves again.
        cluster.patch_spec("team-a", "frozen", {"pinnedVersion": None})
        wait_ready(cluster, "team-a", "frozen", status="True", generation=5, reason="Compiled")
        status = serving(cluster, "frozen")
        assert status["version"] == v2 and "pinnedVersion" not in status
        wait_for(lambda: stack.delivered_subject(stack.send("frozen", {"name": "D"})[0])
                 == "Two for D", message="v2 to serve again")
    finally:
        stack.stop_worker()
