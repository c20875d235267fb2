"""Custom headers by allow-list, our own headers unspoofable, and encoded words in names and
subjects shown literally by a client (the MIME is parsed as a mail client parses it)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from mailcore.headers import MAX_HEADERS, check_headers
from mailcore.message import SendRequest
from mailcore.mime import build_envelope
from mailcore.rendering import RenderedEmail
from mailcore.tokens import mint_token
from service.app import create_app

from .support import TEST_SECRET, RedisServer, app_settings

REFUSED_NAMES = [
    # read receipts
    "Disposition-Notification-To", "Return-Receipt-To", "X-Confirm-Reading-To",
    # resending, tracing, authentication
    "Resent-From", "Resent-To", "Resent-Message-ID", "Received", "Return-Path",
    "Authentication-Results", "ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results",
    "DKIM-Signature", "DomainKey-Signature", "Received-SPF", "X-Original-To",
    "X-Forwarded-For", "X-Received", "X-Envelope-From", "X-Originating-IP",
    # the message's own structure and addressing
    "Content-Type", "Content-Disposition", "Content-Transfer-Encoding", "Content-ID",
    "MIME-Version", "From", "Sender", "To", "Cc", "Bcc", "Reply-To", "Subject", "Date",
    "Message-ID", "Errors-To", "Comments",
    # ours, in any case
    "X-Email-Service-Id", "x-email-service-id", "X-EMAIL-SERVICE-ID", "X-Email-Service-Tags",
    "x-Email-Service-Anything",
    # filters and hosted relays act on these
    "X-Spam-Status", "X-Spam-Flag", "x-spam-score", "X-Virus-Scanned",
    "X-MS-Exchange-Organization-SCL", "X-Microsoft-Antispam", "X-Forefront-Antispam-Report",
    "X-Google-DKIM-Signature", "X-SMTPAPI", "X-SES-CONFIGURATION-SET", "X-Mailgun-Variables",
    "X-PM-Message-Stream", "X-MC-Metadata", "X-Apparently-To", "X-Sender",
    # not header names a relay would take
    "X-", "X_Trace", "X-Trace ", "X-Tr:ace", "X-Tráce", "X--Trace", "Xtrace", "", "X-" + "a" * 80,
    # letters that match ASCII ones only when case is folded (Kelvin sign, long s, dotless i)
    "X-\u212aey", "X-Email-Servi\u017fe-Id", "X-L\u0131st", "List-Unsubscr\u0131be",
    "\u212a-Trace",
]


@pytest.mark.parametrize("name", REFUSED_NAMES)
def test_headers_outside_the_allow_list_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_headers({name: "value"})


ACCEPTED = {
    "X-Campaign": "autumn", "x-trace-id": "abc123", "X-Priority": "1",
    "List-Unsubscribe": "<https://shop.example.com/u/1?t=a%3Fb>, <mailto:u@shop.example.com>",
    "list-unsubscribe-post": "List-Unsubscribe=One-Click",
    "LIST-ID": "Shop orders <orders.shop.example.com>",
    "List-Help": "<https://shop.example.com/help>", "List-Post": "NO",
    "In-Reply-To": "<a.1@shop.example.com>",
    "References": "<a.1@shop.example.com> <b.2@shop.example.com>",
    "Auto-Submitted": "auto-generated", "Precedence": "bulk",
    "Feedback-ID": "orders:shop:transactional:esp",
}


def test_allowed_headers_are_accepted_and_named_as_their_rfc_names_them() -> None:
    checked = check_headers(ACCEPTED)
    assert "List-Unsubscribe-Post" in checked and "List-Id" in checked
    assert checked["x-trace-id"] == "abc123"  # X- names are kept as the caller wrote them
    assert len(checked) == len(ACCEPTED)


@pytest.mark.parametrize("headers", [
    {"List-Unsubscribe": "https://no-angle-brackets.example.com"},
    {"List-Unsubscribe": "<https://a.example.com/=?utf-8?b?QQ==?=>"},
    {"List-Unsubscribe-Post": "List-Unsubscribe=Everything"},
    {"List-Id": "=?utf-8?b?U2hvcA==?= <orders.shop.example.com>"},
    {"List-Id": "Shop <not a list id>"},
    {"In-Reply-To": "not-a-message-id"},
    {"References": "<a@b> junk"},
    {"Auto-Submitted": "no; x=1\tBcc: a@b.c"},
    {"Precedence": "first-class"}, {"Precedence": "bul\u212a"},
    {"Auto-Submitted": "auto\u2010generated"},
    {"X-Trace": "a\r\nBcc: victim@example.org"}, {"X-Trace": "a\nb"}, {"X-Trace": "a\rb"},
    {"X-Trace": "a\x00b"}, {"X-Trace": "a\x1bb"}, {"X-Trace": "a\x7fb"},
    {"X-Trace": "x" * 999},
    {"X-Trace": "1", "x-trace": "2"},  # the same header twice
    {f"X-H{i}": "v" for i in range(MAX_HEADERS + 1)},
])
def test_header_values_are_bounded_single_lines_in_their_rfc_shape(
        headers: dict[str, str]) -> None:
    with pytest.raises((ValueError, ValidationError)):
        SendRequest.model_validate({"template": "t", "to": "a@example.com", "headers": headers})


@pytest.mark.parametrize("headers", [
    {"X-Trace": 5}, {"X-Trace": None}, {"X-Trace": ["a"]}, {"X-Trace": {"a": "b"}},
    {"X-Trace": True}, {"X-Trace": b"bytes".decode() + "\ud800"}, [["X-Trace", "a"]], "X-Trace: a",
])
def test_header_values_of_other_types_are_refused(headers: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        SendRequest.model_validate({"template": "t", "to": "a@example.com", "headers": headers})
    assert refused.value.errors()[0]["loc"][0] == "headers"


@pytest.mark.parametrize(("field", "value"), [
    ("subject", "Hi \ud800"), ("subject", "Hi\x00"), ("subject", "Hi\x1b[31m"),
    ("to", {"email": "a@example.com", "name": "A\udfff"}),
    ("from", {"email": "a@example.com", "name": "A\x7f"}),
    ("reply_to", {"email": "a@example.com", "name": "A\x0b"}),
])
def test_text_that_cannot_be_a_header_is_refused(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        SendRequest.model_validate({"template": "t", "to": "a@example.com", field: value})
    assert refused.value.errors()[0]["loc"][0] == field


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    settings = app_settings(redis_server.url, QUEUE_NAME=f"headers-{uuid.uuid4().hex[:8]}",
                            RESET_LIMIT_PER_RECIPIENT="off")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _send(client: TestClient, **extra: Any) -> Any:
    body = {"template": "password_reset", "to": "ada@example.com",
            "data": {"email": "ada@example.com", "code": "1"}, **extra}
    return client.post("/v1/messages", json=body, headers={
        "Authorization": f"Bearer {mint_token(TEST_SECRET, subject='headers')}"})


@pytest.mark.parametrize("name", ["Disposition-Notification-To", "Resent-From", "ARC-Seal",
                                  "x-email-service-id", "Content-Disposition", "X-Spam-Status"])
def test_the_door_answers_422_naming_the_header(client: TestClient, name: str) -> None:
    response = _send(client, headers={"X-Fine": "1", name: "a@example.com"})
    assert response.status_code == 422, response.text
    detail = response.json()["details"][0]
    assert detail["field"] == "headers" and name in detail["message"]
    assert _send(client, headers=ACCEPTED).status_code == 202


# --- Encoded words are text, never decoded into a name or subject --------------------------------

ENCODED_WORDS = [
    "=?utf-8?b?UGF5UGFsIFNlY3VyaXR5?=",  # "PayPal Security"
    "=?UTF-8?B?UGF5UGFsIFNlY3VyaXR5?=",
    "=?utf-8?q?PayPal_Security?=",
    "=?iso-8859-1?q?Caf=E9?=",
    "=?utf-8?b?QWRtaW4gPGFkbWluQGJhbmsuZXhhbXBsZT4=?=",  # "Admin <admin@bank.example>"
    "Support =?utf-8?q?team?= desk",
    "=?utf-8?b?5pSv5LuY?= ✓ Zoë",  # non-ASCII around it
    "=?utf-8*en?q?Hi?=",  # RFC 2231 language tag
    "x" * 60 + " =?utf-8?q?long?= " + "y" * 60,  # folded
]


def _raw(name: str) -> bytes:
    request = SendRequest.model_validate({
        "template": "t", "to": {"email": "to@example.com", "name": name},
        "cc": [{"email": "cc@example.com", "name": name}],
        "reply_to": {"email": "reply@example.com", "name": name},
        "from": {"email": "shop@example.com", "name": name},
        "headers": {"X-Note": name}})
    assert request.sender is not None
    return build_envelope(
        message_id="m-1", rendered=RenderedEmail(subject=name, html="<p>h</p>", text="t"),
        sender=request.sender, to=request.to, cc=request.cc, reply_to=request.reply_to,
        headers=request.headers).as_bytes()


def _envelope(name: str) -> EmailMessage:
    message = message_from_bytes(_raw(name), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


@pytest.mark.parametrize("text", ENCODED_WORDS)
def test_encoded_words_are_shown_literally_in_every_name_and_the_subject(text: str) -> None:
    message = _envelope(text)
    for field in ("From", "To", "Cc", "Reply-To"):
        (address,) = message[field].addresses
        assert address.display_name == text, field  # as typed, not decoded
    assert message["Subject"] == text
    assert message["X-Note"] == text
    assert not message.defects


@pytest.mark.parametrize("name", ["Ada Lovelace", "Zoë Ça", "Shop, Inc.", 'A "quoted" name',
                                  "=?", "?=", "a = b ? c", "Ünïcode =?"])
def test_ordinary_names_round_trip(name: str) -> None:
    message = _envelope(name)
    assert message["From"].addresses[0].display_name == name
    assert message["Subject"] == name


def test_unencoded_plain_ascii_stays_readable_on_the_wire() -> None:
    request = SendRequest.model_validate({"template": "t", "to": {
        "email": "to@example.com", "name": "Ada Lovelace"}})
    raw = build_envelope(
        message_id="m-1", rendered=RenderedEmail(subject="Your code", html="h", text="t"),
        sender=request.to[0], to=request.to).as_bytes()
    assert b"From: Ada Lovelace <to@example.com>\r\n" in raw
    assert b"Subject: Your code\r\n" in raw


@pytest.mark.parametrize("name", ["\U0001f600" * 200, "=?" + "\u00e9" * 198, "=?" * 100,
                                  "Zo\u00eb " * 40])
def test_the_longest_names_stay_within_the_line_limit(name: str) -> None:
    raw = _raw(name[:200])
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    message = _envelope(name[:200])
    for field in ("From", "To", "Cc", "Reply-To"):
        shown = message[field].addresses[0].display_name
        # Python's parser spaces out adjacent encoded words (RFC 2047 says to join them).
        assert shown.replace(" ", "") == name[:200].replace(" ", ""), field


@pytest.mark.parametrize("subject", ["Hi\x00there", "Hi\x1b[31mred", "Hi\x7f", "Hi\ud800",
                                     "=?utf-8?q?x?=\x00", "\x01" * 100])
def test_a_rendered_subject_never_puts_controls_on_the_wire(subject: str) -> None:
    """A template's subject renders from data; whatever it holds, the header is clean."""
    raw = build_envelope(
        message_id="m-1", rendered=RenderedEmail(subject=subject, html="h", text="t"),
        sender=SendRequest.model_validate({"template": "t", "to": "a@example.com"}).to[0],
        to=SendRequest.model_validate({"template": "t", "to": "b@example.com"}).to).as_bytes()
    headers = raw.partition(b"\r\n\r\n")[0]
    assert not [byte for byte in headers if (byte < 0x20 and byte not in b"\r\n\t") or byte == 0x7f]
    message = message_from_bytes(raw, policy=policy.default)
    assert message["Subject"].replace("\ufffd", "?") == "".join(
        "?" if ord(char) < 0x20 or ord(char) == 0x7f or 0xD800 <= ord(char) <= 0xDFFF
        else char for char in subject)
