"""The operator's version collector, live: with a history of one version, a version that queued
messages still reference is kept until they are delivered; an unreferenced one goes."""

from __future__ import annotations

import pytest

from mailcore.store import StoreKeys

from ..support import RedisServer, wait_for
from .conftest import Cluster, Operator, wait_ready
from .test_versions_live import Stack, resource, serving, spec
from .test_versions_live import stack as stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def operator_overrides() -> dict[str, str]:
    return {"TEMPLATE_HISTORY_VERSIONS": "1"}


def test_referenced_versions_outlive_the_history_and_go_once_delivered(
    cluster: Cluster, operator: Operator, stack: Stack, store_redis: RedisServer,
) -> None:
    client = store_redis.client()
    archive_key = StoreKeys("email-service").archive

    def kept() -> set[str]:
        fields: list[bytes] = client.hkeys(archive_key)  # type: ignore[assignment]
        return {f.decode() for f in fields if f.startswith(b"team-a/collected@")}

    stack.stop_worker()
    cluster.create(resource("collected", "name", "Old"))
    wait_ready(cluster, "team-a", "collected", status="True", generation=1)
    v1 = serving(cluster, "collected")["version"]
    wait_for(lambda: stack.http.get("/v1/templates/collected").status_code == 200,
             message="the ingress to know v1")
    held = stack.send("collected", {"name": "Ada"})[0]

    cluster.patch_spec("team-a", "collected", spec("name", "Mid"))
    wait_ready(cluster, "team-a", "collected", status="True", generation=2)
    v2 = serving(cluster, "collected")["version"]
    cluster.patch_spec("team-a", "collected", spec("name", "New"))
    wait_ready(cluster, "team-a", "collected", status="True", generation=3)
    v3 = serving(cluster, "collected")["version"]

    # History of one: v3 serves, v2 (nothing references it) goes, v1 stays for the message.
    wait_for(lambda: kept() == {f"team-a/collected@{v1}", f"team-a/collected@{v3}"},
             message="the collector to drop v2 only", timeout=20)
    assert f"team-a/collected@{v2}" not in kept()

    stack.start_worker()
    try:
        assert stack.delivered_subject(held) == "Old for Ada"
    finally:
        stack.stop_worker()
    wait_for(lambda: kept() == {f"team-a/collected@{v3}"},
             message="the collector to drop v1 once its message was sent", timeout=20)
