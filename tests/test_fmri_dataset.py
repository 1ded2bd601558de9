"""`brainmm.data.fmri.dataset`: an ingested dataset round trip (manifest, hashes) and compatibility checks; its helpers
(`make_cohort`, `build`) serve the other fMRI data-layer tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainmm.data.fmri import FmriDataset, IngestConfig, check_compatible, ingest
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


def _fails(root: Path, match: str, out: str = "bad", **kw) -> None:
    with pytest.raises(BrainmmError, match=match):
        build(root, out, **kw)
    assert not (root / out).exists()
    assert not [p for p in root.iterdir() if p.name.startswith(f".{out}.")]  # no temp folder left either


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
