"""Layouts and partials through the real operator on the kmock emulator: a layout change
re-validates every dependant before its new version serves; refusals land on the dependant."""

from __future__ import annotations

from typing import Any

import pytest

from mailcore.store import TemplateStoreWriter

from ..support import RedisServer, wait_for
from .conftest import Cluster, Operator, wait_ready

pytestmark = pytest.mark.slow

API = "email.platform.example.com/v1"


def obj(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "EmailTemplate",
            "metadata": {"name": name, "namespace": "team-b"}, "spec": spec}


def layout(footer: str, sample: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "layout", "sampleData": sample or {},
            "mjml": "<mjml><mj-body>{{ content }}<mj-section><mj-column>"
                    f"<mj-text>{footer}</mj-text>{{% include \"legal\" %}}</mj-column>"
                    "</mj-section></mj-body></mjml>"}


def template(sample: dict[str, Any]) -> dict[str, Any]:
    return {"subject": "Hi {{ name }}", "layout": "frame", "sampleData": sample,
            "mjml": "<mj-section><mj-column><mj-text>Hello {{ name }}</mj-text></mj-column>"
                    "</mj-section>"}


@pytest.fixture
def writer(store_redis: RedisServer) -> TemplateStoreWriter:
    return TemplateStoreWriter(store_redis.client(), "email-service")


def stored_mjml(writer: TemplateStoreWriter, key: str) -> str:
    record = writer.get(key)
    assert record is not None and record.source.mjml is not None
    return record.source.mjml


def test_a_layout_change_revalidates_dependants_and_one_refuses_it(
    cluster: Cluster, operator: Operator, writer: TemplateStoreWriter,
) -> None:
    # A dependant applied before its layout waits for it, then serves.
    cluster.create(obj("early", template({"name": "Eve", "divisor": 2})))
    condition = wait_ready(cluster, "team-b", "early", status="False", generation=1,
                           reason="MissingReference")
    assert "layout 'frame' is not stored in namespace team-b" in condition["message"]
    cluster.create(obj("legal", {"kind": "partial", "mjml": "<mj-text>© Team B</mj-text>"}))
    wait_ready(cluster, "team-b", "legal", status="True", generation=1)
    cluster.create(obj("frame", layout("Footer v1")))
    wait_ready(cluster, "team-b", "frame", status="True", generation=1)
    wait_ready(cluster, "team-b", "early", status="True", generation=1)

    cluster.create(obj("sturdy", template({"name": "Ada", "divisor": 5})))
    cluster.create(obj("fragile", template({"name": "Bob"})))
    for name in ("sturdy", "fragile"):
        wait_ready(cluster, "team-b", name, status="True", generation=1)
        assert "Footer v1" in stored_mjml(writer, f"team-b/{name}")
        assert "© Team B" in stored_mjml(writer, f"team-b/{name}")
    fragile_v1 = writer.get("team-b/fragile").version  # type: ignore[union-attr]
    sturdy_v1 = writer.get("team-b/sturdy").version  # type: ignore[union-attr]
    status = cluster.get("team-b", "sturdy")["status"]  # type: ignore[index]
    assert set(status["parts"]) == {"team-b/frame", "team-b/legal"}

    # v2 divides by the data's divisor: "fragile"'s sample data has none.
    cluster.patch_spec("team-b", "frame", layout("Footer v2 {{ 10 // divisor }}", {"divisor": 1}))
    wait_ready(cluster, "team-b", "frame", status="True", generation=2)
    wait_for(lambda: "Footer v2" in stored_mjml(writer, "team-b/sturdy"),
             message="sturdy to serve with the new layout")
    assert writer.get("team-b/sturdy").version != sturdy_v1  # type: ignore[union-attr]
    condition = wait_for(
        lambda: (c := cluster.ready("team-b", "fragile")) and c["status"] == "False" and c,
        message="fragile's condition to report the layout")
    assert condition["reason"] == "RenderError"
    assert "team-b/frame@" in condition["message"]
    assert writer.get("team-b/fragile").version == fragile_v1  # type: ignore[union-attr]
    assert "Footer v1" in stored_mjml(writer, "team-b/fragile")  # the old version serves
    wait_for(lambda: "Footer v2" in stored_mjml(writer, "team-b/early"), message="early")

    # A partial change reaches dependants through the layout that includes it.
    cluster.patch_spec("team-b", "legal", {"mjml": "<mj-text>© Team B GmbH</mj-text>"})
    wait_for(lambda: "© Team B GmbH" in stored_mjml(writer, "team-b/sturdy"),
             message="the new partial in sturdy")


def test_include_cycles_and_self_references_are_refused(
    cluster: Cluster, operator: Operator,
) -> None:
    cluster.create(obj("self", {"kind": "partial", "mjml": '<p>{% include "self" %}</p>'}))
    condition = wait_ready(cluster, "team-b", "self", status="False", generation=1,
                           reason="ReferenceCycle")
    assert "include cycle: team-b/self → team-b/self" in condition["message"]

    cluster.create(obj("ping", {"kind": "partial", "mjml": "<p>ping</p>"}))
    wait_ready(cluster, "team-b", "ping", status="True", generation=1)
    cluster.create(obj("pong", {"kind": "partial", "mjml": '<p>{% include "ping" %}</p>'}))
    wait_ready(cluster, "team-b", "pong", status="True", generation=1)
    cluster.patch_spec("team-b", "ping", {"mjml": '<p>{% include "pong" %}</p>'})
    condition = wait_ready(cluster, "team-b", "ping", status="False", generation=2,
                           reason="ReferenceCycle")
    assert "team-b/ping → team-b/pong → team-b/ping" in condition["message"]

    cluster.create(obj("sneaky", {"subject": "x", "html": '<p>{% include "../../etc/passwd" %}'
                                  "</p>"}))
    condition = wait_ready(cluster, "team-b", "sneaky", status="False", generation=1,
                           reason="InvalidTemplate")
    assert "is not a resource name" in condition["message"]
