"""The real kopf operator (``email-service operator``) against the kmock emulator and a real Redis.

Each test applies EmailTemplates over HTTP like kubectl would, then waits (with a deadline) for
what the operator writes back: status conditions, status.version, Events, the finalizer, and the
store's contents.
"""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

import kmock
import pytest
import yaml

from mailcore.store import RedisTemplateStore, TemplateStoreWriter
from mailcore.template_resources import FINALIZER, compile_resource

from ..support import RedisServer, wait_for
from .conftest import EXAMPLES, NAMESPACES, TEMPLATES, Cluster, Operator, wait_ready

pytestmark = pytest.mark.slow

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def template(name: str, namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": "Hello {{ name }}",
        "html": "<p>Hello {{ name }}</p>",
        "sampleData": {"name": "Ada"},
    }
    body.update(spec)
    return {"apiVersion": "email.platform.example.com/v1", "kind": "EmailTemplate",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {k: v for k, v in body.items() if v is not None}}


def store(redis_server: RedisServer) -> TemplateStoreWriter:
    return TemplateStoreWriter(redis_server.client(), "email-service")


def events(cluster: Cluster, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(namespace, name) if e["reason"] == reason]


def test_valid_template_is_compiled_stored_and_reported(
    cluster: Cluster, operator: Operator, store_redis: RedisServer,
) -> None:
    example = yaml.safe_load((EXAMPLES / "welcome.yaml").read_text())
    example["metadata"]["namespace"] = "team-a"
    cluster.create(example)
    ready = wait_ready(cluster, "team-a", "welcome", status="True", generation=1)
    expected = compile_resource("team-a/welcome", example["spec"]).version

    assert ready["reason"] == "Compiled"
    assert expected in ready["message"] and "team-a/welcome" in ready["message"]
    assert RFC3339.match(ready["lastTransitionTime"])
    obj = cluster.get("team-a", "welcome")
    assert obj is not None
    assert obj["status"]["version"] == expected
    assert obj["status"]["observedGeneration"] == 1
    assert obj["status"]["template"] == "team-a/welcome"
    assert [c["type"] for c in obj["status"]["conditions"]] == ["Ready"]
    assert set(obj["status"]) == {"conditions", "version", "latestVersion", "observedGeneration",
                                  "template"}
    assert obj["status"]["latestVersion"] == expected  # no spec.pinnedVersion
    assert obj["metadata"]["finalizers"] == [FINALIZER]

    stored = store(store_redis).get("team-a/welcome")
    assert stored is not None and stored.version == expected
    assert stored.source.locales["de"].subject is not None
    assert stored.origin["generation"] == 1 and stored.origin["kind"] == "EmailTemplate"
    event = wait_for(lambda: events(cluster, "team-a", "welcome", "Compiled"),
                     message="the Compiled event")[0]
    assert event["type"] == "Normal" and expected in event["message"]
    assert event["involvedObject"]["kind"] == "EmailTemplate"


def test_invalid_keeps_the_last_good_version_until_fixed(
    cluster: Cluster, operator: Operator, store_redis: RedisServer,
) -> None:
    good = template("news", subject="News for {{ name }}")
    cluster.create(good)
    first = wait_ready(cluster, "team-a", "news", status="True", generation=1)
    v1 = compile_resource("team-a/news", good["spec"]).version

    # Malformed MJML: refused, v1 keeps serving.
    cluster.patch_spec("team-a", "news", {"html": None, "mjml": "<mjml><mj-body><mj-section>"})
    refused = wait_ready(cluster, "team-a", "news", status="False", generation=2,
                         reason="InvalidMJML")
    assert "MJML" in refused["message"]
    assert refused["lastTransitionTime"] >= first["lastTransitionTime"]
    obj = cluster.get("team-a", "news")
    assert obj is not None and obj["status"]["version"] == v1
    assert obj["status"]["observedGeneration"] == 2
    stored = store(store_redis).get("team-a/news")
    assert stored is not None and stored.version == v1
    warning = wait_for(lambda: events(cluster, "team-a", "news", "InvalidMJML"),
                       message="the InvalidMJML event")[0]
    assert warning["type"] == "Warning"

    # A Jinja syntax error: the message carries the line.
    cluster.patch_spec("team-a", "news", {"mjml": None,
                                          "html": "<p>\nline two\n{{ name </p>"})
    syntax = wait_ready(cluster, "team-a", "news", status="False", generation=3,
                        reason="RenderError")
    assert syntax["message"].endswith("(line 3)")
    assert syntax["lastTransitionTime"] == refused["lastTransitionTime"]  # still False

    # Fixed: the new version is stored and reported.
    fixed = {"mjml": None, "html": "<p>Fixed for {{ name }}</p>"}
    cluster.patch_spec("team-a", "news", fixed)
    wait_ready(cluster, "team-a", "news", status="True", generation=4, reason="Compiled")
    v2 = compile_resource("team-a/news", {**good["spec"], "html": fixed["html"]}).version
    obj = cluster.get("team-a", "news")
    assert obj is not None and obj["status"]["version"] == v2 != v1
    stored = store(store_redis).get("team-a/news")
    assert stored is not None and stored.version == v2 and stored.origin["generation"] == 4
    assert "failed permanently" in operator.output()  # no retries of an invalid spec


@pytest.mark.parametrize(("spec", "reason"), [
    ({"variables": {"type": "object", "required": ["name"],
                    "properties": {"name": {"type": "integer"}}}}, "InvalidData"),
    ({"variables": {"type": "nonsense"}}, "InvalidSchema"),
    ({"html": "<p>{{ ''.__class__.__mro__ }}</p>"}, "RenderError"),
    ({"from": "Someone <ceo@evil-corp.example.org>"}, "SenderNotAllowed"),
    ({"html": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}"
              "{% endfor %}"}, "RenderBudgetExceeded"),
    ({"html": "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
              "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"}, "OutputTooLarge"),
    ({"html": "{{ '%999999999s'|format(name) }}"}, "OutputTooLarge"),
    ({"mjml": "<mjml><mj-body>" + "<mj-wrapper>" * 3000 + "</mj-wrapper>" * 3000
              + "</mj-body></mjml>", "html": None}, "MJMLTooDeep"),
])
def test_refusal_reasons(
    cluster: Cluster, operator: Operator, store_redis: RedisServer, spec: dict[str, Any],
    reason: str,
) -> None:
    name = f"refused-{reason.lower()}-{uuid.uuid4().hex[:6]}"
    cluster.create(template(name, **spec))
    condition = wait_ready(cluster, "team-a", name, status="False", generation=1, reason=reason)
    assert condition["message"]
    obj = cluster.get("team-a", name)
    assert obj is not None and "version" not in obj["status"]
    assert store(store_redis).get(f"team-a/{name}") is None
    assert operator.process.process is not None and operator.process.process.poll() is None


def test_delete_removes_from_the_store_then_releases_the_finalizer(
    cluster: Cluster, operator: Operator, store_redis: RedisServer,
) -> None:
    cluster.create(template("goodbye", namespace="team-b"))
    wait_ready(cluster, "team-b", "goodbye", status="True", generation=1)
    assert store(store_redis).get("team-b/goodbye") is not None

    cluster.delete("team-b", "goodbye")
    wait_for(lambda: cluster.get("team-b", "goodbye") is None, message="the object to go")
    assert store(store_redis).get("team-b/goodbye") is None
    removed = wait_for(lambda: events(cluster, "team-b", "goodbye", "Removed"),
                       message="the Removed event")
    assert "team-b/goodbye" in removed[0]["message"]


def test_store_outage_is_retried_until_it_recovers(
    cluster: Cluster, operator: Operator, store_redis: RedisServer,
) -> None:
    cluster.create(template("outage"))
    wait_ready(cluster, "team-a", "outage", status="True", generation=1)
    store_redis.stop()
    try:
        cluster.patch_spec("team-a", "outage", {"subject": "Changed during the outage"})
        down = wait_ready(cluster, "team-a", "outage", status="False", generation=2,
                          reason="StoreUnavailable")
        assert "unreachable" in down["message"]
        wait_for(lambda: events(cluster, "team-a", "outage", "StoreUnavailable"),
                 message="the StoreUnavailable event")
    finally:
        store_redis.start()
    wait_ready(cluster, "team-a", "outage", status="True", generation=2, reason="Compiled")
    stored = store(store_redis).get("team-a/outage")
    assert stored is not None and stored.source.subject == "Changed during the outage"


def test_deletion_waits_for_the_store_to_let_go(
    cluster: Cluster, operator: Operator, store_redis: RedisServer,
) -> None:
    cluster.create(template("held"))
    wait_ready(cluster, "team-a", "held", status="True", generation=1)
    store_redis.stop()
    try:
        cluster.delete("team-a", "held")
        wait_for(lambda: events(cluster, "team-a", "held", "StoreUnavailable"),
                 message="the StoreUnavailable event on deletion")
        held = cluster.get("team-a", "held")
        assert held is not None  # the finalizer holds it while the store is unreachable
        assert held["metadata"]["deletionTimestamp"]
        assert held["metadata"]["finalizers"] == [FINALIZER]
    finally:
        store_redis.start()
    wait_for(lambda: cluster.get("team-a", "held") is None, message="the object to go")
    assert store(store_redis).get("team-a/held") is None


def test_bare_names_resolve_in_the_configured_namespace_order(
    cluster: Cluster, operator: Operator, store_redis: RedisServer,
) -> None:
    reader = RedisTemplateStore(store_redis.url, "email-service", NAMESPACES,
                                refresh_seconds=60)
    try:
        cluster.create(template("shared", namespace="team-b", subject="From B"))
        wait_for(lambda: reader.get("shared"), message="the reader to see team-b/shared")
        source = reader.get("shared")
        assert source is not None and source.subject == "From B"

        cluster.create(template("shared", namespace="team-a", subject="From A"))
        # The broadcast refreshes the reader at once (the poll is a minute away).
        wait_for(lambda: (s := reader.get("shared")) is not None and s.subject == "From A",
                 message="team-a/shared to win the bare name")
        qualified = reader.get("team-b/shared")
        assert qualified is not None and qualified.subject == "From B"
        assert {"shared", "team-a/shared", "team-b/shared"} <= set(reader.names())
    finally:
        reader.close()


def test_only_configured_namespaces_are_watched(cluster: Cluster, operator: Operator) -> None:
    assert cluster.emulator is not None
    watched = {request.namespace for request in list(cluster.emulator)
               if request.action == kmock.action.WATCH and request.resource == TEMPLATES}
    assert watched == set(NAMESPACES)
    # kmock gap 1 is closed: kopf listed the namespaces (through the emulator subclass).
    assert any(request.resource == "v1/namespaces" and request.action == kmock.action.LIST
               for request in list(cluster.emulator))


def test_changes_made_while_the_operator_was_down_are_handled_on_restart(
    cluster: Cluster, operator: Operator, store_redis: RedisServer,
) -> None:
    cluster.create(template("resumed"))
    wait_ready(cluster, "team-a", "resumed", status="True", generation=1)
    assert operator.process.stop() == 0, operator.output()[-3000:]
    try:
        cluster.patch_spec("team-a", "resumed", {"subject": "Changed while down"})
    finally:
        operator.process.start()
        operator.wait_started()
    wait_ready(cluster, "team-a", "resumed", status="True", generation=2)
    stored = store(store_redis).get("team-a/resumed")
    assert stored is not None and stored.source.subject == "Changed while down"
    obj = cluster.get("team-a", "resumed")
    assert obj is not None and obj["metadata"]["finalizers"] == [FINALIZER]


def test_a_template_lost_by_the_store_is_put_back(
    cluster: Cluster, operator: Operator, store_redis: RedisServer,
) -> None:
    cluster.create(template("lost"))
    wait_ready(cluster, "team-a", "lost", status="True", generation=1)
    writer = store(store_redis)
    stored = writer.get("team-a/lost")
    assert stored is not None
    store_redis.client().flushall()  # a Redis restarted without persistence
    wait_for(lambda: writer.get("team-a/lost"), timeout=10,
             message="the resync timer to put the template back")
    again = writer.get("team-a/lost")
    assert again is not None and again.version == stored.version


def test_status_patches_never_touch_the_spec(cluster: Cluster, operator: Operator) -> None:
    body = template("untouched", text="Plain {{ name }}")
    cluster.create(copy.deepcopy(body))
    wait_ready(cluster, "team-a", "untouched", status="True", generation=1)
    obj = cluster.get("team-a", "untouched")
    assert obj is not None and obj["spec"] == body["spec"]
    assert obj["metadata"]["generation"] == 1  # status and finalizer patches keep generation
