"""The ingress at the door: auth, validation, limits — and that refused input queues nothing.

The app runs in-process against the session's real redis-server, on a queue no worker consumes,
so the queue length tells exactly what was accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from mailcore.tokens import mint_token
from service.app import create_app

from .support import TEST_SECRET, RedisServer, app_settings, make_settings, wait_for

QUEUE = "email-ingress-test"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    redis_server.client().delete(f"dramatiq:{QUEUE}")
    settings = app_settings(redis_server.url, QUEUE_NAME=QUEUE,
                            SENDER_EMAIL="noreply@shop.example.com", MAX_BODY_BYTES="65536",
                            RESET_LIMIT_PER_RECIPIENT="off")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def queued(redis_server: RedisServer) -> Any:
    return lambda: redis_server.client().llen(f"dramatiq:{QUEUE}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


GOOD = bearer(mint_token(TEST_SECRET, subject="billing"))


def send(client: TestClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/messages", json=body, headers=GOOD if headers is None else headers)


def valid_message(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"template": "password_reset", "to": "ada@example.com",
                            "data": {"email": "ada@example.com", "code": "123"}}
    body.update(overrides)
    return body


def test_valid_message_is_queued(client: TestClient, queued: Any) -> None:
    response = send(client, valid_message())
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert queued() == 1


# --- authentication ----------------------------------------------------------------------------

def _unsigned(claims: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


def _rsa_public_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


FUTURE = int(time.time()) + 3600


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing Authorization header"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer"),
        (bearer("not.a.jwt"), "malformed token"),
        (bearer(_unsigned({"sub": "x", "exp": FUTURE})), "algorithm 'none' is not allowed"),
        (bearer(jwt.encode({"sub": "x"}, TEST_SECRET, algorithm="HS256")), "'exp'"),
        (bearer(mint_token(TEST_SECRET, ttl_seconds=-120)), "token expired"),
        (bearer(mint_token("another-secret-of-sufficient-length!!")), "signature is invalid"),
        (bearer(jwt.encode({"sub": "x", "exp": FUTURE}, TEST_SECRET * 2, algorithm="HS512")),
         "'HS512' is not allowed"),
        (bearer(mint_token(TEST_SECRET, subject="\ud800")), "subject must be printable"),
        (bearer(mint_token(TEST_SECRET, subject="ops\r\nX-Injected: 1")),
         "subject must be printable"),
    ],
    ids=["missing", "basic", "garbage", "alg-none", "no-exp", "expired", "wrong-key", "hs512",
         "lone-surrogate-subject", "control-character-subject"],
)
def test_bad_tokens_are_refused(
    client: TestClient, queued: Any, headers: dict[str, str], reason: str
) -> None:
    response = send(client, valid_message(), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert reason in response.json()["message"]
    assert response.headers["www-authenticate"].startswith('Bearer realm="email-service"')
    assert queued() == 0


#: RFC 6750: auth-param values are quoted strings without quote or backslash inside.
_CHALLENGE = re.compile(r'Bearer realm="email-service"(, error="invalid_token", '
                        r'error_description="[\x20\x21\x23-\x5b\x5d-\x7e]*")?')


def _hs256(header: str, claims: str) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(header.encode())}.{b64(claims.encode())}"
    mac = hmac.new(TEST_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


_HS = '{"alg": "HS256"}'
_LIVE = '{"exp": ' + str(FUTURE) + ', '
HOSTILE_AUTHORIZATIONS = {
    "alg-list": _hs256('{"alg": ["HS256"]}', "{}"),
    "alg-object": _hs256('{"alg": {"a": 1}}', "{}"),
    "alg-quote": _hs256(r'{"alg": "HS256\", x=\"y"}', "{}"),
    "alg-non-latin1": _hs256(r'{"alg": "\u00e9\u8acb"}', "{}"),
    "alg-lone-surrogate": _hs256(r'{"alg": "\ud800"}', "{}"),
    "kid-list": _hs256('{"alg": "HS256", "kid": [1]}', "{}"),
    "exp-huge-int": _hs256('{"alg": "HS256", "typ": {}}', '{"exp": 1' + "0" * 400 + "}"),
    "exp-infinite": _hs256(_HS, '{"exp": 1e999}'),
    "exp-nested": _hs256(_HS, '{"exp": ' + "[" * 100 + "]" * 100 + "}"),
    "sub-list": _hs256(_HS, _LIVE + '"sub": []}'),
    "sub-huge-int": _hs256(_HS, _LIVE + '"sub": 1' + "0" * 2000 + "}"),
    "sub-nested": _hs256(_HS, _LIVE + '"sub": ' + '{"a": ' * 50 + "1" + "}" * 50 + "}"),
    "scope-object": _hs256(_HS, _LIVE + '"scope": {"a": 1}}'),
    "scp-ints": _hs256(_HS, _LIVE + '"scp": [1, 2]}'),
    "iss-list": _hs256(_HS, _LIVE + '"iss": ["x"]}'),
    "nbf-text": _hs256(_HS, _LIVE + '"nbf": "soon"}'),
    "claims-array": _hs256(_HS, "[]"),
    "oversize": "a" * 9000,
    "non-ascii": "x.y.z" + "\u00e9" * 10,
}


@pytest.mark.parametrize("name", list(HOSTILE_AUTHORIZATIONS))
def test_hostile_tokens_are_401_with_a_well_formed_challenge(
    client: TestClient, queued: Any, name: str
) -> None:
    authorization = f"Bearer {HOSTILE_AUTHORIZATIONS[name]}".encode("utf-8", "surrogatepass")
    response = client.post("/v1/messages", json=valid_message(),
                           headers=[(b"Authorization", authorization)])
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "unauthorized"
    assert _CHALLENGE.fullmatch(response.headers["www-authenticate"])
    assert 'x="y' not in response.headers["www-authenticate"]
    assert queued() == 0


def test_max_token_lifetime_is_enforced_when_configured(redis_server: RedisServer) -> None:
    # The session's Redis has seen resets to ada@.
    settings = app_settings(redis_server.url, QUEUE_NAME=QUEUE, JWT_MAX_LIFETIME="3600",
                            RESET_LIMIT_PER_RECIPIENT="off")
    with TestClient(create_app(settings)) as client:
        long_lived = mint_token(TEST_SECRET, ttl_seconds=30 * 86400)
        refused = send(client, valid_message(), bearer(long_lived))
        assert refused.status_code == 401 and "JWT_MAX_LIFETIME" in refused.json()["message"]
        assert send(client, valid_message(), bearer(mint_token(TEST_SECRET))).status_code == 202


@pytest.mark.parametrize("subject", ["Zoë ✓ 請求", 'quote " and \\ backslash', "x" * 300])
def test_any_printable_subject_owns_its_messages(client: TestClient, subject: str) -> None:
    # The subject travels into the status record (JSON decoded inside Redis) and must come
    # back equal: only the caller that queued a message may read it.
    owner = bearer(mint_token(TEST_SECRET, subject=subject))
    accepted = send(client, valid_message(), headers=owner)
    assert accepted.status_code == 202
    message_id = accepted.json()["id"]
    assert client.get(f"/v1/messages/{message_id}", headers=owner).status_code == 200
    assert client.get(f"/v1/messages/{message_id}", headers=GOOD).status_code == 404


def test_rs_hs_confusion_token_is_refused(client: TestClient, queued: Any) -> None:
    """A token 'signed' with HS256 using an RSA public key as the secret must not pass."""
    public_pem = _rsa_public_pem()
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').rstrip(b"=").decode()
    forged_rs = f"{header}.{jwt.encode({'exp': FUTURE}, 'x' * 32).split('.', 1)[1]}"
    hs_with_pem = jwt.api_jws.PyJWS().encode(  # bypass pyjwt's own PEM-as-HMAC guard
        json.dumps({"sub": "x", "exp": FUTURE}).encode(), key=b"k" * 32, algorithm="HS256")
    import hmac
    from hashlib import sha256

    signing_input = hs_with_pem.rsplit(".", 1)[0]
    signature = base64.urlsafe_b64encode(
        hmac.new(public_pem, signing_input.encode(), sha256).digest()).rstrip(b"=").decode()
    for token in (forged_rs, f"{signing_input}.{signature}"):
        response = send(client, valid_message(), headers=bearer(token))
        assert response.status_code == 401, token
    assert queued() == 0


def test_audience_and_issuer_are_enforced_when_configured(redis_server: RedisServer) -> None:
    # The session's Redis has seen resets to ada@.
    settings = app_settings(redis_server.url, QUEUE_NAME=QUEUE, JWT_AUDIENCE="email-service",
                            JWT_ISSUER="https://auth.example.com", RESET_LIMIT_PER_RECIPIENT="off")
    with TestClient(create_app(settings)) as client:
        wrong_aud = mint_token(TEST_SECRET, audience="billing", issuer="https://auth.example.com")
        no_aud = mint_token(TEST_SECRET, issuer="https://auth.example.com")
        wrong_iss = mint_token(TEST_SECRET, audience="email-service", issuer="https://evil")
        right = mint_token(TEST_SECRET, audience="email-service", issuer="https://auth.example.com")
        assert "audience" in send(client, valid_message(), bearer(wrong_aud)).json()["message"]
        assert send(client, valid_message(), bearer(no_aud)).status_code == 401
        assert "issuer" in send(client, valid_message(), bearer(wrong_iss)).json()["message"]
        assert send(client, valid_message(), bearer(right)).status_code == 202


def test_probes_need_no_token(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "healthy", "service": "email-service"}
    assert client.get("/ready").status_code == 200


# --- bad input ---------------------------------------------------------------------------------

def test_malformed_json_is_400(client: TestClient, queued: Any) -> None:
    for body in (b"{", b"", b"\xff\xfe", b'{"a": 1} trailing'):
        response = client.post("/v1/messages", content=body,
                               headers={**GOOD, "Content-Type": "application/json"})
        assert response.status_code == 400, body
        assert response.json()["error"] == "malformed_json"
    assert queued() == 0


def test_deeply_nested_json_is_refused_cleanly(client: TestClient, queued: Any) -> None:
    body = b'{"template": "password_reset", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = client.post("/v1/messages", content=body, headers=GOOD)
    assert response.status_code == 400
    assert queued() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([1, 2], "body"),
        ({"to": "ada@example.com", "data": {}}, "template"),
        (valid_message(to="not-an-address"), "to.0.email"),
        (valid_message(to=[]), "to"),
        (valid_message(to={"email": "ada@example.com", "name": "Ada\r\nBcc: x@evil.com"}),
         "to.0.name"),
        (valid_message(template="no_such_template"), "template"),
        (valid_message(template="../../etc/passwd"), "template"),
        (valid_message(data="text"), "data"),
        (valid_message(data={"email": "a@example.com"}), "data"),
        (valid_message(data={"email": "a@example.com", "code": 5}), "data.code"),
        (valid_message(subject="Hi\nBcc: victim@example.com"), "subject"),
        (valid_message(subject="Hi\rthere"), "subject"),
        (valid_message(reply_to={"email": "r@example.com", "name": "R\nX-Evil: 1"}),
         "reply_to.name"),
        (valid_message(reply_to="r@example.com\r\nBcc: x@evil.com"), "reply_to.email"),
        (valid_message(headers={"X-Trace": "a\r\nBcc: x@evil.com"}), "headers.X-Trace"),
        (valid_message(cc=[{"email": "c@example.com", "name": "C\nBcc: x@evil.com"}]),
         "cc.0.name"),
        (valid_message(bcc={"email": "b@example.com", "name": "B\r\n"}), "bcc.0.name"),
        (valid_message(**{"from": {"email": "noreply@shop.example.com", "name": "S\nX: y"}}),
         "from.name"),
        (valid_message(to="victim@example.com\nBcc: all@example.com"), "to.0.email"),
        (valid_message(headers={"Bad Name:": "v"}), "headers"),
        (valid_message(headers={"From": "ceo@shop.example.com"}), "headers"),
        (valid_message(**{"from": "ceo@elsewhere.example.org"}), "from.email"),
        (valid_message(cc=["x@example.com"] * 60), "body"),
        (valid_message(tags=["has space"]), "tags.0"),
        (valid_message(unexpected=True), "unexpected"),
    ],
    ids=["array", "no-template", "bad-address", "no-recipient", "name-crlf", "unknown-template",
         "path-template", "data-type", "data-missing-field", "data-wrong-type", "subject-lf",
         "subject-cr", "reply-name-lf", "reply-email-crlf", "header-crlf", "cc-name-lf",
         "bcc-name-crlf", "from-name-lf", "to-email-lf", "header-name",
         "reserved-header", "foreign-from", "too-many-recipients", "bad-tag", "unknown-field"],
)
def test_invalid_messages_are_422_naming_the_field(
    client: TestClient, queued: Any, body: Any, field: str
) -> None:
    response = send(client, body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert set(payload) == {"error", "message", "details"}
    fields = [detail["field"] for detail in payload["details"]]
    assert field in fields, payload
    assert queued() == 0


def test_body_over_limit_is_413(client: TestClient, queued: Any) -> None:
    huge = valid_message(data={"email": "a@example.com", "code": "1", "pad": "x" * 70_000})
    response = send(client, huge)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    # Without Content-Length (chunked), the limit holds while streaming.
    chunks = iter([json.dumps(huge).encode()[i:i + 8192] for i in range(0, 80_000, 8192)])
    response = client.post("/v1/messages", content=chunks, headers=GOOD)
    assert response.status_code == 413
    assert queued() == 0


def test_reset_code_contract_errors_are_400(client: TestClient, queued: Any) -> None:
    url = "/email-service/send-reset-code"
    for body in ({"email": "a@example.com"}, {"code": "1"}, {}):
        response = client.post(url, json=body, headers=GOOD)
        assert response.status_code == 400
        assert "missing required field" in response.json()["message"]
    assert client.post(url, json={"email": "nope", "code": "1"}, headers=GOOD).status_code == 400
    assert client.post(url, json={"email": "a@example.com", "code": "1"}).status_code == 401
    assert queued() == 0
    ok = client.post(url, json={"email": "a@example.com", "code": 123456}, headers=GOOD)
    assert ok.json() == {"message": "Password reset code sent successfully"}
    assert queued() == 1


def test_order_confirmation_validation(client: TestClient, queued: Any) -> None:
    url = "/api/order-confirmation"
    order: dict[str, Any] = {
        "order_id": "1", "customer": {"name": "A", "email": "a@example.com"},
        "items": [{"product_id": "p", "name": "n", "quantity": 1, "price": 1.5}], "total": 1.5}
    bad_quantity = {**order, "items": [{**order["items"][0], "quantity": "lots"}]}
    response = client.post(url, json=bad_quantity, headers=GOOD)
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "items.0.quantity"
    no_customer = {key: value for key, value in order.items() if key != "customer"}
    assert client.post(url, json=no_customer, headers=GOOD).status_code == 422
    assert queued() == 0
    response = client.post(url, json=order, headers=GOOD)
    assert response.json() == {"status": "success", "message": "Order confirmation email sent"}
    assert queued() == 1


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    assert client.get("/nope").json()["error"] == "not_found"
    assert client.get("/v1/messages").status_code == 405


def test_templates_list_detail_and_render(client: TestClient) -> None:
    listed = {t["name"]: t for t in client.get("/v1/templates", headers=GOOD).json()["templates"]}
    assert {"password_reset", "order_confirmation"} <= set(listed)
    assert listed["password_reset"]["source"] == {"kind": "builtin"}
    detail = client.get("/v1/templates/password_reset", headers=GOOD).json()
    assert detail["version"] == listed["password_reset"]["version"]
    assert detail["variables"]["required"] == ["email", "code"] and detail["sample_data"]["code"]
    assert client.get("/v1/templates/nope", headers=GOOD).status_code == 404
    rendered = client.post("/v1/templates/password_reset/render",
                           json={"data": {"email": "a@example.com", "code": "<b>42</b>"}},
                           headers=GOOD).json()
    assert "&lt;b&gt;42&lt;/b&gt;" in rendered["html"]
    assert "<b>42</b>" in rendered["text"]
    assert client.post("/v1/templates/nope/render", json={}, headers=GOOD).status_code == 404
    bad = client.post("/v1/templates/password_reset/render",
                      json={"data": {"email": 1, "code": 2}}, headers=GOOD)
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["details"]} == {"data.email", "data.code"}


def test_every_data_violation_is_listed(client: TestClient, queued: Any) -> None:
    order = {"order_id": 5, "customer": {"name": "A"}, "items": [], "total": -1}
    response = send(client, {"template": "order_confirmation", "to": "a@example.com",
                             "data": order})
    assert response.status_code == 422
    fields = {detail["field"] for detail in response.json()["details"]}
    assert fields == {"data.order_id", "data.customer", "data.items", "data.total"}
    assert queued() == 0


def test_enqueue_with_redis_down_is_503(redis_server: RedisServer) -> None:
    settings = app_settings("redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        response = send(client, valid_message())
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert client.get("/ready").status_code == 503


def test_message_ids_are_unique(client: TestClient) -> None:
    ids = {send(client, valid_message()).json()["id"] for _ in range(20)}
    assert len(ids) == 20
    assert all(uuid.UUID(i) for i in ids)


def test_worker_trusts_the_door_normalisation_but_not_line_breaks() -> None:
    from pydantic import ValidationError

    from mailcore.message import ACCEPTED, SendRequest

    body = {"template": "password_reset", "to": "User@Example.COM", "data": {"code": "1"}}
    # At the door the address is normalised (email-validator lowercases the domain)...
    assert SendRequest.model_validate(body).to[0].email == "User@example.com"
    # ...and the queued job carries that form, which the worker takes as it is.
    assert SendRequest.model_validate(body, context=ACCEPTED).to[0].email == "User@Example.COM"
    # Header injection is refused even in a job that claims to be accepted.
    hostile = {**body, "to": "a@example.com\r\nBcc: victim@example.org"}
    for context in (None, ACCEPTED):
        with pytest.raises(ValidationError, match="CR or LF"):
            SendRequest.model_validate(hostile, context=context)
    with pytest.raises(ValidationError, match="not a valid email address"):
        SendRequest.model_validate({**body, "to": "not-an-address"})


# --- Batches: many messages, one request, all or nothing ----------------------------------------

def batch(client: TestClient, messages: list[Any], headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/messages/batch", json={"messages": messages},
                       headers=GOOD if headers is None else headers)


def test_batch_is_queued_whole_with_one_id_per_message(
        client: TestClient, queued: Any, redis_server: RedisServer) -> None:
    messages = [valid_message(to=f"b{i}@example.com") for i in range(5)]
    messages.append({"template": "order_confirmation", "to": "o@example.com", "data": {
        "order_id": "A-1", "customer": {"name": "Ada", "email": "o@example.com"},
        "items": [{"product_id": "p", "name": "x", "quantity": 1, "price": 1}], "total": 1}})
    response = batch(client, messages)
    assert response.status_code == 202, response.text
    answers = response.json()["messages"]
    assert [a["status"] for a in answers] == ["queued"] * 6
    assert len({a["id"] for a in answers}) == 6
    assert queued() == 6
    # Each message has its own status, in the caller's order.
    statuses = [client.get(f"/v1/messages/{a['id']}", headers=GOOD).json() for a in answers]
    assert [s["recipients"] for s in statuses] == [[m["to"]] for m in messages]
    assert statuses[-1]["template"] == "order_confirmation"


@pytest.mark.parametrize(("messages", "field"), [
    ([], "messages"),
    ([valid_message()] * 101, "messages"),
    ([valid_message(), valid_message(to="not an address")], "messages.1.to.0.email"),
    ([valid_message(), valid_message(template="no-such-template")], "messages.1.template"),
    ([valid_message(data={"email": "a@example.com"})], "messages.0.data"),
    ([valid_message(subject="x\r\nBcc: victim@example.org")], "messages.0.subject"),
])
def test_a_bad_message_refuses_the_whole_batch(client: TestClient, queued: Any,
                                               messages: list[Any], field: str) -> None:
    response = batch(client, messages)
    assert response.status_code == 422, response.text
    assert field in [detail["field"] for detail in response.json()["details"]]
    assert queued() == 0


def test_hostile_batch_bodies_are_refused(client: TestClient, queued: Any) -> None:
    for body in ({"messages": "nope"}, {"messages": [valid_message()], "extra": 1}, [1, 2],
                 {"messages": [[valid_message()]]}):
        response = client.post("/v1/messages/batch", json=body, headers=GOOD)
        assert response.status_code in (400, 422), (body, response.text)
        assert response.json()["error"] in ("invalid_request", "invalid_json")
    assert batch(client, [valid_message()], headers={}).status_code == 401
    assert queued() == 0


def test_batch_is_idempotent(client: TestClient, queued: Any) -> None:
    headers = {**GOOD, "Idempotency-Key": f"batch-{uuid.uuid4().hex}"}
    messages = [valid_message(to=f"i{i}@example.com") for i in range(3)]
    first = batch(client, messages, headers)
    again = batch(client, messages, headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert batch(client, messages[:2], headers).status_code == 409
    assert queued() == 3


# --- nesting and size bounds, before any model or serialisation -------------------------------

def _nested_dicts(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def _nested_lists(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _nested_mixed(depth: int) -> Any:
    value: Any = None
    for level in range(depth):
        value = {"k": value, "n": 1} if level % 2 else [0, value]
    return value


@pytest.mark.parametrize("depth", [40, 300, 900])
@pytest.mark.parametrize("shape", ["dicts", "lists", "mixed"])
@pytest.mark.parametrize("where", ["data", "headers", "tags", "to", "unknown", "batch"])
def test_deep_nesting_is_422_before_anything_else(
    client: TestClient, queued: Any, depth: int, shape: str, where: str
) -> None:
    nested = {"dicts": _nested_dicts, "lists": _nested_lists, "mixed": _nested_mixed}[shape](depth)
    body = valid_message()
    body[where if where != "batch" else "data"] = (
        {"code": nested} if where == "data" else nested)
    path = "/v1/messages"
    if where == "batch":
        body = {"messages": [valid_message(), body]}
        path = "/v1/messages/batch"
    response = client.post(path, content=json.dumps(body), headers=GOOD)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "invalid_request"
    assert "nested deeper than 32 levels" in answer["message"]
    assert answer["details"][0]["field"].startswith("messages" if where == "batch" else where)
    assert queued() == 0


def test_nesting_within_the_limit_is_accepted(client: TestClient, queued: Any) -> None:
    body = valid_message(headers={"X-Trace": "1"}, tags=["a"])
    body["data"]["extra"] = _nested_dicts(29)  # data is level 2, the leaf dict level 31
    assert send(client, body).status_code == 202


def test_too_many_values_are_422(client: TestClient, redis_server: RedisServer) -> None:
    settings = app_settings(redis_server.url, QUEUE_NAME=QUEUE, RESET_LIMIT_PER_RECIPIENT="off")
    with TestClient(create_app(settings)) as big:
        floods: list[Any] = [[0] * 150_000, [{}] * 110_000, {"a": [0] * 60_000, "b": [[]] * 60_000},
                             {f"{i:x}": 0 for i in range(101_000)}]
        for flood in floods:
            body = valid_message()
            body["data"]["flood"] = flood
            response = big.post("/v1/messages", headers=GOOD,
                                content=json.dumps(body, separators=(",", ":")))
            assert response.status_code == 422
            assert "more than 100000 values" in response.json()["message"]


@pytest.mark.parametrize("path", ["/email-service/send-reset-code", "/api/order-confirmation",
                                  "/v1/templates/password_reset/render"])
def test_deep_nesting_on_the_other_endpoints(client: TestClient, queued: Any, path: str) -> None:
    body = {"email": "ada@example.com", "code": "1", "order_id": "1", "data": _nested_lists(100),
            "notes": _nested_dicts(100)}
    response = client.post(path, content=json.dumps(body), headers=GOOD)
    assert response.status_code == (400 if "reset-code" in path else 422), response.text
    assert "nested deeper than 32 levels" in response.json()["message"]
    assert queued() == 0


# --- owners: a subject cannot impersonate an internal owner or another issuer's subject -------

def test_internal_owners_cannot_be_impersonated(redis_server: RedisServer) -> None:
    import hashlib as _hashlib

    from service.events import _EVENT_NAMESPACE

    channel = f"events-{uuid.uuid4().hex[:8]}"
    settings = make_settings(REDIS_URL=redis_server.url, JWT_SECRET=TEST_SECRET, QUEUE_NAME=QUEUE,
                             EVENTS_CHANNEL=channel, RESET_LIMIT_PER_RECIPIENT="off",
                             KEY_PREFIX=f"owners-{uuid.uuid4().hex[:6]}")
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/ready").status_code == 200, message="the subscription")
        raw = json.dumps({"email": "victim@example.org", "code": "424242"}).encode()
        message_id = str(uuid.uuid5(_EVENT_NAMESPACE, _hashlib.sha256(raw).hexdigest()))
        redis_server.client().publish(channel, raw)
        key = f"{settings.redis.key_prefix}:msg:{message_id}"
        wait_for(lambda: redis_server.client().hget(key, "owner") == b"internal:events",
                 message="the event's status")
        impostors = [mint_token(TEST_SECRET, subject=subject, issuer=issuer)
                     for subject, issuer in [("events", None), ("internal:events", None),
                                             ("events", "internal"), ("", None),
                                             ("internal", "events"), ("anonymous", None)]]
        for token in impostors:
            response = client.get(f"/v1/messages/{message_id}", headers=bearer(token))
            assert response.status_code == 404, token
            assert "victim" not in response.text


def test_subjects_of_different_issuers_do_not_collide(client: TestClient) -> None:
    mine = bearer(mint_token(TEST_SECRET, subject="b:c", issuer="a"))
    accepted = send(client, valid_message(), headers=mine)
    message_id = accepted.json()["id"]
    assert client.get(f"/v1/messages/{message_id}", headers=mine).status_code == 200
    for subject, issuer in [("c", "a:b"), ("b:c", None), ("a:b:c", None), ("b:c", "A")]:
        other = bearer(mint_token(TEST_SECRET, subject=subject, issuer=issuer))
        assert client.get(f"/v1/messages/{message_id}", headers=other).status_code == 404


def test_statuses_stored_before_owners_were_tagged_stay_readable(
    client: TestClient, redis_server: RedisServer
) -> None:
    prefix = client.app.state.send_service.settings.redis.key_prefix  # type: ignore[attr-defined]
    ids = {owner: str(uuid.uuid4()) for owner in ("billing", "events")}
    for owner, message_id in ids.items():
        redis_server.client().hset(f"{prefix}:msg:{message_id}", mapping={
            "id": message_id, "owner": owner, "status": "sent", "template": "password_reset",
            "recipients": "[]", "source": "api", "attempts": "1", "created_at": "1",
            "updated_at": "1"})
    assert client.get(f"/v1/messages/{ids['billing']}", headers=GOOD).status_code == 200
    impostor = bearer(mint_token(TEST_SECRET, subject="events"))
    assert client.get(f"/v1/messages/{ids['events']}", headers=impostor).status_code == 404


# --- malformed ids and Starlette's own refusals ------------------------------------------------

@pytest.mark.parametrize("suffix", [":timeline", ":x", "%00", "%C3%A9", "x" * 5000, "%FF",
                                    "..%2F..%2Fetc", "%0d%0aX: 1"])
def test_malformed_message_ids_are_404_without_a_false_alert(
    client: TestClient, suffix: str
) -> None:
    real = send(client, valid_message()).json()["id"]
    response = client.get(f"/v1/messages/{real}{suffix}", headers=GOOD)
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert client.get(f"/v1/messages/{suffix}", headers=GOOD).status_code == 404
    admin = bearer(mint_token(TEST_SECRET, subject="ops", scope="email:admin"))
    assert client.get(f"/v1/dead-letters/{real}{suffix}", headers=admin).status_code == 404
    assert client.post(f"/v1/dead-letters/{real}{suffix}/retry",
                       headers=admin).status_code == 404
    assert "email_enqueue_failures_total{" not in client.get("/metrics").text


@pytest.mark.parametrize(("status", "code"), [(400, "invalid_request"), (404, "not_found"),
                                              (405, "method_not_allowed"),
                                              (408, "request_timeout"),
                                              (413, "payload_too_large"),
                                              (431, "headers_too_large"), (503, "error")])
def test_http_exceptions_keep_their_status(status: int, code: str) -> None:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request as StarletteRequest
    from starlette.routing import Route

    from service.errors import handle_http_exception

    async def refuse(request: StarletteRequest) -> Any:
        raise HTTPException(status, detail="refused for a reason")

    app = Starlette(routes=[Route("/x", refuse)],
                    exception_handlers={HTTPException: handle_http_exception})
    response = TestClient(app).get("/x")
    assert response.status_code == status
    assert response.json()["error"] == code
