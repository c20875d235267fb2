"""The JSON log line's time, formatted once a second, is the record's own time."""

from __future__ import annotations

import logging
import time

import orjson

from mailcore.logs import JSONFormatter


def _record(created: float) -> logging.LogRecord:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "queued", None, None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


def test_each_line_carries_its_own_second_and_milliseconds() -> None:
    formatter = JSONFormatter()
    # Within a second, across seconds, and back to an earlier second (another thread's record).
    for created in (1_700_000_000.001, 1_700_000_000.999, 1_700_000_001.5, 1_700_000_000.25,
                    1_800_000_000.0):
        line = orjson.loads(formatter.format(_record(created)))
        expected = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
                    + f".{int((created - int(created)) * 1000):03d}Z")
        assert line["time"] == expected
