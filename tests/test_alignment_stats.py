"""`alignment.stats`: Wilson intervals against textbook values; metric names by MLflow's character rule."""

from __future__ import annotations

import pytest


def test_wilson_interval_matches_textbook_values() -> None:
    from alignment.stats import wilson_ci

    lo, hi = wilson_ci(1.0, 2)
    z = 1.959963984540054
    assert lo == pytest.approx(1 / (1 + z * z / 2), rel=1e-12) and hi == 1.0  # p = 1: n / (n + z^2)
    lo, hi = wilson_ci(0.0, 10)
    assert lo == 0.0 and hi == pytest.approx(z * z / (10 + z * z), rel=1e-12)
    lo, hi = wilson_ci(0.5, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_metric_name_keeps_what_mlflow_accepts_and_replaces_the_rest() -> None:
    from alignment.stats import metric_name

    assert metric_name("retrieval", None, "", "brain_to_dna", "R@1") == "retrieval/brain_to_dna/R_at_1"
    assert metric_name("probe", "site:2 age-x.y") == "probe/site:2 age-x.y"  # colon, space, dash, dot: allowed
    assert metric_name("a(b)", "c,d") == "a_b_/c_d"
    assert metric_name("z" * 251) == "z" * 250  # MLflow's longest name
