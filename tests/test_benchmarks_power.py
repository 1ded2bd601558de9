"""benchmarks/power.py's design pieces: nested subsets that keep every subject's split, calibrated p-values."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from power import heldout_stats, nested_subsets  # noqa: E402


def test_subsets_are_nested_keep_families_and_splits(tmp_path: Path) -> None:
    subjects = [f"sub-{i:04d}" for i in range(400)]
    family = [f"fam-{i // 2:04d}" if i < 80 else f"fam-{i:04d}" for i in range(400)]  # 40 sibling pairs
    pd.DataFrame({"subject_id": subjects, "family": family}).to_csv(tmp_path / "cohort.csv", index=False)
    subsets = nested_subsets(tmp_path, [50, 150, 400], seed=3)
    assert all(len(subsets[n]) <= n for n in subsets) and len(subsets[400]) == 400
    assert all(len(subsets[n]) >= n - 1 for n in subsets)  # a sibling pair may end one short
    full = subsets[400].set_index("subject_id")["split"]
    for small, big in ((50, 150), (150, 400)):
        assert set(subsets[small]["subject_id"]) <= set(subsets[big]["subject_id"])
    for table in subsets.values():
        assert (table.set_index("subject_id")["split"] == full.loc[table["subject_id"]]).all()
        assert (table.groupby("group")["split"].nunique() == 1).all()  # siblings share a split
        assert table["group"].value_counts().max() <= 2
    assert set(subsets[150]["split"]) == {"train", "val", "test"}


def test_permutation_pvalues_hold_their_level_under_the_null_and_detect_a_link() -> None:
    rng = np.random.default_rng(0)
    n_rep = 200
    p = np.array([[s["p_r"], s["p_mrr"]] for s in (
        heldout_stats((b[:, 0], g[:, 0]), (b, g), 99, i)
        for i, (b, g) in enumerate((rng.standard_normal((30, 3)), rng.standard_normal((30, 3))) for _ in range(n_rep))
    )])
    hi = binom.ppf(0.999, n_rep, 0.05) / n_rep  # false-positive rate at 0.05 within its binomial range
    assert np.all((p < 0.05).mean(axis=0) <= hi) and np.all((p < 0.05).mean(axis=0) > 0)
    b = rng.standard_normal((60, 3))
    s = heldout_stats((b[:, 0], b[:, 0] + 0.5 * rng.standard_normal(60)), (b, b + 0.5 * rng.standard_normal((60, 3))),
                      999, 0)
    assert s["p_r"] < 0.01 and s["p_mrr"] < 0.01 and s["mrr"] > 3 * s["mrr_chance"]
