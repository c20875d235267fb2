"""DKIM end to end: a real ingress and worker deliver to a real SMTP relay (aiosmtpd), and the
bytes that arrive verify with dkimpy against the published keys, for RSA and Ed25519; mail from
a domain without keys arrives unsigned and the worker warns once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dkim
import httpx
import pytest

from mailcore.tokens import mint_token

from .dkim_keys import dns_stub, records_of, write_ed25519_key, write_rsa_key
from .support import (
    TEST_SECRET,
    Received,
    RedisServer,
    ServiceStack,
    SMTPServer,
    base_env,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='dkim')}"}
SIGNED, UNSIGNED = "signed.example", "unsigned.example"


@dataclass
class Rig:
    stack: ServiceStack
    relay: SMTPServer
    published: dict[str, str]


@pytest.fixture(scope="module")
def rig(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    keys = tmp_path_factory.mktemp("dkim-keys")
    rsa_key = write_rsa_key(keys / SIGNED / "s2048.pem")
    ed_key = write_ed25519_key(keys / SIGNED / "s-ed.pem")
    relay = SMTPServer()
    env = base_env(redis_server.url, relay.port, SENDER_EMAIL=f"shop@{SIGNED}",
                   ALLOWED_SENDER_DOMAINS=UNSIGNED, DKIM_DOMAINS=SIGNED,
                   DKIM_SELECTOR="s2048", DKIM_ED25519_SELECTOR="s-ed",
                   DKIM_KEYS_DIR=str(keys), QUEUE_NAME="dkim", KEY_PREFIX="dkim",
                   EVENTS_ENABLED="false", RESET_LIMIT_PER_RECIPIENT="off")
    published = records_of([(f"s2048._domainkey.{SIGNED}", rsa_key),
                            (f"s-ed._domainkey.{SIGNED}", ed_key)])
    with ServiceStack(env, tmp_path_factory.mktemp("dkim-logs"), parts=[relay]) as stack:
        yield Rig(stack, relay, published)


def deliver(rig: Rig, body: dict[str, Any], recipient: str) -> Received:
    response = httpx.post(f"{rig.stack.base_url}/v1/messages", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    [mail] = wait_for(lambda: rig.relay.handler.to(recipient), timeout=30,
                      message=f"the mail to {recipient}")
    return mail


def order(recipient: str, **extra: Any) -> dict[str, Any]:
    return {"template": "order_confirmation", "to": recipient, **extra, "data": {
        "order_id": "A-1", "customer": {"name": "Ada", "email": recipient},
        "items": [{"product_id": f"p{i}", "name": f"Tea {i}", "quantity": 2, "price": 3.5}
                  for i in range(5)], "total": 35.0}}


def verdicts(data: bytes, published: dict[str, str]) -> list[tuple[bytes, bool]]:
    """Each DKIM-Signature's algorithm and whether it verifies."""
    checker = dkim.DKIM(data)
    found = [value for name, value in checker.headers if name.lower() == b"dkim-signature"]
    results: list[tuple[bytes, bool]] = []
    for idx, value in enumerate(found):
        algorithm = b"ed25519-sha256" if b"a=ed25519-sha256" in value else b"rsa-sha256"
        try:
            ok = bool(checker.verify(idx=idx, dnsfunc=dns_stub(published)))
        except dkim.DKIMException:
            ok = False
        results.append((algorithm, ok))
    return results


def test_delivered_mail_verifies_with_both_algorithms(rig: Rig) -> None:
    mail = deliver(rig, order("ada@example.net", headers={
        "List-Unsubscribe": "<https://shop.example/u/1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}), "ada@example.net")
    assert verdicts(mail.data, rig.published) == [(b"rsa-sha256", True),
                                                  (b"ed25519-sha256", True)]
    assert dkim.verify(mail.data, dnsfunc=dns_stub(rig.published))
    signed = dkim.DKIM(mail.data)
    signed.verify(dnsfunc=dns_stub(rig.published))
    assert b"list-unsubscribe" in signed.include_headers
    # The test can fail: a changed body (or an unpublished key) does not verify.
    body_at = mail.data.index(b"\r\n\r\n") + 4
    tampered = mail.data[:body_at] + mail.data[body_at:].replace(b"A-1", b"A-2", 1)
    assert tampered != mail.data
    assert verdicts(tampered, rig.published) == [(b"rsa-sha256", False),
                                                 (b"ed25519-sha256", False)]
    assert not dkim.verify(mail.data, dnsfunc=dns_stub({}))


def test_an_unconfigured_from_domain_arrives_unsigned_with_one_warning(rig: Rig) -> None:
    for n in range(2):
        mail = deliver(rig, order(f"bob{n}@example.net", **{"from": f"shop@{UNSIGNED}"}),
                       f"bob{n}@example.net")
        assert b"DKIM-Signature" not in mail.data
        assert mail.message["From"].addresses[0].domain == UNSIGNED
    warning = f"DKIM: mail from {UNSIGNED} goes out unsigned"
    wait_for(lambda: warning in rig.stack.worker.output(), message="the warning")
    assert rig.stack.worker.output().count(warning) == 1
    # Signed mail after it is still signed.
    mail = deliver(rig, order("carol@example.net"), "carol@example.net")
    assert [ok for _, ok in verdicts(mail.data, rig.published)] == [True, True]


def test_the_ingress_needs_no_keys(rig: Rig) -> None:
    # DKIM_* reach the ingress too (one environment); it never reads the keys.
    assert "DKIM" not in rig.stack.api.output()
