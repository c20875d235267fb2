"""``python -m bench.verp`` runs and gives every figure (small counts: a smoke test)."""

from __future__ import annotations

from bench.verp import measure


def test_every_figure_is_measured() -> None:
    figures = measure(messages=9)
    assert set(figures) == {"deliver_us", "deliver_verp_us", "smtp_one_transaction_us",
                            "smtp_per_recipient_us", "parse_postfix_dsn_us",
                            "parse_hostile_512k_ms"}
    assert all(value > 0 for value in figures.values())
