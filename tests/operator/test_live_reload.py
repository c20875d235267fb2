"""End to end: kubectl-apply an EmailTemplate, and the next delivered email uses it.

Real processes: the kopf operator against the kmock emulator, the ingress and a Dramatiq worker
(``email-service api`` / ``worker``), redis-server (broker and template store) and an SMTP
server. Measures apply -> first delivered email with the new version (target: under a second).
"""

from __future__ import annotations

import itertools
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mailcore.tokens import mint_token

from ..support import (
    REPO,
    TEST_SECRET,
    RedisServer,
    ServiceStack,
    SMTPServer,
    base_env,
    wait_for,
)
from .conftest import NAMESPACES, Cluster, Operator, wait_ready

pytestmark = pytest.mark.slow

#: What the issue asks for: apply -> every pod sends with the new version within a second.
TARGET_SECONDS = 1.0


class Stack:
    def __init__(self, base_url: str, smtp: SMTPServer) -> None:
        self.base_url = base_url
        self.smtp = smtp
        self.http = httpx.Client(base_url=base_url, timeout=10, headers={
            "Authorization": f"Bearer {mint_token(TEST_SECRET, subject='operator-tests')}"})
        self.counter = itertools.count()

    def send(self, template: str, **extra: Any) -> str:
        to = f"live-{next(self.counter)}-{uuid.uuid4().hex[:6]}@example.org"
        response = self.http.post("/v1/messages", json={
            "template": template, "to": to, "data": {"name": "Ada"}, **extra})
        assert response.status_code == 202, response.text
        return to

    def subject_of(self, to: str, timeout: float = 15) -> str:
        received = wait_for(lambda: self.smtp.handler.to(to), timeout=timeout,
                            message=f"the email to {to}")
        return str(received[0].message["Subject"])


@pytest.fixture(scope="module")
def stack(store_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    smtp = SMTPServer()  # this module's own: started and stopped with the stack
    logs = tmp_path_factory.mktemp("live-reload")
    # The built-in set plus "greeting", a name an EmailTemplate can have too (Kubernetes names
    # allow no underscores, so password_reset can only be replaced via RESET_TEMPLATE).
    builtins = logs / "templates"
    shutil.copytree(REPO / "templates", builtins)
    (builtins / "greeting").mkdir()
    (builtins / "greeting" / "subject.txt").write_text("Built-in greeting for {{ name }}")
    (builtins / "greeting" / "template.html").write_text("<p>Hello {{ name }}</p>")
    env = base_env(store_redis.url, smtp.port, TEMPLATE_NAMESPACES=",".join(NAMESPACES),
                   TEMPLATES_DIR=str(builtins))
    with ServiceStack(env, logs, parts=[smtp]) as service:
        stack = Stack(service.base_url, smtp)
        try:
            yield stack
        finally:
            stack.http.close()


def resource(name: str, subject: str, html: str = "<p>Hello {{ name }}</p>") -> dict[str, Any]:
    return {"apiVersion": "email.platform.example.com/v1", "kind": "EmailTemplate",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"subject": subject, "html": html, "sampleData": {"name": "Ada"}}}


def test_apply_then_the_next_email_uses_the_new_version(
    cluster: Cluster, operator: Operator, stack: Stack, record_property: Any,
) -> None:
    cluster.create(resource("promo", "Promo v1 for {{ name }}"))
    wait_ready(cluster, "team-a", "promo", status="True", generation=1)
    assert stack.subject_of(stack.send("promo")) == "Promo v1 for Ada"
    assert stack.subject_of(stack.send("team-a/promo")) == "Promo v1 for Ada"

    latencies = []
    for generation, version in ((2, "v2"), (3, "v3"), (4, "v4")):
        started = time.monotonic()
        cluster.patch_spec("team-a", "promo", {"subject": f"Promo {version} for {{{{ name }}}}"})
        # Keep sending, as production traffic would, until an email with the new version lands.
        sent: list[str] = []
        deadline = started + 15
        arrived = None
        while arrived is None and time.monotonic() < deadline:
            sent.append(stack.send("promo"))
            time.sleep(0.01)
            for to in sent:
                got = stack.smtp.handler.to(to)
                if got and got[0].message["Subject"] == f"Promo {version} for Ada":
                    arrived = time.monotonic()
                    break
        assert arrived is not None, f"no email with {version} within 15s"
        latencies.append(arrived - started)
        wait_ready(cluster, "team-a", "promo", status="True", generation=generation)

    worst = max(latencies)
    print(f"\napply -> first email with the new version: "
          f"{', '.join(f'{x * 1000:.0f} ms' for x in latencies)} (worst {worst * 1000:.0f} ms)")
    record_property("apply_to_first_email_seconds", latencies)
    assert worst < TARGET_SECONDS


def test_a_refused_update_keeps_the_previous_version_serving(
    cluster: Cluster, operator: Operator, stack: Stack,
) -> None:
    cluster.create(resource("steady", "Steady v1"))
    wait_ready(cluster, "team-a", "steady", status="True", generation=1)
    assert stack.subject_of(stack.send("steady")) == "Steady v1"
    cluster.patch_spec("team-a", "steady", {"subject": "Steady v2 {{ broken"})
    wait_ready(cluster, "team-a", "steady", status="False", generation=2, reason="RenderError")
    assert stack.subject_of(stack.send("steady")) == "Steady v1"


def test_a_stored_template_overrides_the_builtin_until_deleted(
    cluster: Cluster, operator: Operator, stack: Stack,
) -> None:
    assert stack.subject_of(stack.send("greeting")) == "Built-in greeting for Ada"
    cluster.create(resource("greeting", "Team greeting for {{ name }}"))
    wait_ready(cluster, "team-a", "greeting", status="True", generation=1)
    wait_for(lambda: stack.subject_of(stack.send("greeting")) == "Team greeting for Ada",
             message="the stored template to win")
    cluster.delete("team-a", "greeting")
    wait_for(lambda: cluster.get("team-a", "greeting") is None, message="deletion")
    wait_for(lambda: stack.subject_of(stack.send("greeting")) == "Built-in greeting for Ada",
             message="the built-in template to serve again")
