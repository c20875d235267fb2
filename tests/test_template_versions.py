"""The ingress and template versions: pins at acceptance, ``template_version``, the versions API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from harness.ports import free_port
from mailcore.config import Settings
from mailcore.rendering import TemplateError, TemplateSource
from mailcore.store import RedisTemplateStore, StoreKeys, TemplateStoreWriter
from mailcore.templates import TemplateRegistry, load_template_dir
from mailcore.tokens import mint_token
from mailcore.transports import TransientDeliveryError
from mailcore.transports.outbox import OutboxTransport
from service.app import create_app
from workers.delivery import Deliverer

from .support import REPO, TEST_SECRET, RedisServer, wait_for

AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='versions')}"}


class Setup:
    def __init__(self, client: TestClient, writer: TemplateStoreWriter, queue: str,
                 prefix: str, redis_server: RedisServer) -> None:
        self.client = client
        self.writer = writer
        self.queue = queue
        self.prefix = prefix
        self.redis = redis_server.client()

    def put(self, label: str, variable: str = "name") -> str:
        source = TemplateSource(
            name="default/news", subject=f"{label} {{{{ {variable} }}}}",
            html=f"<p>{{{{ {variable} }}}}</p>", sample_data={variable: "x"},
            variables={"type": "object", "required": [variable]})
        self.writer.put("default/news", source, {"kind": "EmailTemplate", "generation": 1})
        wait_for(lambda: self.client.get("/v1/templates/news", headers=AUTH).json()
                 .get("version") == source.version, message="the ingress to see the version")
        return source.version

    def send(self, **body: Any) -> Any:
        message = {"template": "news", "to": "ada@example.com", "data": {"name": "Ada"}}
        message.update(body)
        return self.client.post("/v1/messages", json=message, headers=AUTH)

    def last_job(self) -> dict[str, Any]:
        ids = self.redis.lrange(f"dramatiq:{self.queue}", 0, -1)
        raw = self.redis.hget(f"dramatiq:{self.queue}.msgs", ids[-1])
        assert raw is not None
        job: dict[str, Any] = orjson.loads(raw)["args"][0]
        return job


@pytest.fixture
def setup(redis_server: RedisServer) -> Iterator[Setup]:
    prefix = f"v-{uuid.uuid4().hex[:8]}"
    queue = f"versions-{uuid.uuid4().hex[:6]}"
    settings = Settings.from_env({
        "REDIS_URL": redis_server.url, "JWT_SECRET": TEST_SECRET, "QUEUE_NAME": queue,
        "SENDER_EMAIL": "noreply@shop.example.com", "EVENTS_ENABLED": "false",
        "SECRETS_DIR": "/nonexistent", "RESET_LIMIT_PER_RECIPIENT": "off",
        "KEY_PREFIX": prefix, "TEMPLATE_REFRESH_SECONDS": "0.1",
    })
    writer = TemplateStoreWriter(redis_server.client(), prefix)
    with TestClient(create_app(settings)) as client:
        yield Setup(client, writer, queue, prefix, redis_server)
    writer.close()


def test_a_message_is_pinned_to_the_version_it_was_validated_against(setup: Setup) -> None:
    v1 = setup.put("One")
    response = setup.send()
    assert response.status_code == 202, response.text
    message_id = response.json()["id"]
    job = setup.last_job()
    assert job["template_key"] == "default/news"
    assert job["request"]["template_version"] == v1
    status = setup.client.get(f"/v1/messages/{message_id}", headers=AUTH).json()
    assert status["template_version"] == v1
    refs = setup.redis.zrange(StoreKeys(setup.prefix).refs("default/news", v1), 0, -1)
    assert refs == [message_id.encode()]


def test_a_send_may_name_an_older_kept_version(setup: Setup) -> None:
    v1 = setup.put("One")
    v2 = setup.put("Two", variable="user")
    assert setup.send().status_code == 422  # v2 wants "user"
    response = setup.send(template_version=v1)
    assert response.status_code == 202, response.text
    assert setup.last_job()["request"]["template_version"] == v1
    assert setup.send(data={"user": "Bob"}, template_version=v2).status_code == 202
    assert setup.last_job()["request"]["template_version"] == v2
    # Validated against the named version: v1's data does not fit v2 and vice versa.
    refused = setup.send(data={"user": "Bob"}, template_version=v1)
    assert refused.status_code == 422 and refused.json()["error"] == "invalid_data"


def test_an_unknown_version_is_refused(setup: Setup) -> None:
    setup.put("One")
    response = setup.send(template_version="0123456789abcdef")
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "unknown_template_version"
    assert body["details"] == [{"field": "template_version",
                                "message": "no such kept version"}]


#: Sixteen characters that are digits to str.isdigit, not hexadecimal ASCII.
ARABIC_DIGITS = "".join(chr(0x0660 + i) for i in range(10)) + "abcdef"


@pytest.mark.parametrize("value", [
    12345, 0x0123456789ABCDEF, 1.5, True, None, ["0123456789abcdef"], {"v": 1}, "",
    "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "../../../etc/passwd",
    "/etc/passwd", "0123456789abcde\x00", ARABIC_DIGITS, "a" * 60_000,
])
def test_template_version_shapes_are_refused(setup: Setup, value: Any) -> None:
    setup.put("One")
    response = setup.send(template_version=value)
    if value is None:  # the same as leaving it out
        assert response.status_code == 202
        return
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["details"][0]["field"] == "template_version"
    assert len(response.content) < 2000  # never echoes a huge value


def test_builtin_templates_accept_only_the_version_they_ship(setup: Setup) -> None:
    version = load_template_dir(REPO / "templates" / "password_reset").version
    body = {"template": "password_reset", "data": {"email": "ada@example.com", "code": "1"}}
    assert setup.send(**body, template_version=version).status_code == 202
    assert "template_key" not in setup.last_job()  # built-ins are not pinned
    refused = setup.send(**body, template_version="0123456789abcdef")
    assert refused.json()["error"] == "unknown_template_version"


def test_the_versions_api(setup: Setup) -> None:
    v1 = setup.put("One")
    v2 = setup.put("Two")
    listed = setup.client.get("/v1/templates/news/versions", headers=AUTH)
    assert listed.status_code == 200
    body = listed.json()
    assert body["serving"] == v2 and body["key"] == "default/news"
    assert [(v["version"], v["serving"]) for v in body["versions"]] == [(v2, True), (v1, False)]
    assert body["versions"][1]["origin"]["generation"] == 1
    one = setup.client.get(f"/v1/templates/default/news/versions/{v1}", headers=AUTH).json()
    assert one["version"] == v1 and one["source"]["subject"] == "One {{ name }}"
    for bad in ("0123456789abcdef", "zz", "A" * 16, "..%2F..%2Fetc", "0" * 5000):
        answer = setup.client.get(f"/v1/templates/news/versions/{bad}", headers=AUTH)
        assert answer.status_code == 404
        assert answer.json()["error"] in {"unknown_template_version", "unknown_template"}
    assert setup.client.get("/v1/templates/nope/versions", headers=AUTH).status_code == 404
    assert setup.client.get("/v1/templates/news/versions").status_code == 401
    builtin = setup.client.get("/v1/templates/password_reset/versions", headers=AUTH).json()
    assert builtin["versions"][0]["origin"] == {"kind": "builtin"}


# --- the worker side ---------------------------------------------------------------------------

def _deliverer(redis_url: str, prefix: str, outbox: Path) -> tuple[Deliverer, RedisTemplateStore]:
    settings = Settings.from_env({"REDIS_URL": redis_url, "SECRETS_DIR": "/nonexistent",
                                  "SENDER_EMAIL": "noreply@shop.example.com",
                                  "KEY_PREFIX": prefix})
    store = RedisTemplateStore(redis_url, prefix, ["default"], refresh_seconds=60)
    return Deliverer(settings, TemplateRegistry({}, store), OutboxTransport(outbox)), store


def _job(version: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "template_key": "default/news", "request": {
        "template": "news", "to": ["ada@example.com"], "data": {"name": "Ada"},
        "template_version": version}}


def test_a_worker_renders_the_pinned_version_or_fails_saying_it_is_gone(
    setup: Setup, redis_server: RedisServer, tmp_path: Path,
) -> None:
    v1 = setup.put("One")
    setup.put("Two")
    deliverer, store = _deliverer(redis_server.url, setup.prefix, tmp_path)
    try:
        delivered = deliverer.deliver(_job(v1))
        assert delivered.version == v1
        written = [f.read_text(errors="replace") for f in tmp_path.rglob("*") if f.is_file()]
        assert any("Subject: One Ada" in text for text in written), written
        with pytest.raises(TemplateError) as gone:
            deliverer.deliver(_job("0123456789abcdef"))
        assert gone.value.reason == "UnknownTemplateVersion"
    finally:
        store.close()


def test_a_worker_retries_when_the_store_cannot_be_read(tmp_path: Path) -> None:
    deliverer, store = _deliverer(f"redis://127.0.0.1:{free_port()}/0", "nowhere", tmp_path)
    try:
        with pytest.raises(TransientDeliveryError):
            deliverer.deliver(_job("0123456789abcdef"))
    finally:
        store.close()
