"""The Mailtrap transport against a local stand-in speaking Mailtrap's documented API: the
request's shape and token, and how each answer maps to our errors (which decides retry,
dead-letter, failover and the no-duplicate rule)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from harness.mailtrap import MailtrapStandIn
from mailcore.message import Recipient
from mailcore.mime import Envelope, build_envelope
from mailcore.rendering import RenderedEmail
from mailcore.transports import (
    ConfigurationDeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnconfirmedDeliveryError,
)
from mailcore.transports.mailtrap import MailtrapTransport, retry_after

from .support import free_port


@pytest.fixture(scope="module")
def stand_in() -> Iterator[MailtrapStandIn]:
    server = MailtrapStandIn(slow_seconds=3).start()
    yield server
    server.stop()


@pytest.fixture
def transport(stand_in: MailtrapStandIn) -> Iterator[MailtrapTransport]:
    client = MailtrapTransport(stand_in.token, base_url=stand_in.url, timeout=1.0)
    yield client
    client.close()
    assert not stand_in.violations, stand_in.violations


def envelope(to: str) -> Envelope:
    return build_envelope(
        message_id=str(uuid.uuid4()),
        rendered=RenderedEmail(subject="Your order", html="<p>Thanks</p>", text="Thanks"),
        sender=Recipient(email="shop@example.com", name="Shop"),
        to=[Recipient(email=to, name="Ada")],
        cc=[Recipient(email="cc@example.com")], bcc=[Recipient(email="bcc@example.com")],
        reply_to=Recipient(email="help@example.com", name="Help"),
        headers={"X-Campaign": "autumn"}, tags=["orders", "eu"],
    )


def address() -> str:
    return f"ada-{uuid.uuid4().hex[:8]}@example.com"


def test_a_send_carries_the_documented_body_and_token(
        stand_in: MailtrapStandIn, transport: MailtrapTransport) -> None:
    to = address()
    mail = envelope(to)
    result = transport.send(mail)
    assert result.transport == "mailtrap" and result.response.startswith("200 message_ids=")
    [request] = stand_in.delivered(to)
    assert request.path == "/api/send"
    assert request.headers["authorization"] == f"Bearer {stand_in.token}"
    body = request.body
    assert body["from"] == {"email": "shop@example.com", "name": "Shop"}
    assert body["to"] == [{"email": to, "name": "Ada"}]
    assert body["cc"] == [{"email": "cc@example.com"}]
    assert body["bcc"] == [{"email": "bcc@example.com"}]
    assert body["reply_to"] == {"email": "help@example.com", "name": "Help"}
    assert (body["subject"], body["html"], body["text"]) == ("Your order", "<p>Thanks</p>",
                                                              "Thanks")
    assert body["headers"] == {"X-Campaign": "autumn", "X-Email-Service-Id": mail.message_id,
                               "X-Email-Service-Tags": "orders, eu"}
    assert body["category"] == "orders"
    assert body["custom_variables"] == {"email_service_id": mail.message_id}


def test_a_sandbox_inbox_is_addressed_by_its_path(stand_in: MailtrapStandIn) -> None:
    to = address()
    client = MailtrapTransport(stand_in.token, base_url=stand_in.url, inbox_id="4242")
    try:
        client.send(envelope(to))
    finally:
        client.close()
    assert [r.path for r in stand_in.delivered(to)] == ["/api/send/4242"]


@pytest.mark.parametrize(("answer", "error", "code", "text"), [
    ("400", PermanentDeliveryError, 400, "'to' address is invalid"),
    ("422", PermanentDeliveryError, 422, "subject is too long"),
    ("401", ConfigurationDeliveryError, 401, "MAILTRAP_API_TOKEN"),
    ("403", ConfigurationDeliveryError, 403, "Sending domain not verified"),
    ("429", TransientDeliveryError, 429, "Too many requests"),
    ("500", TransientDeliveryError, 500, "Internal Server Error"),
])
def test_answers_map_to_permanent_or_transient_errors(
        stand_in: MailtrapStandIn, transport: MailtrapTransport, answer: str,
        error: type[Exception], code: int, text: str) -> None:
    to = address()
    stand_in.plan[to] = [answer]
    with pytest.raises(error) as raised:
        transport.send(envelope(to))
    exc = raised.value
    assert type(exc) is error
    assert getattr(exc, "smtp_code", None) == code and text in str(exc)
    # Refused outright: another transport may take it (401/403 are our configuration).
    assert getattr(exc, "before_accept", None) is (answer not in {"400", "422"})
    if answer == "429":
        assert getattr(exc, "retry_after", None) == 1.0


def test_a_wrong_token_is_a_configuration_error(stand_in: MailtrapStandIn) -> None:
    client = MailtrapTransport("not-the-token", base_url=stand_in.url)
    try:
        with pytest.raises(ConfigurationDeliveryError, match="401"):
            client.send(envelope(address()))
    finally:
        client.close()


@pytest.mark.parametrize("answer", ["slow", "drop"])
def test_a_lost_answer_is_unconfirmed_never_before_accept(
        stand_in: MailtrapStandIn, transport: MailtrapTransport, answer: str) -> None:
    to = address()
    stand_in.plan[to] = [answer]
    with pytest.raises(UnconfirmedDeliveryError) as raised:
        transport.send(envelope(to))
    assert not raised.value.before_accept and raised.value.outcome == "unconfirmed"
    assert len(stand_in.seen(to)) == 1  # Mailtrap has the request


def test_nothing_listening_is_transient_before_accept() -> None:
    port = free_port()  # bound by nobody
    client = MailtrapTransport("t", base_url=f"http://127.0.0.1:{port}", timeout=1.0)
    try:
        with pytest.raises(TransientDeliveryError) as raised:
            client.send(envelope(address()))
    finally:
        client.close()
    assert raised.value.before_accept and "cannot reach Mailtrap" in str(raised.value)


@pytest.mark.parametrize(("header", "seconds"), [
    ("7", 7.0), ("0", 0.0), ("999999", 3600.0), ("soon", None), ("", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_retry_after_is_read_and_bounded(header: str, seconds: float | None) -> None:
    assert retry_after({"retry-after": header} if header else {}) == seconds
