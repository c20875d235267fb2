"""The kmock emulator subclass: the API-server semantics kopf relies on (gaps closed).

Uses kmock's own pytest fixture (``kmock``) with our class, as kmock intends.
"""

from __future__ import annotations

from typing import Any

import kmock
import pytest

from .emulator import Emulator

pytestmark = [pytest.mark.asyncio, pytest.mark.kmock(cls=Emulator)]

RESOURCE = "email.platform.example.com/v1/emailtemplates"
BASE = "/apis/email.platform.example.com/v1/namespaces/ns/emailtemplates"


def declare(emulator: Any) -> None:
    emulator.resources[RESOURCE] = kmock.ResourceInfo(
        kind="EmailTemplate", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "create", "patch", "delete"})
    emulator.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False)
    emulator.objects["v1/namespaces", None, "ns"] = {"metadata": {"name": "ns"}}


async def create(emulator: Any, name: str = "t") -> dict[str, Any]:
    response = await emulator.post(BASE, json={
        "apiVersion": "email.platform.example.com/v1", "kind": "EmailTemplate",
        "metadata": {"name": name, "namespace": "ns"}, "spec": {"subject": "a"}})
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def patch(emulator: Any, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    response = await emulator.patch(path, json=body)
    return response.status, dict(await response.json())


async def test_namespaces_list_is_served(kmock: Any) -> None:  # gap 1
    declare(kmock)
    response = await kmock.get("/api/v1/namespaces")
    assert response.status == 200
    assert [item["metadata"]["name"] for item in (await response.json())["items"]] == ["ns"]


async def test_create_assigns_server_metadata(kmock: Any) -> None:  # gap 2
    declare(kmock)
    obj = await create(kmock)
    meta = obj["metadata"]
    assert meta["generation"] == 1 and meta["resourceVersion"] and meta["uid"]
    assert meta["creationTimestamp"].endswith("Z")
    response = await kmock.post("/api/v1/namespaces/ns/events",
                                json={"metadata": {"generateName": "ev-"}, "reason": "X"})
    assert (await response.json())["metadata"]["name"].startswith("ev-")


async def test_patches_bump_versions_and_keep_status_apart(kmock: Any) -> None:
    declare(kmock)
    obj = await create(kmock)
    rv = obj["metadata"]["resourceVersion"]

    status, body = await patch(kmock, f"{BASE}/t", {"spec": {"subject": "b"}})
    assert status == 200 and body["metadata"]["generation"] == 2
    assert body["metadata"]["resourceVersion"] != rv

    # status through the main resource is ignored; through /status it is kept, generation stays.
    status, body = await patch(kmock, f"{BASE}/t", {"status": {"x": 1}})
    assert "status" not in body and body["metadata"]["generation"] == 2
    status, body = await patch(kmock, f"{BASE}/t/status", {"status": {"x": 1},
                                                            "spec": {"subject": "z"}})
    assert body["status"] == {"x": 1} and body["spec"] == {"subject": "b"}
    assert body["metadata"]["generation"] == 2

    # metadata-only change: new resourceVersion, same generation.
    rv = body["metadata"]["resourceVersion"]
    status, body = await patch(kmock, f"{BASE}/t", {"metadata": {"labels": {"a": "b"}}})
    assert body["metadata"]["resourceVersion"] != rv and body["metadata"]["generation"] == 2


async def test_failed_json_patch_test_answers_422(kmock: Any) -> None:
    declare(kmock)
    obj = await create(kmock)
    stale: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "stale"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]
    status, _ = await patch(kmock, f"{BASE}/t", stale)
    assert status == 422
    fresh = [{**stale[0], "value": obj["metadata"]["resourceVersion"]}, stale[1]]
    status, body = await patch(kmock, f"{BASE}/t", fresh)
    assert status == 200 and body["metadata"]["finalizers"] == ["f"]


async def test_delete_waits_for_finalizers(kmock: Any) -> None:
    declare(kmock)
    await create(kmock)
    await patch(kmock, f"{BASE}/t", {"metadata": {"finalizers": ["f"]}})
    response = await kmock.delete(f"{BASE}/t")
    assert response.status == 200
    fetched = await (await kmock.get(f"{BASE}/t")).json()
    assert fetched["metadata"]["deletionTimestamp"]
    await patch(kmock, f"{BASE}/t", {"metadata": {"finalizers": None}})
    assert (await kmock.get(f"{BASE}/t")).status == 404
