"""`brainmm.data.fmri.ingest`: parcel order by y (stable, stored), split reuse and family/site groups, bad cohort
tables, signals and options (nothing left behind), NIfTI cohorts through a labels atlas, and the repetition time
(an unknown one announced once, a partly known one assumed from the others, different ones refused)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from stage_inputs import check_error, ingest_argv, run
from test_fmri_dataset import COORDS, T, V, _fails, build, make_cohort

from brainmm.data.fmri.ingest import _subject_groups
from brainmm.data.splits import check_no_leakage
from brainmm.errors import BrainmmError
from brainmm.io import sha256_file


def test_unknown_tr_is_announced_once(src: Path, tmp_path: Path, capsys) -> None:
    code, err = run(ingest_argv(src, tmp_path / "out"), capsys)
    assert code == 0
    assert err.count("TR unknown for every recording") == 1 and "assumed equal" in err, err
    df = pd.read_csv(src / "cohort.csv").assign(path=lambda d: [str(src / p) for p in d["path"]])
    df["tr"] = [2.0] * 4 + [None] * 4
    df.to_csv(tmp_path / "some.csv", index=False)
    code, err = run(ingest_argv(src, tmp_path / "out2", tmp_path / "some.csv"), capsys)
    assert code == 0 and "TR unknown for 4 of 8 recordings" in err and "assumed 2 s" in err, err
    df["tr"] = [2.0] * 4 + [0.72] * 4
    df.to_csv(tmp_path / "mixed.csv", index=False)
    check_error(*run(ingest_argv(src, tmp_path / "out3", tmp_path / "mixed.csv"), capsys),
                r"recordings have different TRs \[0\.72, 2\.0\] s")


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
