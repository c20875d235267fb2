"""The suppression list with real processes: ingress and Dramatiq worker commands, redis-server,
an aiosmtpd relay that refuses some recipients at RCPT, and a headless Chromium.

- Suppressed after acceptance: the worker's send-time check ends a wholly suppressed message
  ``suppressed`` and sends a partly suppressed one to the others only.
- A 550 at RCPT adds a ``hard_bounce`` entry, and the next message to that address is
  suppressed at the door.
- One-click unsubscribe from the header of a delivered, DKIM-signed message: the page in a
  real browser (nothing changes until the button is pressed), then the suppression."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dkim
import httpx
import pytest
import redis
from aiosmtpd.controller import Controller

from mailcore.suppressions import SyncSuppressionList
from mailcore.tokens import mint_token

from .dkim_keys import dns_stub, records_of, write_rsa_key
from .support import (
    TEST_SECRET,
    RecordingHandler,
    RedisServer,
    ServiceStack,
    base_env,
    free_port,
    read_status,
    wait_for,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.slow

SENDER = "shop.example.com"
AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='supp')}"}
ADMIN = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='ops', scope='email:admin')}"}
PUBLIC = "https://mail.example.test"
TIMEOUT_MS = 20_000


class RefusingHandler(RecordingHandler):
    """Refuses ``gone-*`` recipients for good at RCPT (550 5.1.1), like a real relay."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address.startswith("gone-"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"


@dataclass
class Relay:
    handler: RefusingHandler
    port: int


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    handler = RefusingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield Relay(handler, port)
    controller.stop()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@example.org"


def send(base_url: str, *to: str) -> dict[str, Any]:
    body = {"template": "password_reset", "to": list(to), "data": {"email": to[0], "code": "7"}}
    answer = httpx.post(f"{base_url}/v1/messages", json=body, headers=AUTH)
    assert answer.status_code == 202, answer.text
    result: dict[str, Any] = answer.json()
    return result


def settled(client: redis.Redis, prefix: str, message_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = read_status(client, prefix, message_id)
        return status if status["status"] in {"sent", "failed", "dead", "suppressed"} else None
    return wait_for(done, timeout=30, message=f"message {message_id} to finish")


def test_send_time_check_and_hard_bounces(redis_server: RedisServer, relay: Relay,
                                          tmp_path: Path) -> None:
    prefix, queue = f"sd-{uuid.uuid4().hex[:8]}", f"sd-{uuid.uuid4().hex[:8]}"
    env = base_env(redis_server.url, relay.port, KEY_PREFIX=prefix, QUEUE_NAME=queue,
                   RESET_LIMIT_PER_RECIPIENT="off", EVENTS_ENABLED="false")
    client = redis_server.client()
    everyone, ok, withheld, ok2, gone, gone2 = (unique(n) for n in (
        "all", "ok", "withheld", "ok2", "gone", "gone"))
    (tmp_path / "api").mkdir()
    (tmp_path / "worker").mkdir()
    with ServiceStack(env, tmp_path / "api", processes=0) as api:
        # Accepted while nobody was suppressed...
        whole = send(api.base_url, everyone)
        part = send(api.base_url, ok, withheld)
        bounce = send(api.base_url, ok2, gone)
        bounce_all = send(api.base_url, gone2)
        assert {m["status"] for m in (whole, part, bounce, bounce_all)} == {"queued"}
        # ...suppressed before any worker ran.
        for address in (everyone, withheld):
            added = httpx.post(f"{api.base_url}/v1/suppressions", json={"address": address},
                               headers=ADMIN)
            assert added.status_code == 201, added.text
        with ServiceStack(env, tmp_path / "worker", apis=0):
            final = {name: settled(client, prefix, message["id"]) for name, message in
                     [("whole", whole), ("part", part), ("bounce", bounce),
                      ("bounce_all", bounce_all)]}
        assert final["whole"]["status"] == "suppressed"
        assert final["whole"]["suppressed_recipients"] == [everyone]
        assert relay.handler.to(everyone) == []
        assert final["part"]["status"] == "sent"
        assert final["part"]["suppressed_recipients"] == [withheld]
        [delivered] = relay.handler.to(ok)
        assert delivered.rcpt_tos == [ok] and withheld not in delivered.data.decode()
        assert final["bounce"]["status"] == "sent"
        assert final["bounce_all"]["status"] == "failed"
        suppressions = SyncSuppressionList(client, prefix)
        for address, source in ((gone, bounce["id"]), (gone2, bounce_all["id"])):
            entry = suppressions.get(address)
            assert entry is not None and entry.reason == "hard_bounce", address
            assert entry.source_message_id == source
        # The next message to a hard-bounced address is suppressed at the door.
        again = send(api.base_url, gone)
        assert again["status"] == "suppressed" and again["suppressed_recipients"] == [gone]


@pytest.fixture(scope="module")
def unsubscribing(redis_server: RedisServer, relay: Relay,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceStack, str,
                                                                               dict[str, str]]]:
    keys = tmp_path_factory.mktemp("unsub-dkim")
    key = write_rsa_key(keys / SENDER / "s1.pem")
    prefix = f"us-{uuid.uuid4().hex[:8]}"
    env = base_env(redis_server.url, relay.port, KEY_PREFIX=prefix,
                   QUEUE_NAME=f"us-{uuid.uuid4().hex[:8]}", RESET_LIMIT_PER_RECIPIENT="off",
                   EVENTS_ENABLED="false", PUBLIC_BASE_URL=PUBLIC,
                   UNSUBSCRIBE_SECRETS="k" * 48, UNSUBSCRIBE_STREAMS="transactional",
                   DKIM_DOMAINS=SENDER, DKIM_SELECTOR="s1", DKIM_KEYS_DIR=str(keys))
    with ServiceStack(env, tmp_path_factory.mktemp("unsub-logs")) as stack:
        yield stack, prefix, records_of([(f"s1._domainkey.{SENDER}", key)])


def test_one_click_unsubscribe_from_a_delivered_message(
        browser: Browser, unsubscribing: tuple[ServiceStack, str, dict[str, str]],
        relay: Relay, redis_server: RedisServer) -> None:
    from playwright.sync_api import expect

    stack, prefix, published = unsubscribing
    reader = unique("reader")
    message = send(stack.base_url, reader)
    [mail] = wait_for(lambda: relay.handler.to(reader), timeout=30, message="the message")
    parsed = mail.message
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    found = re.fullmatch(rf"<{re.escape(PUBLIC)}(/u/[A-Za-z0-9_.-]+)>",
                         str(parsed["List-Unsubscribe"]).strip())
    assert found, parsed["List-Unsubscribe"]
    # Both headers are covered by the DKIM signature, which verifies.
    signed = str(parsed["DKIM-Signature"]).replace("\r\n", "").replace(" ", "")
    assert "list-unsubscribe:list-unsubscribe-post" in signed.lower()
    assert dkim.verify(mail.data, dnsfunc=dns_stub(published))
    # The public URL reaches this ingress (in production, through the Ingress).
    link = f"{stack.base_url}{found.group(1)}"
    suppressions = SyncSuppressionList(redis_server.client(), prefix)

    page = browser.new_page()
    try:
        page.goto(link, timeout=TIMEOUT_MS)
        expect(page.get_by_role("heading")).to_have_text("Unsubscribe?")
        expect(page.get_by_text("Stop sending transactional email to r***@example.org?")
               ).to_be_visible()
        # Opening the link changed nothing (scanners and previews fetch links).
        assert suppressions.get(reader, "transactional") is None
        page.get_by_role("button", name="Unsubscribe").click()
        expect(page.get_by_role("heading")).to_have_text("Unsubscribed", timeout=TIMEOUT_MS)
        expect(page.get_by_text("no more transactional email")).to_be_visible()
    finally:
        page.close()
    entry = suppressions.get(reader, "transactional")
    assert entry is not None and entry.reason == "unsubscribe"
    assert entry.source_message_id == message["id"]
    assert send(stack.base_url, reader)["status"] == "suppressed"
    # The mail client's own one-click POST (RFC 8058) for another reader works the same.
    other = unique("client")
    send(stack.base_url, other)
    [second] = wait_for(lambda: relay.handler.to(other), timeout=30, message="the message")
    path = re.fullmatch(rf"<{re.escape(PUBLIC)}(/u/[^>]+)>",
                        str(second.message["List-Unsubscribe"]).strip())
    assert path
    answer = httpx.post(f"{stack.base_url}{path.group(1)}",
                        content=b"List-Unsubscribe=One-Click",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200
    assert suppressions.get(other, "transactional") is not None
