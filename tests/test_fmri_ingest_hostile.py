"""Hostile `brainmm fmri ingest` numbers (issue 29): an infinite repetition time (flag or cohort cell) or split
fraction is refused in one line, like a negative one, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from stage_inputs import WINDOW, check_error, write_fmri_cohort

from brainmm.cli import main
from brainmm.data.fmri import IngestConfig
from brainmm.errors import BrainmmError


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ingest_hostile") / "fmri"
    write_fmri_cohort(folder)
    cohort = pd.read_csv(folder / "cohort.csv")
    cohort["path"] = [str(folder / p) for p in cohort["path"]]
    cohort.to_csv(folder / "cohort.csv", index=False)
    return folder


@pytest.mark.parametrize(("flags", "cell", "match"), [
    (["--tr", "inf"], None, r"tr: expected seconds > 0, got inf"),
    (["--tr", "nan"], None, r"tr: expected seconds > 0, got nan"),
    ([], "inf", r"cohort\.csv: row 1, column 'tr': expected seconds > 0, got 'inf'"),
])
def test_infinite_repetition_time_is_refused(src: Path, tmp_path: Path, capsys, flags, cell, match) -> None:
    cohort = pd.read_csv(src / "cohort.csv")
    if cell is not None:
        cohort["tr"] = "2.0"
        cohort.loc[0, "tr"] = cell
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["-q", "fmri", "ingest", "--cohort", str(tmp_path / "cohort.csv"), "--coords", str(src / "coords.tsv"),
                 "--out", str(out), "--num-timepoints", str(WINDOW), *flags])
    check_error(code, capsys.readouterr().err, match)
    assert not out.exists()


def test_infinite_split_fraction_is_refused() -> None:
    with pytest.raises(BrainmmError, match=r"split_fractions: expected three non-negative numbers"):
        IngestConfig(coords="c.tsv", split_fractions=(float("inf"), 0.1, 0.1)).validate()
