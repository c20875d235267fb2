"""Addresses: one form from the door to RCPT TO, refused at the door when it cannot be sent,
and one reset-limit key per mailbox whatever its spelling."""

from __future__ import annotations

import uuid
from email import message_from_bytes, policy
from typing import Any

import idna
import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from mailcore.addresses import mailbox_key, normalize_address, parse_mailbox
from mailcore.config import ConfigError
from mailcore.message import ACCEPTED, Recipient, SendRequest, recipient_from_text
from mailcore.mime import build_envelope
from mailcore.rendering import RenderedEmail
from mailcore.tokens import mint_token
from service.app import create_app

from .support import TEST_SECRET, RedisServer, app_settings, make_settings

#: "example" in fullwidth letters.
FULLWIDTH = "".join(chr(ord(char) + 0xFEE0) for char in "example")
# (as the caller wrote it, the domain it names in A-labels (IDNA 2008 + UTS #46 mapping)).
IDN = [
    ("ada@straße.de", "xn--strae-oqa.de"),  # IDNA 2003 would send this to strasse.de
    ("ada@STRAßE.DE", "xn--strae-oqa.de"),
    ("ada@xn--strae-oqa.de", "xn--strae-oqa.de"),
    ("ada@XN--STRAE-OQA.DE", "xn--strae-oqa.de"),
    ("ada@ςοφία.gr", "xn--kxae4blv.gr"),  # final sigma: IDNA 2003 maps it to sigma
    ("ada@σοφία.gr", "xn--kxae4bpq.gr"),
    ("ada@ΣΟΦΊΑ.gr", "xn--kxae4bpq.gr"),
    (f"ada@{FULLWIDTH}.com", "example.com"),  # fullwidth
    ("ada@münchen.example", "xn--mnchen-3ya.example"),
    ("ada@mu\u0308nchen.example", "xn--mnchen-3ya.example"),  # decomposed ü
    ("ada@Bücher.Example", "xn--bcher-kva.example"),
    ("ada@例え.テスト", "xn--r8jz45g.xn--zckzah"),
]


@pytest.mark.parametrize(("written", "domain"), IDN)
def test_the_door_keeps_exactly_the_domain_the_caller_named(written: str, domain: str) -> None:
    address = SendRequest.model_validate(
        {"template": "t", "to": written}).to[0].email
    assert address == f"ada@{domain}"
    assert address.isascii()
    # The A-labels are the caller's domain, not the IDNA 2003 mapping of it.
    named = written.rpartition("@")[2]
    assert idna.decode(domain) == idna.decode(idna.encode(named, uts46=True))
    if named.lower() in {"straße.de", "ςοφία.gr"}:
        assert domain != named.encode("idna").decode()


@pytest.mark.parametrize(("written", "domain"), IDN)
def test_rcpt_and_headers_carry_the_validated_form(written: str, domain: str) -> None:
    request = SendRequest.model_validate({
        "template": "t", "to": {"email": written, "name": "Ada"},
        "cc": ["ADA@" + written.rpartition("@")[2]],
        "reply_to": written, "from": f"shop@{written.rpartition('@')[2]}"})
    # The job goes through JSON to the worker, which takes it as it is.
    job = SendRequest.model_validate(
        request.model_dump(mode="json", by_alias=True, exclude_defaults=True), context=ACCEPTED)
    assert request.sender is not None and job.sender is not None
    envelope = build_envelope(
        message_id="m-1", rendered=RenderedEmail(subject="s", html="<p>h</p>", text="t"),
        sender=job.sender, to=job.to, cc=job.cc, reply_to=job.reply_to)
    assert envelope.sender == f"shop@{domain}"
    assert set(envelope.recipients) <= {f"ada@{domain}", f"ADA@{domain}"}
    message = message_from_bytes(envelope.as_bytes(), policy=policy.default)
    assert envelope.as_bytes().isascii()
    assert message["To"].addresses[0].domain == domain
    assert message["Cc"].addresses[0].domain == domain
    assert message["Reply-To"].addresses[0].domain == domain
    assert message["From"].addresses[0].domain == domain
    assert message["Message-ID"] == f"<m-1@{domain}>"


NON_ASCII_LOCAL = ["zoë@example.com", "\uff21da@example.com", "ad\u0430@example.com",  # Cyrillic a
                   "e\u0301@example.com", "用户@例子.广告", "ada\u00a0@example.com"]


@pytest.mark.parametrize("address", NON_ASCII_LOCAL)
def test_non_ascii_local_parts_are_refused_at_the_door(address: str) -> None:
    with pytest.raises(ValidationError) as refused:
        SendRequest.model_validate({"template": "t", "to": address})
    assert refused.value.errors()[0]["loc"] == ("to", 0, "email")


@pytest.mark.parametrize("address", [*NON_ASCII_LOCAL, "ada@straße.de"])
def test_a_job_with_a_non_ascii_address_is_validated_again_not_re_encoded(address: str) -> None:
    """A job queued before this rule (or forged) is checked like a request, never sent through
    the standard library's IDNA 2003 codec."""
    body = {"template": "t", "to": address}
    if address.partition("@")[0].isascii():
        assert SendRequest.model_validate(body, context=ACCEPTED).to[0].email == \
            "ada@xn--strae-oqa.de"
    else:
        with pytest.raises(ValidationError, match="must be ASCII"):
            SendRequest.model_validate(body, context=ACCEPTED)


@pytest.mark.parametrize("address", ["ada@exa\u200dmple.com", "ada@exa\u200cmple.com",
                                     "ada@xn--strae-oqa-.de", "ada@xn--zz.de", "ada@ex ample.com",
                                     "ada@" + "a" * 64 + ".com", "a" * 65 + "@example.com",
                                     "ada@" + ".".join(["abcdefghi"] * 26) + ".com"])
def test_invalid_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="not a valid email address"):
        normalize_address(address)


@pytest.mark.parametrize("to", [
    42, None, True, [["ada@example.com"]], {"email": 42}, {"email": None},
    {"email": ["ada@example.com"]}, {"email": "ada@example.com", "name": 7},
    {"email": "ada@example.com", "extra": 1}, "ada@example.com\x00", "ada@example.com\ud800",
    "a" * 400 + "@example.com", "ada@" + "b" * 300 + ".com", "", "@", "ada@", "@example.com",
])
def test_addresses_of_other_types_and_sizes_are_refused(to: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        SendRequest.model_validate({"template": "t", "to": to})
    assert refused.value.errors()[0]["loc"][0] == "to"


def test_door_answers_422_naming_the_field(redis_server: RedisServer) -> None:
    settings = app_settings(redis_server.url, QUEUE_NAME=f"addr-{uuid.uuid4().hex[:8]}",
                            ALLOWED_SENDER_DOMAINS="straße.de")
    auth = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='addr')}"}
    base: dict[str, Any] = {"template": "password_reset", "to": "ada@example.com",
                            "data": {"email": "ada@example.com", "code": "1"}}
    with TestClient(create_app(settings)) as client:
        for field, value, where in [
            ("to", "zoë@example.com", "to.0.email"),
            ("cc", ["ok@example.com", {"email": "\uff21da@example.com"}], "cc.1.email"),
            ("bcc", "e\u0301@example.com", "bcc.0.email"),
            ("reply_to", {"email": "zoë@example.com", "name": "Z"}, "reply_to.email"),
            ("from", "zoë@straße.de", "from.email"),
        ]:
            response = client.post("/v1/messages", json={**base, field: value}, headers=auth)
            assert response.status_code == 422, response.text
            detail = response.json()["details"][0]
            assert detail["field"] == where
            assert "must be ASCII" in detail["message"]
        legacy = client.post("/email-service/send-reset-code",
                             json={"email": "zoë@example.com", "code": "1"}, headers=auth)
        assert legacy.status_code == 400
        # The allowed sender domain matches whichever way the caller spells it.
        for sender in ("shop@straße.de", "shop@xn--strae-oqa.de", "shop@STRAßE.de"):
            response = client.post("/v1/messages", json={**base, "from": sender}, headers=auth)
            assert response.status_code == 202, response.text
        # strasse.de is another domain, not allowed.
        response = client.post("/v1/messages", json={**base, "from": "shop@strasse.de"},
                               headers=auth)
        assert response.json()["error"] == "sender_not_allowed"


def test_configured_sender_is_normalized_the_same_way() -> None:
    settings = make_settings(SENDER_EMAIL="No-Reply@Bücher.Example",
                             ALLOWED_SENDER_DOMAINS=f"Straße.de, {FULLWIDTH}.org")
    assert settings.sender.email == "No-Reply@xn--bcher-kva.example"
    assert settings.sender.allowed_domains == {"xn--strae-oqa.de", "example.org"}
    assert settings.sender.domain_allowed("a@xn--bcher-kva.example")
    assert not settings.sender.domain_allowed("a@strasse.de")
    for env in ({"SENDER_EMAIL": "zoë@example.com"}, {"ALLOWED_SENDER_DOMAINS": "a..b"},
                {"SENDER_NAME": "Shop\x00"}, {"SENDER_NAME": "Shop\x1b[1m"}):
        with pytest.raises(ConfigError):
            make_settings(**env)


# --- One mailbox, one reset-limit key ------------------------------------------------------------

SAME_MAILBOX = [
    "victim@straße.de", "Victim@STRAßE.DE", "VICTIM@xn--strae-oqa.de", "victim@XN--STRAE-OQA.de",
    "victim+reset@straße.de", "Victim+a+b@xn--strae-oqa.de", "victim+@straße.de",
]
OTHER_MAILBOXES = ["victim@strasse.de", "victim2@straße.de", "vic.tim@straße.de",
                   "victim-x@straße.de", "victim@straße.de.example"]


def test_every_spelling_of_a_mailbox_has_one_key() -> None:
    door = [SendRequest.model_validate({"template": "t", "to": a}).to[0].email
            for a in SAME_MAILBOX]
    keys = {mailbox_key(address) for address in [*SAME_MAILBOX, *door]}
    assert keys == {"victim@xn--strae-oqa.de"}
    # Unicode forms of the same domain (fullwidth, decomposed) fold too.
    assert mailbox_key(f"ada@{FULLWIDTH}.com") == mailbox_key("ADA@example.com")
    assert mailbox_key("ada@mu\u0308nchen.example") == mailbox_key("ada@xn--mnchen-3ya.example")
    others = {mailbox_key(normalize_address(a)) for a in OTHER_MAILBOXES}
    assert len(others) == len(OTHER_MAILBOXES) and not others & keys


def test_the_reset_limit_counts_a_mailbox_once_whatever_its_spelling(
        redis_server: RedisServer) -> None:
    settings = app_settings(redis_server.url, QUEUE_NAME=f"addr-{uuid.uuid4().hex[:8]}",
                            KEY_PREFIX=f"addr-{uuid.uuid4().hex[:8]}",
                            RESET_LIMIT_PER_RECIPIENT="5/hour")
    auth = {"Authorization": f"Bearer {mint_token(TEST_SECRET)}"}
    user = f"v{uuid.uuid4().hex[:6]}"
    spellings = [f"{user}@straße.de", f"{user.upper()}@xn--strae-oqa.de",
                 f"{user}+1@STRAßE.DE", f"{user}+2@straße.de", f"{user}@XN--STRAE-OQA.DE",
                 f"{user}+3@straße.de"]
    with TestClient(create_app(settings)) as client:
        codes = [client.post("/email-service/send-reset-code",
                             json={"email": spelling, "code": "1"}, headers=auth).status_code
                 for spelling in spellings]
        assert codes == [200] * 5 + [429]
        # Several spellings in one message are one mailbox: one token, not three.
        other = f"w{uuid.uuid4().hex[:6]}"
        body = {"template": "password_reset", "data": {"email": "x@example.com", "code": "1"},
                "to": [f"{other}@example.com", f"{other.upper()}@EXAMPLE.com"],
                "cc": [f"{other}+x@example.com"]}
        assert [client.post("/v1/messages", json=body, headers=auth).status_code
                for _ in range(6)] == [202] * 5 + [429]
        # strasse.de is someone else's mailbox: not limited.
        response = client.post("/email-service/send-reset-code",
                               json={"email": f"{user}@strasse.de", "code": "1"}, headers=auth)
        assert response.status_code == 200


# --- Sender overrides of template resources ------------------------------------------------------

@pytest.mark.parametrize(("text", "name", "address"), [
    ("shop@example.com", None, "shop@example.com"),
    ("<shop@example.com>", None, "shop@example.com"),
    ("Shop <shop@straße.de>", "Shop", "shop@xn--strae-oqa.de"),
    ("Shop, Inc. <shop@example.com>", "Shop, Inc.", "shop@example.com"),
    ('"Shop \\"Ltd\\"" <Shop@Example.COM>', 'Shop "Ltd"', "Shop@example.com"),
    ("  Zoë's Shop   <shop@example.com>  ", "Zoë's Shop", "shop@example.com"),
])
def test_sender_overrides_parse_one_way(text: str, name: str | None, address: str) -> None:
    assert parse_mailbox(text) == (name, address)
    assert recipient_from_text(text) == Recipient(email=address, name=name)


@pytest.mark.parametrize("text", [
    "a@example.com, b@example.com", "Group: a@example.com;", "Name <a@example.com> tail",
    "Name <a@example.com", "a@example.com (comment)", "zoë@example.com", "Shop <not-an-address>",
    "Sh\x00op <a@example.com>", "a@example.com\r\nBcc: b@example.com", "x" * 201 + " <a@b.co>",
    "", "<>",
])
def test_malformed_sender_overrides_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        recipient_from_text(text)
