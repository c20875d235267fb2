"""Which messages carry the RFC 8058 headers (the worker's Deliverer, writing real .eml files
through the outbox transport), the template spec field that asks for them, and how it is stored
and versioned."""

from __future__ import annotations

import email
import email.policy
import uuid
from pathlib import Path
from typing import Any

import pytest

from mailcore.rendering import TemplateError, TemplateSource
from mailcore.store import decode_record, encode_record
from mailcore.template_resources import source_from_spec
from mailcore.templates import TemplateRegistry
from mailcore.transports.outbox import OutboxTransport
from mailcore.unsubscribe import verify_token
from workers.delivery import Deliverer

from .support import make_settings

SECRET = "u" * 40


def source(unsubscribe: bool) -> TemplateSource:
    return TemplateSource(name="news", subject="News", html="<p>Hi</p>", unsubscribe=unsubscribe)


def deliverer(tmp_path: Path, **env: str) -> Deliverer:
    settings = make_settings(**{"SENDER_EMAIL": "noreply@shop.example.com",
                                "PUBLIC_BASE_URL": "https://mail.example.com",
                                "UNSUBSCRIBE_SECRETS": SECRET, **env})
    registry = TemplateRegistry({"news": source(True), "plain": source(False)})
    return Deliverer(settings, registry, OutboxTransport(tmp_path))


def sent(tmp_path: Path, deliverer: Deliverer, template: str, to: list[str],
         **request: Any) -> email.message.EmailMessage:
    message_id = str(uuid.uuid4())
    deliverer.deliver({"id": message_id,
                       "request": {"template": template, "to": to, **request}})
    [written] = [p for p in tmp_path.glob("*.eml") if message_id in p.name]
    parsed = email.message_from_bytes(written.read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def test_a_template_that_asks_gets_both_headers_with_a_valid_token(tmp_path: Path) -> None:
    mail = sent(tmp_path, deliverer(tmp_path), "news", ["Ada+x@example.com"])
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = str(mail["List-Unsubscribe"]).strip()
    assert link.startswith("<https://mail.example.com/u/") and link.endswith(">")
    found = verify_token([SECRET], link[len("<https://mail.example.com/u/"):-1])
    assert found is not None and found.address == "ada@example.com"
    assert found.scope == "transactional"


@pytest.mark.parametrize(("template", "to", "extra", "env"), [
    ("plain", ["ada@example.com"], {}, {}),                                 # not asked
    ("news", ["ada@example.com", "bob@example.com"], {}, {}),               # two recipients
    ("news", ["ada@example.com"], {"bcc": ["bob@example.com"]}, {}),        # two, one hidden
    ("news", ["ada@example.com"], {}, {"UNSUBSCRIBE_SECRETS": ""}),         # not configured
])
def test_no_headers(tmp_path: Path, template: str, to: list[str], extra: dict[str, Any],
                    env: dict[str, str]) -> None:
    mail = sent(tmp_path, deliverer(tmp_path, **env), template, to, **extra)
    assert mail["List-Unsubscribe"] is None and mail["List-Unsubscribe-Post"] is None


def test_streams_listed_get_them_without_the_template_asking(tmp_path: Path) -> None:
    mail = sent(tmp_path, deliverer(tmp_path, UNSUBSCRIBE_STREAMS="transactional"), "plain",
                ["ada@example.com"])
    assert mail["List-Unsubscribe"] is not None


def test_the_callers_own_list_header_wins(tmp_path: Path) -> None:
    own = "<mailto:leave@shop.example.com>"
    mail = sent(tmp_path, deliverer(tmp_path), "news", ["ada@example.com"],
                headers={"List-Unsubscribe": own})
    assert str(mail["List-Unsubscribe"]).strip() == own
    assert mail["List-Unsubscribe-Post"] is None


def test_the_spec_field() -> None:
    spec: dict[str, Any] = {"subject": "S", "html": "<p>x</p>"}
    assert source_from_spec("ns/a", spec).unsubscribe is False
    assert source_from_spec("ns/a", {**spec, "unsubscribe": True}).unsubscribe is True
    for bad in ("true", 1, None, [True]):
        with pytest.raises(TemplateError, match=r"spec\.unsubscribe"):
            source_from_spec("ns/a", {**spec, "unsubscribe": bad})
    # Off, the version is what it was before the field existed; on, it is another version.
    off = source_from_spec("ns/a", spec)
    assert off.version == source_from_spec("ns/a", {**spec, "unsubscribe": False}).version
    assert off.version != source_from_spec("ns/a", {**spec, "unsubscribe": True}).version


def test_the_store_keeps_it() -> None:
    for flag in (True, False):
        record = decode_record(encode_record("ns/a", source(flag), {}))
        assert record.source.unsubscribe is flag
