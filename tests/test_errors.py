"""The domain error hierarchy and its one HTTP mapping table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailcore import errors
from mailcore.errors import DeliveryError, EmailServiceError, InvalidRequest, TryLater
from mailcore.tokens import AuthError
from service.errors import http_error

from .support import REPO


def _leaves(kind: type[EmailServiceError]) -> list[type[EmailServiceError]]:
    found = []
    for sub in kind.__subclasses__():
        found.append(sub)
        found += _leaves(sub)
    return found


KINDS = [kind for kind in _leaves(EmailServiceError) if kind.code != "error"]


def _make(kind: type[EmailServiceError]) -> EmailServiceError:
    if issubclass(kind, TryLater):
        return kind("not now", retry_after=2.5)
    return kind("wrong", details=[{"field": "f", "message": "m"}])


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
def test_every_domain_error_has_a_status_and_a_documented_code(kind: type[EmailServiceError]
                                                               ) -> None:
    answer = http_error(_make(kind))
    assert 400 <= answer.status < 600 and answer.status != 500
    assert answer.code == kind.code
    readme = (REPO / "README.md").read_text()
    assert re.search(rf"\| \d{{3}} [^|]*`{kind.code}`", readme), kind.code
    if issubclass(kind, TryLater):
        assert answer.headers["Retry-After"] == "3"


def test_the_reset_contract_answers_invalid_requests_with_400() -> None:
    for kind in _leaves(InvalidRequest):
        assert http_error(_make(kind), invalid_status=400).status == 400
    assert http_error(errors.RateLimited("x", retry_after=1), invalid_status=400).status == 429


def test_the_core_knows_no_http() -> None:
    core = Path(errors.__file__).parent
    # The Mailtrap transport is an HTTP *client*: its provider's status codes are a delivery
    # protocol, as SMTP reply codes are; the rule is about answering our own callers.
    client = core / "transports" / "mailtrap.py"
    for module in core.rglob("*.py"):
        if module == client:
            assert "starlette" not in module.read_text()
            continue
        text = module.read_text()
        assert "starlette" not in text and "status_code" not in text, module
    assert issubclass(AuthError, EmailServiceError)


def test_within_points_details_at_a_batch_item() -> None:
    error = errors.InvalidData("data does not match", details=[{"field": "data.code",
                                                                "message": "required"}])
    error.within("messages.3")
    assert error.message == "messages.3: data does not match"
    assert error.details == [{"field": "messages.3.data.code", "message": "required"}]


def test_delivery_errors_are_domain_errors_with_the_reply_code_apart() -> None:
    from mailcore import transports

    assert transports.DeliveryError is DeliveryError  # one class, wherever it is imported from
    # Never an API answer: no code of its own, so no HTTP status either (KINDS leaves it out).
    delivery: list[type[EmailServiceError]] = [DeliveryError, *_leaves(DeliveryError)]
    assert {kind.code for kind in delivery} == {"error"}
    soft = errors.TransientDeliveryError("Mailbox full", 452)
    assert (soft.smtp_code, soft.text, str(soft)) == (452, "Mailbox full", "452 Mailbox full")
    assert str(errors.UnconfirmedDeliveryError("no reply")) == "no reply"
    assert errors.UnconfirmedDeliveryError("x").outcome == "unconfirmed"
    assert not issubclass(errors.PermanentDeliveryError, errors.TransientDeliveryError)
