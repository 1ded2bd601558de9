"""Ingestion, normalisation (train-only statistics), storage, splits, parcel order and windows on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from brainmm.data.fmri import FmriDataset, IngestConfig, check_compatible, ingest
from brainmm.data.fmri.ingest import _subject_groups
from brainmm.data.fmri.windows import tile_starts
from brainmm.data.splits import check_no_leakage
from brainmm.errors import BrainmmError
from brainmm.io import sha256_file

V, T = 6, 50
# Y has ties (parcels 0/3 and 1/4) so the stable order is observable.
COORDS = np.array([[1, 5, 0], [2, -3, 0], [3, 9, 0], [4, 5, 0], [5, -3, 0], [6, 0, 0]], dtype=float)


def make_cohort(root: Path, n: int = 8, lengths: list[int] | None = None, seed: int = 0, **columns) -> Path:
    """n subjects, one [T, V] .npy each (offset and scale differ per parcel), coords.tsv, cohort.csv."""
    rng = np.random.default_rng(seed)
    (root / "ts").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        t = lengths[i] if lengths else T
        x = 100 + rng.standard_normal((t, V)) * np.arange(1, V + 1) + rng.standard_normal(V) * 10
        np.save(root / "ts" / f"s{i}.npy", x)
        rows.append({"subject_id": f"s{i}", "path": f"ts/s{i}.npy", "tr": 2.0})
    df = pd.DataFrame(rows)
    for col, values in columns.items():
        df[col] = values
    df.to_csv(root / "cohort.csv", index=False)
    pd.DataFrame({"label": [f"P{j}" for j in range(V)], "x": COORDS[:, 0], "y": COORDS[:, 1], "z": COORDS[:, 2]}).to_csv(
        root / "coords.tsv", sep="\t", index=False
    )
    return root / "cohort.csv"


def raw(root: Path, subject: str) -> np.ndarray:
    """The stored source [V, T], as float32 like the reader returns it."""
    return np.load(root / "ts" / f"{subject}.npy").T.astype(np.float32).astype(np.float64)


def build(root: Path, out: str = "ds", **kw) -> FmriDataset:
    kw.setdefault("coords", root / "coords.tsv")
    kw.setdefault("num_timepoints", 20)
    return FmriDataset.load(ingest(root / "cohort.csv", root / out, IngestConfig(**kw)))


def test_round_trip_manifest_and_hashes(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    ds = build(tmp_path)
    m = ds.manifest
    assert m["num_parcels"] == V and m["num_recordings"] == 8 and m["tr"] == 2.0 and m["num_timepoints"] == 20
    assert m["parcel_labels"] == [f"P{j}" for j in range(V)] and m["normalisation"]["method"] == "robust"
    assert ds.coords.dtype == np.float32 and np.array_equal(ds.coords, COORDS.astype(np.float32))
    assert set(ds.split["split"]) == {"train", "val", "test"} and len(ds.split) == 8
    assert ds.cohort["subject_id"].tolist() == [f"s{i}" for i in range(8)]
    ids = ds.recording_ids()
    assert ids == [f"s{i}" for i in range(8)]
    assert sorted(ds.recording_ids("train") + ds.recording_ids("val") + ds.recording_ids("test")) == sorted(ids)
    x = ds.signal("s3")
    assert x.shape == (V, T) and x.dtype == np.float32
    np.testing.assert_array_equal(x, ds.data[3]["signal"].T)  # zero-copy reader == datasets numpy format
    recs = {r["recording_id"]: r for r in m["sources"]["recordings"]}
    assert recs["s3"]["sha256"] == sha256_file(tmp_path / "ts" / "s3.npy")
    assert m["sources"]["cohort"]["sha256"] == sha256_file(tmp_path / "cohort.csv")
    assert m["sources"]["coords"]["sha256"] == sha256_file(tmp_path / "coords.tsv")
    assert len(m["data_hash"]) == 64 and m["format"] == "brainmm.fmri"
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["settings"]["coords"] == str(tmp_path / "coords.tsv")
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        "cohort.csv", "coords.tsv", "data", "manifest.json", "normalisation.json", "split.csv"]
    # the same inputs give the same data hash; a tampered side file is caught on load
    assert build(tmp_path, "ds2").manifest["data_hash"] == m["data_hash"]
    with open(tmp_path / "ds" / "coords.tsv", "a") as fh:
        fh.write("6\tP6\t0\t0\t0\t6\n")
    with pytest.raises(BrainmmError, match="coords.tsv does not match the sha256"):
        FmriDataset.load(tmp_path / "ds")
    with pytest.raises(BrainmmError, match="no manifest.json"):
        FmriDataset.load(tmp_path)


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


def test_parcel_order_y_is_stable_and_stored(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    given, by_y = build(tmp_path, "g", normalise="none"), build(tmp_path, "y", normalise="none", parcel_order="y")
    perm = np.argsort(COORDS[:, 1], kind="stable")
    assert by_y.manifest["parcel_source_index"] == perm.tolist() == [1, 4, 5, 0, 3, 2]
    assert by_y.manifest["parcel_labels"] == [f"P{j}" for j in perm]
    np.testing.assert_array_equal(by_y.coords, given.coords[perm])
    np.testing.assert_array_equal(by_y.signal("s0"), given.signal("s0")[perm])
    coords = pd.read_csv(tmp_path / "y" / "coords.tsv", sep="\t")
    assert coords["source_index"].tolist() == perm.tolist()


def test_windows_random_reproducible_and_workers(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    ds = build(tmp_path)
    w = ds.windows("train", num_timepoints=20, mode="random", seed=3)
    assert len(w) == len(ds.recording_ids("train"))
    item = w[0]
    assert item["signal_vectors"].shape == (V, 20) and item["signal_vectors"].dtype == torch.float32
    assert item["xyz_vectors"].shape == (V, 3) and item["recording_id"] == item["subject_id"]
    full = ds.signal(item["recording_id"])
    np.testing.assert_array_equal(item["signal_vectors"].numpy(), full[:, item["start"] : item["start"] + 20])
    starts = [w[i]["start"] for i in range(len(w))]
    assert starts == [ds.windows("train", 20, "random", seed=3)[i]["start"] for i in range(len(w))]
    assert starts != [ds.windows("train", 20, "random", seed=4)[i]["start"] for i in range(len(w))]
    w.set_epoch(1)
    epoch1 = [w[i]["start"] for i in range(len(w))]
    assert epoch1 != starts
    # the same windows whichever worker computes them
    loaded = [b["start"].tolist() for b in DataLoader(w, batch_size=2, num_workers=2)]
    assert sum(loaded, []) == epoch1
    batch = next(iter(DataLoader(w, batch_size=3)))
    assert batch["signal_vectors"].shape == (3, V, 20) and batch["xyz_vectors"].shape == (3, V, 3)


def test_windows_tiled_cover_every_time_point(tmp_path: Path) -> None:
    assert tile_starts(10, 4) == [0, 4, 6] and tile_starts(8, 4) == [0, 4] and tile_starts(3, 4) == []
    make_cohort(tmp_path, lengths=[50, 45, 20, 50, 50, 50, 50, 61])
    ds = build(tmp_path)
    w = ds.windows(None, num_timepoints=20, mode="tiled")
    seen: dict[str, np.ndarray] = {r: np.zeros(n, int) for r, n in zip(ds.recording_ids(), [50, 45, 20, 50, 50, 50, 50, 61])}
    for i in range(len(w)):
        item = w[i]
        s = item["start"]
        seen[item["recording_id"]][s : s + 20] += 1
        np.testing.assert_array_equal(item["signal_vectors"].numpy(), ds.signal(item["recording_id"])[:, s : s + 20])
    assert all((c > 0).all() for c in seen.values())
    lengths = dict(zip(ds.recording_ids(), [50, 45, 20, 50, 50, 50, 50, 61]))
    assert [(w[i]["recording_id"], w[i]["start"]) for i in range(len(w))] == [
        (r, s) for r in ds.recording_ids() for s in tile_starts(lengths[r], 20)
    ]
    assert len(w) == sum(len(tile_starts(n, 20)) for n in [50, 45, 20, 50, 50, 50, 50, 61])
    with pytest.raises(BrainmmError, match=r"recording 's2' has 20 time points, fewer than the window of 30"):
        ds.windows(None, num_timepoints=30)
    with pytest.raises(BrainmmError, match="window mode 'sliding'"):
        ds.windows("train", mode="sliding")
    with pytest.raises(BrainmmError, match="split 'dev'"):
        ds.recording_ids("dev")


def test_split_reuse_and_groups(tmp_path: Path) -> None:
    families = ["F1", "F1", "F2", "F2", "F3", "F4", "F4", "F5"]
    make_cohort(tmp_path, family=families)
    a = build(tmp_path, "a")
    check_no_leakage(a.split)
    split = dict(zip(a.split["subject_id"], a.split["split"]))
    for fam in set(families):
        assert len({split[f"s{i}"] for i, f in enumerate(families) if f == fam}) == 1
    assert a.manifest["split"]["group_by"] == ["family"]
    b = build(tmp_path, "b", split_from=tmp_path / "a" / "split.csv", split_seed=99)
    pd.testing.assert_frame_equal(a.split, b.split)
    assert b.manifest["split"]["source"] == str((tmp_path / "a" / "split.csv").resolve())
    a.split[a.split["subject_id"] != "s0"].to_csv(tmp_path / "partial.csv", index=False)
    with pytest.raises(BrainmmError, match=r"subjects \['s0'\] of the cohort are not in it"):
        build(tmp_path, "c", split_from=tmp_path / "partial.csv")
    # several group columns: subjects linked through any shared value form one group
    df = pd.DataFrame({"subject_id": list("abcde"), "family": ["F1", "F2", None, "F3", "F3"],
                       "site": ["S1", "S1", "S2", "S3", "S4"]})
    g = dict(_subject_groups(df, ["family", "site"]).to_numpy())
    assert g["a"] == g["b"] and g["d"] == g["e"] and len({g["a"], g["c"], g["d"]}) == 3 and g["c"] == "site:S2"


def test_check_compatible(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    ds = build(tmp_path, parcel_order="y")
    assert check_compatible(ds, V, 20, "y") is ds
    assert check_compatible(tmp_path / "ds", V, 20).manifest["num_parcels"] == V
    with pytest.raises(BrainmmError, match="has 6 parcels .* num_brain_voxels=424"):
        check_compatible(ds, 424, 20)
    with pytest.raises(BrainmmError, match="windows of 20 time points, but the model expects num_timepoints=200"):
        check_compatible(ds, V, 200)
    with pytest.raises(BrainmmError, match="stores parcels in 'y' order"):
        check_compatible(ds, V, 20, "given")


def _fails(root: Path, match: str, out: str = "bad", **kw) -> None:
    with pytest.raises(BrainmmError, match=match):
        build(root, out, **kw)
    assert not (root / out).exists()
    assert not [p for p in root.iterdir() if p.name.startswith(f".{out}.")]  # no temp folder left either


def test_bad_cohort_tables(tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path)
    df = pd.read_csv(cohort, dtype=str)
    cases = [
        (pd.concat([df, df.iloc[[2]]]).assign(subject_id=[*df["subject_id"], "s9"]), r"duplicate recording.*row 3 and row 9"),
        (df.assign(session="1").assign(path=df["path"].where(df.index != 4, "ts/s0.npy")), "row 1 and row 5"),
        (df.assign(session=["1"] * 7 + ["1"], subject_id=[*df["subject_id"][:7], "s0"],
                   path=df["path"]), r"duplicate \(subject_id, session\): row 1 and row 8"),
        (df.assign(path=df["path"].where(df.index != 2, "ts/nope.npy")), r"row 3, column 'path': file .*nope.npy does not exist"),
        (df.drop(columns=["subject_id"]), r"missing required column\(s\) 'subject_id'"),
        (df.assign(tr=["2"] * 7 + ["-1"]), r"row 8, column 'tr': expected seconds > 0"),
    ]
    for i, (table, match) in enumerate(cases):
        table.to_csv(cohort, index=False)
        _fails(tmp_path, match, out=f"bad{i}")
    df.rename(columns={"path": "file"}).to_csv(cohort, index=False)  # 'file' is accepted for 'path'
    assert build(tmp_path, "alias").recording_ids() == [f"s{i}" for i in range(8)]


def test_bad_signals_and_options(tmp_path: Path) -> None:
    make_cohort(tmp_path, lengths=[50, 50, 50, 50, 50, 50, 50, 12])
    _fails(tmp_path, r"recording 's7' \(.*s7.npy\): 12 time points, shorter than one window of 20.*--drop-short")
    ds = build(tmp_path, "short", drop_short=True)
    assert ds.recording_ids() == [f"s{i}" for i in range(7)]
    assert ds.manifest["dropped_recordings"] == [{"recording_id": "s7", "reason": "short"}]
    assert ds.cohort.set_index("recording_id").loc["s7", "ingested"] == False  # noqa: E712

    make_cohort(tmp_path)
    x = np.load(tmp_path / "ts" / "s2.npy")
    x[5, 3] = np.nan
    np.save(tmp_path / "ts" / "s2.npy", x)
    _fails(tmp_path, r"recording 's2' .*: parcel 3 \('P3'\) has NaN/Inf values.*--bad-parcels")
    zero = build(tmp_path, "zero", bad_parcels="zero")
    assert (zero.signal("s2")[3] == 0).all() and (zero.signal("s1")[3] != 0).any()
    assert zero.manifest["zeroed_recording_parcels"] == [{"recording_id": "s2", "parcel": "P3", "reason": "nan"}]
    dropped = build(tmp_path, "drop", bad_parcels="drop")
    assert dropped.manifest["num_parcels"] == V - 1 and dropped.manifest["dropped_parcels"] == ["P3"]
    assert dropped.coords.shape == (V - 1, 3) and dropped.signal("s0").shape == (V - 1, T)

    make_cohort(tmp_path)
    x = np.load(tmp_path / "ts" / "s4.npy")
    x[:, 1] = 7.0
    np.save(tmp_path / "ts" / "s4.npy", x)
    _fails(tmp_path, r"recording 's4' .*: parcel 1 \('P1'\) is constant over time")


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


def test_nifti_cohort_through_labels_masker(tmp_path: Path) -> None:
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    lab = np.zeros((4, 4, 3), np.int16)
    lab[:2] = 1
    lab[2:, :2] = 4
    lab[2:, 2:] = 9
    nib.save(nib.Nifti1Image(lab, aff), tmp_path / "atlas.nii.gz")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(3):
        data = (100 + rng.standard_normal((4, 4, 3, 30))).astype(np.float32)
        img = nib.Nifti1Image(data, aff)
        img.header.set_zooms((3.0, 3.0, 3.0, 0.8))
        nib.save(img, tmp_path / f"bold{i}.nii.gz")
        rows.append({"subject_id": f"n{i}", "path": f"bold{i}.nii.gz"})
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    ds = build(tmp_path, atlas=tmp_path / "atlas.nii.gz", coords=None, normalise="none")
    assert ds.manifest["tr"] == pytest.approx(0.8) and ds.manifest["atlas"] == "atlas"
    np.testing.assert_allclose(ds.coords[1], [7.5, 1.5, 3.0])  # label 4: voxels i 2-3, j 0-1, k 0-2
    data = np.asarray(nib.load(tmp_path / "bold1.nii.gz").dataobj)
    np.testing.assert_allclose(ds.signal("n1")[2], data[lab == 9].mean(0), rtol=1e-5)
    assert ds.manifest["sources"]["atlas"]["sha256"] == sha256_file(tmp_path / "atlas.nii.gz")
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    with pytest.raises(BrainmmError, match=r"row 1 is a NIfTI image .*needs a labels atlas"):
        build(tmp_path, "x")

