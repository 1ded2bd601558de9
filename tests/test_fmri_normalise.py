"""`brainmm.data.fmri.normalise`: robust statistics fitted on the training split only, z-score / none, a
subsampled fit against an oracle, saved statistics applied to new data, zero and near-zero interquartile ranges
(refused, zeroed or dropped), non-finite normalised values refused (ingest writes none)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stage_inputs import check_error, ingest_argv, run
from test_fmri_dataset import _fails, build, make_cohort, raw

from brainmm.cli import main
from brainmm.data.fmri import IngestConfig, ingest
from brainmm.errors import BrainmmError


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


def test_robust_statistics_are_fitted_on_train_only(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    ds = build(tmp_path)
    train = ds.recording_ids("train")
    centred = np.concatenate([raw(tmp_path, s) - raw(tmp_path, s).mean(1, keepdims=True) for s in train], axis=1)
    q25, q50, q75 = np.percentile(centred, [25, 50, 75], axis=1)
    np.testing.assert_allclose(ds.stats.median, q50, atol=1e-5)
    np.testing.assert_allclose(ds.stats.iqr, q75 - q25, rtol=1e-5)
    assert ds.stats.fitted_on["recordings"] == len(train)
    held_out = ds.recording_ids("test")[0]
    x = raw(tmp_path, held_out)
    expected = ((x - x.mean(1, keepdims=True)) - q50[:, None]) / (q75 - q25)[:, None]
    np.testing.assert_allclose(ds.signal(held_out), expected, rtol=1e-5, atol=1e-5)
    # changing a held-out recording changes neither the statistics nor the training signals
    np.save(tmp_path / "ts" / f"{held_out}.npy", x.T * 50 + 3)
    ds2 = build(tmp_path, "ds2")
    np.testing.assert_array_equal(ds2.stats.median, ds.stats.median)
    np.testing.assert_array_equal(ds2.stats.iqr, ds.stats.iqr)
    np.testing.assert_array_equal(ds2.signal(train[0]), ds.signal(train[0]))
    # ... while changing a training recording does
    np.save(tmp_path / "ts" / f"{train[0]}.npy", raw(tmp_path, train[0]).T * 3)
    assert not np.allclose(build(tmp_path, "ds3").stats.iqr, ds.stats.iqr)


def test_zscore_none_and_subsampled_fit(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    x = raw(tmp_path, "s1")
    z = build(tmp_path, "z", normalise="zscore").signal("s1")
    np.testing.assert_allclose(z, (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(build(tmp_path, "n", normalise="none").signal("s1"), x.astype(np.float32))
    sub = build(tmp_path, "sub", fit_max_timepoints=60)
    assert sub.stats.fitted_on["subsampled"] and sub.stats.fitted_on["timepoints"] == 60
    # oracle: the documented sample (per training recording at cohort row i, ceil(60 / n_train) sorted columns drawn
    # without replacement by default_rng([split_seed, i])), centred per parcel, stored as float32
    train = sub.recording_ids("train")
    per = -(-60 // len(train))
    parts = []
    for sid in train:
        x = raw(tmp_path, sid)
        cols = np.sort(np.random.default_rng([0, int(sid[1:])]).choice(x.shape[1], per, replace=False))
        parts.append((x - x.mean(1, keepdims=True))[:, cols].astype(np.float32))
    q25, q75 = np.percentile(np.concatenate(parts, axis=1).astype(np.float64), [25, 75], axis=1)
    np.testing.assert_allclose(sub.stats.iqr, q75 - q25, rtol=1e-12)
    assert not np.allclose(sub.stats.iqr, build(tmp_path, "full").stats.iqr, rtol=1e-6)


def test_new_data_with_saved_statistics(tmp_path: Path) -> None:
    ref = build(make_cohort(tmp_path / "a").parent, parcel_order="y")
    ext_root = make_cohort(tmp_path / "b", n=4, seed=7).parent
    ext = build(ext_root, stats_from=tmp_path / "a" / "ds")
    assert ext.manifest["normalisation"]["stats_from"]["data_hash"] == ref.manifest["data_hash"]
    assert ext.manifest["parcel_order"] == "y" and ext.manifest["parcel_labels"] == ref.manifest["parcel_labels"]
    np.testing.assert_array_equal(ext.stats.iqr, ref.stats.iqr)
    x = raw(ext_root, "s2")
    np.testing.assert_array_equal(ext.signal("s2"), ref.transform(x))
    perm = ref.manifest["parcel_source_index"]
    np.testing.assert_allclose(ref.transform(x), ref.stats.transform(x[perm]))
    with pytest.raises(BrainmmError, match=r"expected \[6, T\]"):
        ref.transform(x[:4])
    with pytest.raises(BrainmmError, match="normalise 'zscore' differs"):
        build(ext_root, "bad", stats_from=tmp_path / "a" / "ds", normalise="zscore")
    (ext_root / "coords5.tsv").write_text("x\ty\tz\n" + "1\t2\t3\n" * 5)
    with pytest.raises(BrainmmError, match="5 parcels, but the statistics .* atlas with 6"):
        build(ext_root, "bad", stats_from=tmp_path / "a" / "ds", coords=ext_root / "coords5.tsv")


def test_zero_iqr_and_missing_inputs(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    ds = build(tmp_path, "ok", normalise="none")
    train = ds.recording_ids("train")
    for i, s in enumerate(train):  # parcel 5 mostly flat in every training recording: IQR 0, not constant
        x = np.load(tmp_path / "ts" / f"{s}.npy")
        x[:, 5] = 0.0
        x[i, 5] = 1.0
        np.save(tmp_path / "ts" / f"{s}.npy", x)
    _fails(tmp_path, r"parcel 5 \('P5'\) has an interquartile range of 0.0 over the training split")
    z = build(tmp_path, "zero", bad_parcels="zero")
    assert (z.signal(train[0])[5] == 0).all() and z.manifest["zeroed_parcels"] == ["P5"]
    assert build(tmp_path, "drop", bad_parcels="drop").manifest["dropped_parcels"] == ["P5"]
    with pytest.raises(BrainmmError, match="parcel coordinates are needed"):
        ingest(tmp_path / "cohort.csv", tmp_path / "x", IngestConfig())
    with pytest.raises(BrainmmError, match="output folder .*ok already exists"):
        build(tmp_path, "ok")
