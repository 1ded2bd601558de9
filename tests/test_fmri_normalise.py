"""`brainmm.data.fmri.normalise`: a near-zero interquartile range counts as zero; non-finite normalised values
are refused (ingest writes none)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from stage_inputs import check_error, ingest_argv, run

from brainmm.cli import main


def _tiny_parcel(src: Path, tmp: Path) -> tuple[Path, Path]:
    """Parcel 1 scaled to ~1e-39 (an IQR tiny but not zero) in the training recordings, normal in the test one
    (sub7): dividing by that IQR overflows float32. Returns (cohort, split table)."""
    folder = tmp / "tiny"
    folder.mkdir()
    df = pd.read_csv(src / "cohort.csv", dtype=str)
    for i, p in enumerate(df["path"]):
        x = np.load(src / p).astype(np.float64)
        if i < 6:
            x[:, 1] *= 1e-39
        np.save(folder / p, x)
    df.to_csv(folder / "cohort.csv", index=False)
    split = pd.DataFrame({"subject_id": df["subject_id"], "group": df["subject_id"],
                          "split": ["train"] * 6 + ["val", "test"]})
    split.to_csv(folder / "split.csv", index=False)
    return folder / "cohort.csv", folder / "split.csv"


def test_near_zero_iqr_counts_as_zero(src: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    cohort, split = _tiny_parcel(src, tmp_path)
    code, err = run(ingest_argv(src, tmp_path / "out", cohort, "--split-from", str(split)), capsys)
    check_error(code, err, r"robust normalisation: parcel 1 \('1'\) has an interquartile range of [1-9][0-9.]*e-(39|40) "
                           r"over the training split \(zero in effect")
    assert main(ingest_argv(src, tmp_path / "zeroed", cohort, "--split-from", str(split), "--bad-parcels", "zero")) == 0
    from brainmm.data.fmri import FmriDataset

    ds = FmriDataset.load(tmp_path / "zeroed")
    signals = np.concatenate([np.asarray(r["signal"]) for r in ds.data])
    assert np.isfinite(signals).all() and (signals[:, 1] == 0).all()
    # the last line of defence: were the spread taken at face value (the old check, IQR > 0), the values
    # overflow float32, and ingest refuses to write them
    monkeypatch.setattr(sys.modules["brainmm.data.fmri.ingest"], "near_zero_spread", lambda spread: ~(np.asarray(spread) > 0))
    code, err = run(ingest_argv(src, tmp_path / "out", cohort, "--split-from", str(split)), capsys)
    check_error(code, err, r"recording 'sub[67]' \(.*s[67]\.npy\): parcel 1 \('1'\) is not finite after robust "
                           r"normalisation \(\d+ values\)")
    assert not (tmp_path / "out").exists()


def test_non_finite_normalised_values_are_refused() -> None:
    from brainmm.data.fmri.normalise import NormStats, near_zero_spread

    assert near_zero_spread(np.array([1.0, 2.0, 1e-40, 0.0, np.nan, 1e-7])).tolist() == [
        False, False, True, True, True, True]
    stats = NormStats("robust", ["a", "b"], median=[0.0, 0.0], iqr=[1.0, 1e-300])
    assert not np.isfinite(stats.transform(np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]))).all()
