"""The benchmark's targets table judges figures: met, missed, or not measured."""

from __future__ import annotations

import pytest

from bench.targets import MET, MISSED, TARGETS, UNMEASURED, Comparator, judge, target_for


def test_every_target_names_a_distinct_figure() -> None:
    figures = [t.figure for t in TARGETS]
    assert len(figures) == len(set(figures))


@pytest.mark.parametrize(("comparator", "value", "expected"), [
    (Comparator.AT_LEAST, 1500.0, MET), (Comparator.AT_LEAST, 1499.9, MISSED),
    (Comparator.AT_MOST, 50.0, MET), (Comparator.AT_MOST, 50.1, MISSED),
    (Comparator.BELOW, 19.99, MET), (Comparator.BELOW, 20.0, MISSED),
])
def test_comparators_include_or_exclude_the_limit(comparator: Comparator, value: float,
                                                   expected: str) -> None:
    limit = {Comparator.AT_LEAST: 1500, Comparator.AT_MOST: 50, Comparator.BELOW: 20}[comparator]
    target = next(t for t in TARGETS if t.comparator is comparator and t.limit == limit)
    assert target.verdict(value) == expected
    assert target.verdict(None) == UNMEASURED


def test_judge_finds_wildcard_figures_and_skips_unmeasured_ones() -> None:
    figures = {
        "smoke": {"lost": 1, "duplicates": 0, "unexpected": 0},
        "render_builtin_us": {"a": {"compiled_best": 49.0}, "b": {"compiled_best": 51.0}},
        "propagation_ms": None,
        "rss_mb": {"worker_process_max_mb": 100.0},
    }
    assert judge(figures) == {
        "smoke.lost": MISSED, "smoke.duplicates": MET, "smoke.unexpected": MET,
        "render_builtin_us.a.compiled_best": MET, "render_builtin_us.b.compiled_best": MISSED,
        "rss_mb.worker_process_max_mb": MET,
    }


def test_target_text_states_the_limit() -> None:
    target = target_for("render_builtin_us.password_reset.compiled_best")
    assert target is not None and target.text == "<= 50 us"
    door = target_for("door_vs_bare")
    assert door is not None and door.text == ">= 0.5x"
    assert target_for("door_saturation.accepted_per_s") is None  # judged as a ratio
    assert target_for("e2e_events_loopback.delivered_per_s") is None
