"""``/v1/webhooks`` against a real Redis: registration, scoping, rotation, and hostile input."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mailcore.lifecycle import EVENT_TYPES
from mailcore.tokens import mint_token
from service.app import create_app

from .support import TEST_SECRET, RedisServer, app_settings


def _auth(subject: str, *scopes: str) -> dict[str, str]:
    token = (mint_token(TEST_SECRET, subject=subject, scope=" ".join(scopes)) if scopes
             else mint_token(TEST_SECRET, subject=subject))
    return {"Authorization": f"Bearer {token}"}


ADMIN = _auth("shop", "email:admin")
READER = _auth("shop")
OTHER_ADMIN = _auth("billing", "email:admin")
URL = "https://hooks.example.com/email"
GOOD = {"url": URL, "events": ["sent", "dead"]}


@pytest.fixture
def declared(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps([{
        "id": "ops-audit", "url": "http://audit.ops.svc.cluster.local/hooks",
        "events": list(EVENT_TYPES), "secrets": ["whsec_" + "QUJD" * 8]}]))
    return path


@pytest.fixture
def client(redis_server: RedisServer, declared: Path) -> Iterator[TestClient]:
    prefix = f"hooks-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix, QUEUE_NAME=prefix,
                            WEBHOOKS_ALLOWED_HOSTS="hooks.example.com,*.svc.cluster.local",
                            WEBHOOKS_MAX_ENDPOINTS="3", WEBHOOKS_ENDPOINTS_FILE=str(declared))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_register_list_change_rotate_delete(client: TestClient) -> None:
    created = client.post("/v1/webhooks", headers=ADMIN, json={**GOOD, "description": "prod"})
    assert created.status_code == 201, created.text
    body = created.json()
    secret, endpoint_id = body["secret"], body["id"]
    assert secret.startswith("whsec_") and endpoint_id.startswith("ep_")
    assert body["events"] == ["sent", "dead"] and body["global"] is False

    # Listed and read without the secret, by any token of the same caller.
    listed = client.get("/v1/webhooks", headers=READER).json()["endpoints"]
    assert [e["id"] for e in listed] == [endpoint_id]
    shown = client.get(f"/v1/webhooks/{endpoint_id}", headers=READER)
    assert shown.status_code == 200 and secret not in shown.text and "whsec_" not in shown.text

    # Another caller sees nothing of it, even with the admin scope.
    assert client.get("/v1/webhooks", headers=OTHER_ADMIN).json()["endpoints"][0]["id"] \
        == "ops-audit"  # only the declared global one, to admins
    for method in ("get", "patch", "delete"):
        kwargs = {"json": {"enabled": False}} if method == "patch" else {}
        answer = getattr(client, method)(f"/v1/webhooks/{endpoint_id}", headers=OTHER_ADMIN,
                                         **kwargs)
        assert answer.status_code == 404
    assert client.post(f"/v1/webhooks/{endpoint_id}/rotate-secret",
                       headers=OTHER_ADMIN).status_code == 404

    # Changing and deleting need the admin scope.
    assert client.patch(f"/v1/webhooks/{endpoint_id}", headers=READER,
                        json={"enabled": False}).status_code == 403
    changed = client.patch(f"/v1/webhooks/{endpoint_id}", headers=ADMIN,
                           json={"events": ["bounced"], "enabled": False})
    assert changed.status_code == 200
    assert changed.json()["events"] == ["bounced"] and changed.json()["enabled"] is False
    assert changed.json()["description"] == "prod"

    rotated = client.post(f"/v1/webhooks/{endpoint_id}/rotate-secret", headers=ADMIN)
    assert rotated.status_code == 200
    assert rotated.json()["secret"] != secret and rotated.json()["previous_secret_expires_at"]
    assert len(rotated.json()["secrets"]) == 2  # both valid during the overlap

    assert client.delete(f"/v1/webhooks/{endpoint_id}", headers=READER).status_code == 403
    assert client.delete(f"/v1/webhooks/{endpoint_id}", headers=ADMIN).status_code == 204
    assert client.get(f"/v1/webhooks/{endpoint_id}", headers=ADMIN).status_code == 404
    assert client.delete(f"/v1/webhooks/{endpoint_id}", headers=ADMIN).status_code == 404


def test_unauthenticated_and_unscoped(client: TestClient) -> None:
    assert client.get("/v1/webhooks").status_code == 401
    assert client.post("/v1/webhooks", json=GOOD).status_code == 401
    assert client.post("/v1/webhooks", headers=READER, json=GOOD).status_code == 403
    assert client.get("/v1/webhooks/dead-letters", headers=READER).status_code == 403
    forged = {"Authorization": f"Bearer {mint_token('another-secret-0123456789abcdef0123', subject='shop', scope='email:admin')}"}  # noqa: E501
    assert client.post("/v1/webhooks", headers=forged, json=GOOD).status_code == 401


def test_an_owner_may_register_only_so_many(client: TestClient) -> None:
    for _ in range(3):
        assert client.post("/v1/webhooks", headers=ADMIN, json=GOOD).status_code == 201
    over = client.post("/v1/webhooks", headers=ADMIN, json=GOOD)
    assert over.status_code == 409 and over.json()["error"] == "too_many_endpoints"


@pytest.mark.parametrize(("body", "field"), [
    # Types.
    ({**GOOD, "url": 42}, "url"), ({**GOOD, "url": None}, "url"), ({**GOOD, "url": [URL]}, "url"),
    ({**GOOD, "events": "sent"}, "events"), ({**GOOD, "events": [1]}, "events.0"),
    ({**GOOD, "events": {"sent": True}}, "events"), ({**GOOD, "enabled": "yes"}, "enabled"),
    ({**GOOD, "description": 5}, "description"), ({"events": ["sent"]}, "url"),
    ({"url": URL}, "events"),
    # Sizes.
    ({**GOOD, "url": "https://hooks.example.com/" + "a" * 5000}, "url"),
    ({**GOOD, "description": "d" * 201}, "description"),
    ({**GOOD, "events": ["sent"] * 11}, "events"), ({**GOOD, "events": []}, "events"),
    # Values.
    ({**GOOD, "events": ["sent", "sent"]}, "events"),
    ({**GOOD, "events": ["delivered"]}, "events.0"),
    ({**GOOD, "events": ["SENT"]}, "events.0"), ({**GOOD, "events": ["*"]}, "events.0"),
    ({**GOOD, "description": "line\nbreak"}, "description"),
    ({**GOOD, "owner": "jwt::someone-else"}, "owner"), ({**GOOD, "secret": "whsec_x"}, "secret"),
    # Nesting.
    ({**GOOD, "events": [["sent"]]}, "events.0"), ({**GOOD, "url": {"href": URL}}, "url"),
    # The SSRF guard.
    ({**GOOD, "url": "https://evil.example.net/"}, "url"),
    ({**GOOD, "url": "https://hooks.example.com@evil.example.net/"}, "url"),
    ({**GOOD, "url": "https://h\u043e\u043eks.example.com/"}, "url"),  # Cyrillic o's
    ({**GOOD, "url": "https://xn--hks-qdda.example.com/"}, "url"),  # their A-label: not listed
    ({**GOOD, "url": "http://hooks.example.com/"}, "url"),
    ({**GOOD, "url": "http://2130706433/"}, "url"),
    ({**GOOD, "url": "http://[::ffff:127.0.0.1]/"}, "url"),
])
def test_malformed_registrations_are_refused(client: TestClient, body: dict[str, object],
                                             field: str) -> None:
    answer = client.post("/v1/webhooks", headers=ADMIN, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["details"][0]["field"] == field
    assert client.get("/v1/webhooks", headers=ADMIN).json()["endpoints"][0]["id"] == "ops-audit"
    assert len(client.get("/v1/webhooks", headers=ADMIN).json()["endpoints"]) == 1


@pytest.mark.parametrize(("content", "status"), [
    (b"", 400), (b"not json", 400), (b"[1, 2]", 422), (b'"https://x"', 422),
    (b"\xff\xfe", 400), (b'{"url": "' + b"a" * 20_000 + b'"}', 413),
    (json.dumps({**GOOD, "events": ["sent"] * 10_000}).encode(), 413),  # a huge filter
])
def test_bodies_that_are_no_registration(client: TestClient, content: bytes, status: int) -> None:
    answer = client.post("/v1/webhooks", headers={**ADMIN, "content-type": "application/json"},
                         content=content)
    assert answer.status_code == status, answer.text


def test_changes_are_checked_like_registrations(client: TestClient) -> None:
    endpoint_id = client.post("/v1/webhooks", headers=ADMIN, json=GOOD).json()["id"]
    for change in ({"url": "http://169.254.169.254/"}, {"events": ["nope"]}, {"id": "ep_x"},
                   {"enabled": 1}, {"events": None, "x": 1}):
        answer = client.patch(f"/v1/webhooks/{endpoint_id}", headers=ADMIN, json=change)
        assert answer.status_code == 422, (change, answer.text)
    assert client.get(f"/v1/webhooks/{endpoint_id}", headers=ADMIN).json()["url"] == URL


@pytest.mark.parametrize("endpoint_id", ["x", "ep_", "ep_" + "0" * 31, "..%2Fdead-letters",
                                         "ep_" + "Z" * 32, "%00", "ops-audit"])
def test_unknown_ids_are_not_found(client: TestClient, endpoint_id: str) -> None:
    assert client.get(f"/v1/webhooks/{endpoint_id}", headers=ADMIN).status_code == 404
    assert client.delete(f"/v1/webhooks/{endpoint_id}", headers=ADMIN).status_code in (404, 405)


def test_dead_letters_are_listed_to_their_owner_only(client: TestClient) -> None:
    answer = client.get("/v1/webhooks/dead-letters", headers=ADMIN)
    assert answer.status_code == 200 and answer.json() == {"dead_letters": []}
    for limit in ("0", "1001", "x", "-1"):
        assert client.get(f"/v1/webhooks/dead-letters?limit={limit}",
                          headers=ADMIN).status_code == 422


@pytest.mark.parametrize("content", [
    "{", '{"id": 1}',
    json.dumps([{"id": "x", "url": "https://evil.example.net/", "events": ["sent"],
                            "secrets": ["whsec_" + "QUJD" * 8]}]),
    json.dumps([{"id": "x", "url": "http://a.ns.svc.cluster.local/", "events": ["sent"],
                 "secrets": ["not-a-secret"]}]),
    json.dumps([{"id": "x", "url": "http://a.ns.svc.cluster.local/", "events": ["sent"],
                 "secrets": ["whsec_" + "QUJD" * 8]}] * 2),
])
def test_a_bad_endpoints_file_stops_the_process(tmp_path: Path, content: str,
                                                redis_server: RedisServer) -> None:
    from mailcore.errors import InvalidRequest
    from mailcore.webhook_endpoints import load_declared

    path = tmp_path / "endpoints.json"
    path.write_text(content)
    settings = app_settings(redis_server.url, WEBHOOKS_ENDPOINTS_FILE=str(path))
    with pytest.raises(InvalidRequest):
        load_declared(path, settings.webhooks.policy)
