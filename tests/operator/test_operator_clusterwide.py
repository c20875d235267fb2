"""``email-service operator --all-namespaces``: one cluster-wide watch, any namespace handled."""

from __future__ import annotations

import kmock
import pytest

from mailcore.store import TemplateStoreWriter

from ..support import RedisServer
from .conftest import TEMPLATES, Cluster, Operator, wait_ready

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def operator_args() -> list[str]:
    return ["--all-namespaces"]


def test_templates_in_any_namespace_are_handled(
    cluster: Cluster, operator: Operator, store_redis: RedisServer,
) -> None:
    cluster.create({"apiVersion": "email.platform.example.com/v1", "kind": "EmailTemplate",
                    "metadata": {"name": "anywhere", "namespace": "elsewhere"},
                    "spec": {"subject": "Hi", "html": "<p>Hi</p>"}})
    wait_ready(cluster, "elsewhere", "anywhere", status="True", generation=1)
    stored = TemplateStoreWriter(store_redis.client(), "email-service").get("elsewhere/anywhere")
    assert stored is not None
    assert cluster.emulator is not None
    watched = {request.namespace for request in list(cluster.emulator)
               if request.action == kmock.action.WATCH and request.resource == TEMPLATES}
    assert watched == {None}  # one cluster-wide watch
