"""The MIME writer: what it produces parses back, byte-exact where it matters."""

from __future__ import annotations

import base64
import re
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from mailcore.message import Recipient
from mailcore.mime import _base64_lines, build_envelope
from mailcore.rendering import RenderedEmail

SENDER = Recipient(email="noreply@shop.example.com", name="Shop, Inc.")


def parse(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_round_trips_unicode_headers_and_bodies() -> None:
    subject = "Votre code \u2013 Ünïcode ✓ " + "long " * 30
    text = "Bonjour Zoë,\r\nvotre code: 123456\n.a line starting with a dot\rend  \n"
    html = "<p>Bonjour <b>Zoë</b> — " + "x" * 300 + "</p>"
    envelope = build_envelope(
        message_id="m-1", rendered=RenderedEmail(subject=subject, html=html, text=text),
        sender=SENDER, to=[Recipient(email="zoe@example.com", name="Zoë Ça")],
        cc=[Recipient(email="cc@example.org")], bcc=[Recipient(email="hidden@example.org")],
        reply_to=Recipient(email="help@example.com", name="Help Desk"),
        headers={"X-Campaign": "automne ✓"}, tags=["reset", "fr"])
    message = parse(envelope.as_bytes())
    assert message["Subject"] == subject
    assert message["To"].addresses[0].display_name == "Zoë Ça"
    assert message["From"].addresses[0].display_name == "Shop, Inc."  # the comma stays quoted
    assert str(message["Cc"]) == "cc@example.org"
    assert str(message["Reply-To"]) == "Help Desk <help@example.com>"
    assert message["X-Campaign"] == "automne ✓"
    assert message["X-Email-Service-Tags"] == "reset, fr"
    assert message["Message-ID"] == "<m-1@shop.example.com>"
    assert message["Bcc"] is None
    assert envelope.recipients == ("zoe@example.com", "cc@example.org", "hidden@example.org")
    plain = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    assert plain is not None and rich is not None
    # On the wire every line ends in CRLF (a lone CR or LF included); the text is unchanged.
    assert plain.get_content().replace("\r\n", "\n") == \
        text.replace("\r\n", "\n").replace("\r", "\n")
    assert rich.get_content().rstrip("\r\n") == html
    assert not message.defects and not any(part.defects for part in message.walk())


def test_lines_are_crlf_and_short() -> None:
    envelope = build_envelope(
        message_id="m-2",
        rendered=RenderedEmail(subject="s" * 400, html="<p>" + "h" * 5000 + "</p>",
                               text="t" * 5000),
        sender=SENDER, to=[Recipient(email=f"r{i}@example.com", name=f"Reader {i}")
                           for i in range(40)])
    raw = envelope.as_bytes()
    assert b"\n" not in raw.replace(b"\r\n", b"")  # no bare LF
    assert b"\r" not in raw.replace(b"\r\n", b"")  # no bare CR
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998  # RFC 5322 hard limit
    assert len(parse(raw)["To"].addresses) == 40


def test_internationalised_domains_go_out_in_ascii() -> None:
    envelope = build_envelope(
        message_id="m-3", rendered=RenderedEmail(subject="s", html="<p>h</p>", text="t"),
        sender=Recipient(email="noreply@bücher.example"), to=[Recipient(email="a@münchen.example")])
    assert envelope.sender == "noreply@xn--bcher-kva.example"
    assert envelope.recipients == ("a@xn--mnchen-3ya.example",)
    assert envelope.as_bytes().isascii()
    assert parse(envelope.as_bytes())["Message-ID"] == "<m-3@xn--bcher-kva.example>"


def test_each_message_has_its_own_boundary() -> None:
    def boundary() -> str:
        rendered = RenderedEmail(subject="s", html="h", text="t")
        raw = build_envelope(message_id="m", rendered=rendered, sender=SENDER,
                             to=[Recipient(email="a@example.com")]).as_bytes()
        found = re.search(rb'boundary="([^"]+)"', raw)
        assert found
        return found.group(1).decode()

    assert boundary() != boundary()


def test_html_goes_in_base64_and_text_in_quoted_printable() -> None:
    html = "<p>Zoë —\r\nline two\rline three\nend</p>" + "<td style=\"a:b\">x</td>" * 400
    text = "Zoë — plain\ntext"
    envelope = build_envelope(
        message_id="m-4", rendered=RenderedEmail(subject="s", html=html, text=text),
        sender=SENDER, to=[Recipient(email="a@example.com")])
    message = parse(envelope.as_bytes())
    rich = message.get_body(preferencelist=("html",))
    plain = message.get_body(preferencelist=("plain",))
    assert rich is not None and plain is not None
    assert rich["Content-Transfer-Encoding"] == "base64"
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    # Base64 text is in canonical form: every line end, whatever it was, is CRLF.
    decoded = rich.get_payload(decode=True)
    assert decoded == html.replace("\r\n", "\n").replace("\r", "\n").replace(
        "\n", "\r\n").encode("utf-8")
    assert plain.get_content().replace("\r\n", "\n") == text
    payload = rich.get_payload()
    assert isinstance(payload, str)
    encoded_lines = payload.split("\r\n")
    assert max(len(line) for line in encoded_lines) <= 76  # RFC 2045 6.8


@pytest.mark.parametrize("size", [0, 1, 2, 3, 56, 57, 58, 114, 171, 1000, 65_537])
def test_base64_lines_are_the_standard_librarys(size: int) -> None:
    data = bytes((i * 131 + size) % 256 for i in range(size))
    assert _base64_lines(data) == base64.encodebytes(data).replace(b"\n", b"\r\n")
