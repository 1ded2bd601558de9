"""`brainmm.data.splits`: grouped, reproducible subject splits, the leakage check, the three-subject minimum."""

from __future__ import annotations

from pathlib import Path

import pytest
from stage_inputs import WINDOW, check_error, run, write_fmri_cohort

from brainmm.data.splits import check_no_leakage, make_split
from brainmm.errors import BrainmmError


def test_split_is_grouped_and_reproducible() -> None:
    subjects = [f"s{i}" for i in range(40)]
    families = [f"f{i // 2}" for i in range(40)]
    a = make_split(subjects, families, seed=3)
    b = make_split(subjects, families, seed=3)
    assert a.equals(b)
    assert a.groupby("group")["split"].nunique().max() == 1
    assert set(a["split"]) == {"train", "val", "test"}
    check_no_leakage(a)
    leaky = a.copy()
    leaky.loc[0, "split"] = "test" if leaky.loc[0, "split"] != "test" else "train"
    with pytest.raises(BrainmmError, match="leakage"):
        check_no_leakage(leaky)


def test_a_split_needs_three_subjects(tmp_path: Path, capsys) -> None:
    write_fmri_cohort(tmp_path / "fmri", n_subjects=2)
    src = tmp_path / "fmri"
    code, err = run(["-q", "fmri", "ingest", "--cohort", str(src / "cohort.csv"), "--coords", str(src / "coords.tsv"),
                     "--out", str(tmp_path / "out"), "--num-timepoints", str(WINDOW)], capsys)
    check_error(code, err, r"split: need at least 3 subjects/groups for train/val/test, got 2; add subjects, or give "
                           r"your own assignment with `brainmm fmri ingest --split-from SPLIT\.csv`")
