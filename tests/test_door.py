"""At the door: rate limits, the reset flood limit, the queue ceiling, JWKS keys and scopes,
and the OpenAPI document with schemathesis finding no 5xx and no schema violations."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from redis.asyncio.connection import AbstractConnection
from starlette.testclient import TestClient

from mailcore.tokens import mint_token
from service.app import create_app

from .support import TEST_SECRET, RedisServer, app_settings, make_settings


def app_client(redis_server: RedisServer, **env: str) -> TestClient:
    queue = f"door-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, QUEUE_NAME=queue,
                            KEY_PREFIX=f"door-{uuid.uuid4().hex[:8]}", **env)
    return TestClient(create_app(settings))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def reset(to: str = "ada@example.com") -> dict[str, Any]:
    return {"template": "password_reset", "to": to, "data": {"email": to, "code": "1"}}


def test_per_caller_rate_limit_with_overrides(redis_server: RedisServer) -> None:
    with app_client(redis_server, RATE_LIMIT="3/minute", RATE_LIMIT_OVERRIDES="batch=off",
                    RESET_LIMIT_PER_RECIPIENT="off") as client:
        shop = bearer(mint_token(TEST_SECRET, subject="shop"))
        codes = [client.post("/v1/messages", json=reset(), headers=shop).status_code
                 for _ in range(4)]
        assert codes == [202, 202, 202, 429]
        limited = client.post("/v1/messages", json=reset(), headers=shop)
        assert limited.json()["error"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 20  # one token per 20 s
        other = bearer(mint_token(TEST_SECRET, subject="billing"))
        assert client.post("/v1/messages", json=reset(), headers=other).status_code == 202
        batch = bearer(mint_token(TEST_SECRET, subject="batch"))
        assert all(client.post("/v1/messages", json=reset(), headers=batch).status_code == 202
                   for _ in range(10))


def test_reset_flood_is_limited_per_recipient(redis_server: RedisServer) -> None:
    with app_client(redis_server, RESET_LIMIT_PER_RECIPIENT="5/hour") as client:
        auth = bearer(mint_token(TEST_SECRET))
        victim = f"victim-{uuid.uuid4().hex[:6]}@example.org"
        codes = [client.post("/email-service/send-reset-code", json={"email": victim, "code": "1"},
                             headers=auth).status_code for _ in range(8)]
        assert codes == [200] * 5 + [429] * 3
        flooded = client.post("/v1/messages", json=reset(victim), headers=auth)
        assert flooded.status_code == 429
        assert flooded.json()["error"] == "recipient_rate_limited"
        assert int(flooded.headers["retry-after"]) > 60
        # Other recipients and other templates are unaffected.
        assert client.post("/v1/messages", json=reset("someone@example.org"),
                           headers=auth).status_code == 202
        order = {"order_id": "1", "customer": {"name": "V", "email": victim},
                 "items": [{"product_id": "p", "name": "n", "quantity": 1, "price": 1}],
                 "total": 1}
        assert client.post("/api/order-confirmation", json=order, headers=auth).status_code == 200


def test_queue_ceiling_answers_503_and_writes_nothing(redis_server: RedisServer) -> None:
    with app_client(redis_server, MAX_QUEUE_DEPTH="3", RESET_LIMIT_PER_RECIPIENT="off") as client:
        auth = bearer(mint_token(TEST_SECRET))
        codes = [client.post("/v1/messages", json=reset(), headers=auth) for _ in range(4)]
        assert [c.status_code for c in codes] == [202, 202, 202, 503]
        assert codes[-1].json()["error"] == "queue_full" and codes[-1].headers["retry-after"]
        service = client.app.state.send_service  # type: ignore[attr-defined]
        prefix = service.settings.redis.key_prefix
        keys = redis_server.client().keys(f"{prefix}:msg:*:timeline")
        assert len(keys) == 3  # the refused message left no status behind


def test_refused_requests_count_against_the_caller_limit(redis_server: RedisServer) -> None:
    with app_client(redis_server, RATE_LIMIT="3/minute", RESET_LIMIT_PER_RECIPIENT="off") as client:
        shop = bearer(mint_token(TEST_SECRET, subject="shop"))
        bad = [client.post("/v1/messages", json={"template": "password_reset"}, headers=shop),
               client.post("/v1/messages", content=b"{not json", headers=shop)]
        assert [r.status_code for r in bad] == [422, 400]
        assert client.post("/v1/messages", json=reset(), headers=shop).status_code == 202
        # Three requests took the three tokens: valid or not, the fourth is limited.
        for attempt in (reset(), {"template": "password_reset"}):
            limited = client.post("/v1/messages", json=attempt, headers=shop)
            assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"


def test_recipient_limits_are_all_or_nothing(redis_server: RedisServer) -> None:
    with app_client(redis_server, RESET_LIMIT_PER_RECIPIENT="1/hour",
                    RATE_LIMIT="off") as client:
        auth = bearer(mint_token(TEST_SECRET))
        first, second = (f"{name}-{uuid.uuid4().hex[:6]}@example.org" for name in "ab")
        assert client.post("/v1/messages", json=reset(first), headers=auth).status_code == 202
        both = {**reset(first), "to": [first, second]}
        refused = client.post("/v1/messages", json=both, headers=auth)
        assert refused.status_code == 429 and refused.json()["error"] == "recipient_rate_limited"
        # The refusal took nothing from the second recipient's bucket.
        assert client.post("/v1/messages", json=reset(second), headers=auth).status_code == 202
        assert client.post("/v1/messages", json=reset(second), headers=auth).status_code == 429


def test_idempotent_replay_is_answered_after_the_recipient_limit(
        redis_server: RedisServer) -> None:
    with app_client(redis_server, RESET_LIMIT_PER_RECIPIENT="1/hour") as client:
        auth = {**bearer(mint_token(TEST_SECRET)), "Idempotency-Key": "k-1"}
        victim = f"v-{uuid.uuid4().hex[:6]}@example.org"
        first = client.post("/v1/messages", json=reset(victim), headers=auth)
        again = client.post("/v1/messages", json=reset(victim), headers=auth)
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"


def test_a_batch_takes_one_token_per_message(redis_server: RedisServer) -> None:
    with app_client(redis_server, RATE_LIMIT="5/minute", RESET_LIMIT_PER_RECIPIENT="off") as client:
        shop = bearer(mint_token(TEST_SECRET, subject="shop"))

        def batch(count: int) -> Any:
            return client.post("/v1/messages/batch", headers=shop,
                               json={"messages": [reset(f"n{i}@example.org")
                                                  for i in range(count)]})

        too_big = batch(6)  # more than the bucket can ever hold
        assert too_big.status_code == 422 and too_big.json()["error"] == "batch_too_large"
        assert batch(3).status_code == 202
        limited = batch(3)  # 1 (the refused request) + 3 taken, 1 left: refused whole
        assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
        assert batch(1).status_code == 202


def test_a_batch_counts_each_reset_to_the_same_recipient(redis_server: RedisServer) -> None:
    with app_client(redis_server, RESET_LIMIT_PER_RECIPIENT="3/hour", RATE_LIMIT="off") as client:
        auth = bearer(mint_token(TEST_SECRET))
        victim = f"flood-{uuid.uuid4().hex[:6]}@example.org"
        flood = client.post("/v1/messages/batch", headers=auth,
                            json={"messages": [reset(victim)] * 4})
        assert flood.status_code == 429 and flood.json()["error"] == "recipient_rate_limited"
        three = client.post("/v1/messages/batch", headers=auth,
                            json={"messages": [reset(victim)] * 3})
        assert three.status_code == 202


def test_accepting_a_message_is_one_redis_round_trip(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each loopback round trip costs more CPU than the Python around it (the benchmark's
    # profile), so the caller limit, the recipient limit, idempotency, the queue ceiling, the
    # status record and the Dramatiq message are all handled by one script.
    replies: list[str] = []
    read_response = AbstractConnection.read_response

    async def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        response = await read_response(self, *args, **kwargs)
        replies.append(repr(response)[:60])
        return response

    monkeypatch.setattr(AbstractConnection, "read_response", counted)
    with app_client(redis_server, RATE_LIMIT="100/minute",
                    RESET_LIMIT_PER_RECIPIENT="5/hour") as client:
        auth = {**bearer(mint_token(TEST_SECRET)), "Idempotency-Key": uuid.uuid4().hex}
        assert client.post("/v1/messages", json=reset(), headers=auth).status_code == 202
        replies.clear()
        for path, body in (("/v1/messages", reset(f"y-{uuid.uuid4().hex[:6]}@example.org")),
                           ("/email-service/send-reset-code",
                            {"email": f"x-{uuid.uuid4().hex[:6]}@example.org", "code": "1"})):
            answer = client.post(path, json=body,
                                 headers={**auth, "Idempotency-Key": uuid.uuid4().hex})
            assert answer.status_code in (200, 202)
        assert len(replies) == 2, replies


# --- JWKS (RS256 / ES256), rotation, scopes --------------------------------------------------

def _jwk(private: Any, kid: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) \
        else jwt.algorithms.ECAlgorithm
    jwk = json.loads(algorithm.to_jwk(private.public_key()))
    jwk["kid"] = kid
    return dict(jwk)


@pytest.fixture
def keys() -> dict[str, Any]:
    return {"rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec-1": ec.generate_private_key(ec.SECP256R1()),
            "rsa-2": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


@pytest.fixture
def jwks_client(redis_server: RedisServer, tmp_path: Path, keys: dict[str, Any]
                ) -> Iterator[tuple[TestClient, Path]]:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_jwk(keys["rsa-1"], "rsa-1"),
                                         _jwk(keys["ec-1"], "ec-1")]}))
    with app_client(redis_server, JWT_JWKS_FILE=str(path), JWT_LEEWAY_SECONDS="5",
                    JWT_REQUIRED_SCOPE="email:send", RESET_LIMIT_PER_RECIPIENT="off") as client:
        yield client, path


def _signed(key: Any, kid: str, algorithm: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "svc", "exp": now + 300, "scope": "email:send", **claims}
    return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid})


def test_rs256_and_es256_tokens_from_jwks(
    jwks_client: tuple[TestClient, Path], keys: dict[str, Any]
) -> None:
    client, _ = jwks_client
    for key, kid, alg in ((keys["rsa-1"], "rsa-1", "RS256"), (keys["ec-1"], "ec-1", "ES256")):
        response = client.post("/v1/messages", json=reset(),
                               headers=bearer(_signed(key, kid, alg)))
        assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: _signed(k["rsa-1"], "nope", "RS256"), "unknown key"),
        (lambda k: _signed(k["rsa-2"], "rsa-1", "RS256"), "signature is invalid"),
        (lambda k: _signed(k["ec-1"], "rsa-1", "ES256"), "cannot verify ES256"),
        (lambda k: jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, k["rsa-1"],
                              algorithm="RS256"), "no 'kid'"),
        (lambda k: _signed(k["rsa-1"], "rsa-1", "RS256", exp=int(time.time()) - 60),
         "token expired"),
        (lambda k: _signed(k["rsa-1"], "rsa-1", "RS256", nbf=int(time.time()) + 120),
         "not yet valid"),
        (lambda k: mint_token(TEST_SECRET), "'HS256' is not allowed"),
        (lambda k: _signed(k["rsa-1"], "rsa-1", "RS512"), "'RS512' is not allowed"),
    ],
    ids=["unknown-kid", "wrong-key", "kid-kind-mismatch", "no-kid", "expired", "not-yet-valid",
         "hs256-without-secret", "rs512"],
)
def test_forged_public_key_tokens_are_refused(
    redis_server: RedisServer, tmp_path: Path, keys: dict[str, Any], make: Any, reason: str
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_jwk(keys["rsa-1"], "rsa-1"),
                                         _jwk(keys["ec-1"], "ec-1")]}))
    # No JWT_SECRET here: HS256 has no key at all, so it is refused outright.
    settings = make_settings(REDIS_URL=redis_server.url, JWT_JWKS_FILE=str(path),
                             EVENTS_ENABLED="false", QUEUE_NAME="door-forged")
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/messages", json=reset(), headers=bearer(make(keys)))
        assert response.status_code == 401
        assert reason in response.json()["message"]


def test_small_clock_skew_is_tolerated(jwks_client: tuple[TestClient, Path],
                                       keys: dict[str, Any]) -> None:
    client, _ = jwks_client
    token = _signed(keys["rsa-1"], "rsa-1", "RS256", nbf=int(time.time()) + 2)
    assert client.post("/v1/messages", json=reset(), headers=bearer(token)).status_code == 202


def test_key_rotation_picks_up_a_new_kid(
    jwks_client: tuple[TestClient, Path], keys: dict[str, Any]
) -> None:
    client, path = jwks_client
    verifier = client.app.state.verifier  # type: ignore[attr-defined]
    verifier._jwks.min_refresh_interval = 0  # the test need not wait out the refresh guard
    path.write_text(json.dumps({"keys": [_jwk(keys["rsa-2"], "rsa-2")]}))
    token = _signed(keys["rsa-2"], "rsa-2", "RS256")
    assert client.post("/v1/messages", json=reset(), headers=bearer(token)).status_code == 202


def test_required_scope(jwks_client: tuple[TestClient, Path], keys: dict[str, Any]) -> None:
    client, _ = jwks_client
    token = _signed(keys["rsa-1"], "rsa-1", "RS256", scope="email:read")
    response = client.post("/v1/messages", json=reset(), headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert 'scope="email:send"' in response.headers["www-authenticate"]
    listed = bearer(_signed(keys["rsa-1"], "rsa-1", "RS256", scp=["email:send", "x"]))
    assert client.post("/v1/messages", json=reset(), headers=listed).status_code == 202


# --- OpenAPI ------------------------------------------------------------------------------------

def test_openapi_and_offline_docs(redis_server: RedisServer) -> None:
    with app_client(redis_server) as client:
        document = client.get("/openapi.json").json()
        assert document["openapi"].startswith("3.")
        app_paths = {"/v1/messages", "/v1/messages/batch", "/v1/messages/{id}",
                     "/v1/messages/{id}/content", "/v1/messages/{id}/cancel", "/v1/templates",
                     "/v1/templates/{name}", "/v1/templates/{name}/render",
                     "/v1/templates/{name}/versions", "/v1/templates/{name}/versions/{version}",
                     "/v1/dead-letters",
                     "/v1/dead-letters/retry", "/v1/dead-letters/{id}",
                     "/v1/dead-letters/{id}/retry", "/email-service/send-reset-code",
                     "/api/order-confirmation", "/health", "/ready",
                     "/v1/suppressions", "/v1/suppressions/import", "/v1/suppressions/export",
                     "/v1/suppressions/{address}", "/u/{token}",
                     "/v1/webhooks", "/v1/webhooks/{id}", "/v1/webhooks/{id}/rotate-secret",
                     "/v1/webhooks/dead-letters", "/v1/webhooks/dead-letters/{id}/retry",
                     "/v1/webhooks/mailtrap"}
        assert set(document["paths"]) == app_paths
        assert "SendRequest" in document["components"]["schemas"]
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
        asset = client.get("/docs/static/swagger-ui-bundle.js")
        assert asset.status_code == 200 and len(asset.content) > 100_000


# --- a throttled caller is answered 429 before any work; every refusal is charged -------------

def test_a_throttled_caller_gets_429_before_its_body_is_read(redis_server: RedisServer) -> None:
    with app_client(redis_server, RATE_LIMIT="3/minute", RESET_LIMIT_PER_RECIPIENT="off") as client:
        shop = bearer(mint_token(TEST_SECRET, subject="shop"))
        assert [client.post("/v1/messages", json=reset(), headers=shop).status_code
                for _ in range(4)] == [202, 202, 202, 429]
        oversize_batch = {"messages": [reset(f"n{i}@example.org") for i in range(50)]}
        attempts = [
            client.post("/v1/messages/batch", json=oversize_batch, headers=shop),
            client.post("/v1/messages/batch", json={"messages": "nope"}, headers=shop),
            client.post("/v1/messages", content=b"{not json", headers=shop),
            client.post("/v1/messages", content=b"x" * (2 * 1024 * 1024), headers=shop),
            client.post("/email-service/send-reset-code", json={}, headers=shop),
            client.post("/api/order-confirmation", json={"order_id": []}, headers=shop),
            client.post("/v1/messages", json=reset(), headers=shop),
        ]
        for response in attempts:
            assert response.status_code == 429, response.text
            assert response.json()["error"] == "rate_limited"
            assert int(response.headers["retry-after"]) >= 1
        # Another caller is not affected.
        other = bearer(mint_token(TEST_SECRET, subject="billing"))
        assert client.post("/v1/messages", json=reset(), headers=other).status_code == 202


@pytest.mark.parametrize("refusal", ["batch_too_large", "invalid_request", "malformed_json",
                                     "payload_too_large", "invalid_idempotency_key"])
def test_every_refusal_is_charged(redis_server: RedisServer, refusal: str) -> None:
    with app_client(redis_server, RATE_LIMIT="3/minute", RESET_LIMIT_PER_RECIPIENT="off",
                    MAX_BODY_BYTES="65536") as client:
        shop = bearer(mint_token(TEST_SECRET, subject=f"shop-{refusal}"))
        requests = {
            "batch_too_large": lambda: client.post(
                "/v1/messages/batch", headers=shop,
                json={"messages": [reset(f"n{i}@example.org") for i in range(4)]}),
            "invalid_request": lambda: client.post("/v1/messages", json={"to": []}, headers=shop),
            "malformed_json": lambda: client.post("/v1/messages", content=b"[", headers=shop),
            "payload_too_large": lambda: client.post("/v1/messages", content=b"x" * 70_000,
                                                     headers=shop),
            "invalid_idempotency_key": lambda: client.post(
                "/v1/messages", json=reset(), headers={**shop, "Idempotency-Key": "a b"}),
        }
        codes = [requests[refusal]().json()["error"] for _ in range(4)]
        assert codes == [refusal] * 3 + ["rate_limited"]
        assert client.post("/v1/messages", json=reset(), headers=shop).status_code == 429
