"""The coalescer's cost benchmark runs and reports every mode (tiny sizes: a smoke check)."""

from __future__ import annotations

import pytest

from bench.coalesce_cost import main


def test_it_reports_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--calls", "64", "--rounds", "1"]) == 0
    lines = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert set(lines) == {"direct_1_us", "coalescer_1_us", "coalescer_1_per_flush",
                          "direct_32_us", "coalescer_32_us", "coalescer_32_per_flush"}
    assert float(lines["coalescer_1_per_flush"]) == 1.0  # alone: each call its own flush
    assert float(lines["coalescer_32_per_flush"]) > 1.0  # 32 at once: they share
