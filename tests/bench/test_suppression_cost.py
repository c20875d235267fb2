"""The suppression cost benchmark runs and reports every mode (tiny sizes: a smoke check)."""

from __future__ import annotations

import json

import pytest

from bench.suppression_cost import main


def test_it_reports_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--messages", "20", "--rounds", "1", "--entries", "50",
                 "--recipients", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["best_of_rounds"]) == {"door_accept_no_check", "door_accept_with_check",
                                             "send_begin_only", "send_begin_with_check"}
    for mode in report["best_of_rounds"].values():
        assert mode["median_us"] > 0 and mode["cpu_us"] > 0
    assert set(report["added_per_message"]) == {"door", "send_time"}
