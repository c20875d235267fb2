"""mailcore.logs: a worker's log lines blank the current job's data values but leave its
addresses to the address masking (which LOG_RECIPIENTS may turn off)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import dramatiq
import orjson
import pytest
from dramatiq.middleware.current_message import CurrentMessage

from mailcore.logs import JSONFormatter, TextFormatter


@pytest.fixture
def current_job() -> Iterator[None]:
    data = {"code": "493817", "email": "ada.lovelace@example.org", "note": "not@an address",
            "short": "abc", "nested": [{"deep": "secret-value"}, 12345, True, None],
            "at": "@@@@"}
    job = {"id": "m-1", "request": {"template": "password_reset", "data": data}}
    token = CurrentMessage._MESSAGE.set(dramatiq.Message(
        queue_name="email", actor_name="send_email", args=(job,), kwargs={}, options={}))
    try:
        yield
    finally:
        CurrentMessage._MESSAGE.reset(token)


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("email_service.test", logging.INFO, __file__, 1, message, None,
                             None)


TEXT = ("code 493817 for ada.lovelace@example.org; not@an address; abc; secret-value; "
        "12345; True; @@@@")


@pytest.mark.usefixtures("current_job")
def test_values_are_blanked_and_addresses_masked() -> None:
    line = orjson.loads(JSONFormatter(mask=True).format(_record(TEXT)))["message"]
    assert line == ("code <data> for a***@example.org; <data>; abc; <data>; <data>; True; "
                    "<data>")


@pytest.mark.usefixtures("current_job")
def test_addresses_stay_when_recipients_may_be_logged() -> None:
    line = orjson.loads(JSONFormatter(mask=False).format(_record(TEXT)))["message"]
    assert "ada.lovelace@example.org" in line and "493817" not in line
    text = TextFormatter(mask=False).format(_record(TEXT))
    assert "ada.lovelace@example.org" in text and "secret-value" not in text


def test_without_a_current_job_nothing_is_blanked() -> None:
    line = orjson.loads(JSONFormatter(mask=False).format(_record(TEXT)))["message"]
    assert line == TEXT
