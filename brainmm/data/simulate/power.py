"""Quick checks of a simulated cohort: is the planted brain<->genetics link recoverable with a simple estimator?

`planted_link_r2` fits a ridge from each subject's brain features (log-variance per parcel + Fisher-z FC
upper triangle, averaged over sessions) to the true factors on a family-grouped train split and reports the
held-out R^2 per factor; `genetic_r2` does the same from dosages to the polygenic scores. Both are cheap
stand-ins for the full pipeline when choosing `n_subjects` and `effect_size` (see docs/simulate.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainmm.data.splits import make_split
from brainmm.errors import BrainmmError


def recording_features(ts: np.ndarray) -> np.ndarray:
    """[T, V] series -> log-variance per parcel and Fisher-z correlations of the upper triangle."""
    ts = np.asarray(ts, dtype=np.float64)
    var = ts.var(axis=0)
    corr = np.corrcoef(ts, rowvar=False)
    iu = np.triu_indices(ts.shape[1], k=1)
    return np.concatenate([np.log(var), np.arctanh(np.clip(corr[iu], -0.999999, 0.999999))])


def heldout_r2(
    x: np.ndarray, y: np.ndarray, groups: list[str] | None = None, test_fraction: float = 0.3, seed: int = 0
) -> np.ndarray:
    """Ridge (alpha by GCV, features standardised on train) from x [N, F] to y [N, K]: held-out R^2 per column."""
    from sklearn.linear_model import RidgeCV

    ids = [str(i) for i in range(len(x))]
    split = make_split(ids, groups, fractions=(1 - test_fraction, 0.0, test_fraction), seed=seed)
    test = split.set_index("subject_id").loc[ids, "split"].to_numpy() == "test"
    mu, sd = x[~test].mean(axis=0), x[~test].std(axis=0)
    sd[sd == 0] = 1
    xs = (x - mu) / sd
    model = RidgeCV(alphas=np.logspace(-1, 5, 25)).fit(xs[~test], y[~test])
    pred = model.predict(xs[test])
    resid = ((y[test] - pred) ** 2).sum(axis=0)
    total = ((y[test] - y[~test].mean(axis=0)) ** 2).sum(axis=0)
    return 1 - resid / total


def _read(cohort_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    cohort_dir = Path(cohort_dir)
    for name in ("cohort.csv", "factors.csv"):
        if not (cohort_dir / name).is_file():
            raise BrainmmError(f"simulated cohort {cohort_dir}: missing {name} (expected a simulate_cohort folder)")
    cohort = pd.read_csv(cohort_dir / "cohort.csv", dtype={"subject_id": str, "family": str})
    factors = pd.read_csv(cohort_dir / "factors.csv", dtype={"subject_id": str}).set_index("subject_id")
    return cohort, factors


def planted_link_r2(cohort_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """Held-out R^2 of a ridge from brain features to each true factor (family-grouped 70/30 split)."""
    cohort_dir = Path(cohort_dir)
    cohort, factors = _read(cohort_dir)
    feats = np.stack([recording_features(np.load(cohort_dir / f)) for f in cohort["file"]])
    per_subject = pd.DataFrame(feats).groupby(cohort["subject_id"].to_numpy()).mean()
    subjects = per_subject.index.tolist()
    fam = cohort.drop_duplicates("subject_id").set_index("subject_id").loc[subjects, "family"].tolist()
    cols = [c for c in factors.columns if c.startswith("factor_")]
    r2 = heldout_r2(per_subject.to_numpy(), factors.loc[subjects, cols].to_numpy(), fam, seed=seed)
    return dict(zip(cols, r2.tolist()))


def genetic_r2(cohort_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """Held-out R^2 of a ridge from observed dosages to each polygenic score (family-grouped 70/30 split).

    SNPs pass a basic QC first (call rate >= 0.5, MAF >= 0.01); missing calls are mean-imputed.
    """
    cohort_dir = Path(cohort_dir)
    cohort, factors = _read(cohort_dir)
    with np.load(cohort_dir / "genotypes.npz") as data:
        dos, subjects = data["dosages"].astype(np.float64), [str(s) for s in data["subject_ids"]]
    called = np.isfinite(dos)
    mean = np.where(called, dos, 0).sum(axis=0) / np.maximum(called.sum(axis=0), 1)
    maf = np.minimum(mean, 2 - mean) / 2
    keep = (called.mean(axis=0) >= 0.5) & (maf >= 0.01)  # basic QC: call rate >= 0.5, MAF >= 0.01
    dos = np.where(called, dos, mean)[:, keep]
    fam = cohort.drop_duplicates("subject_id").set_index("subject_id").loc[subjects, "family"].tolist()
    cols = [c for c in factors.columns if c.startswith("pgs_")]
    r2 = heldout_r2(dos, factors.loc[subjects, cols].to_numpy(), fam, seed=seed)
    return dict(zip(cols, r2.tolist()))
