"""Hostile `brainmm fmri connectivity` options and data (issue 29): non-finite or invalid numbers and windows too
short for the empirical covariance, each one line naming the field, exit 2, no traceback, no table written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stage_inputs import check_error

from brainmm.cli import main
from brainmm.data.fmri import IngestConfig, ingest


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 subjects with 20 time points of 30 parcels: fewer time points than parcels."""
    root = tmp_path_factory.mktemp("fc_short")
    (root / "ts").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        np.save(root / "ts" / f"s{i}.npy", rng.standard_normal((20, 30)) + 10)
        rows.append({"subject_id": f"s{i}", "path": f"ts/s{i}.npy", "tr": 2.0})
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    pd.DataFrame(rng.uniform(-50, 50, (30, 3)), columns=["x", "y", "z"]).to_csv(root / "coords.tsv", sep="\t",
                                                                             index=False)
    return ingest(root / "cohort.csv", root / "ds", IngestConfig(coords=root / "coords.tsv", num_timepoints=10))


CASES = {
    "pca nan": (["--pca", "nan"], r"connectivity field 'pca': expected a finite number, got nan"),
    "pca inf": (["--pca", "inf"], r"connectivity field 'pca': expected a finite number, got inf"),
    "pca negative": (["--pca", "-1"], r"connectivity field 'pca': expected 0, an integer >= 1"),
    "pca fraction above 1": (["--pca", "2.5"], r"connectivity field 'pca': expected 0, an integer >= 1"),
    "pca max components 0": (["--pca", "0.5", "--pca-max-components", "0"],
                             r"connectivity field 'pca_max_components': expected a positive integer"),
    "batch size 0": (["--batch-size", "0"], r"connectivity field 'batch_size': expected a positive integer"),
    "tangent, empirical, short windows": (
        ["--kind", "tangent", "--estimator", "empirical"],
        r"connectivity kind 'tangent' with estimator 'empirical': a covariance is not positive definite "
        r"\(shortest recording 20 time points for 30 parcels: too short for the empirical estimator\); use "
        r"--estimator ledoit_wolf"),
    "partial correlation, empirical, short windows": (
        ["--kind", "partial correlation", "--estimator", "empirical"],
        r"connectivity kind 'partial correlation' with estimator 'empirical': a covariance is not positive definite"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_connectivity_options(case: str, short: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    flags, match = CASES[case]
    capsys.readouterr()
    code = main(["-q", "fmri", "connectivity", str(short), "--out", str(tmp_path / "fc"), *flags])
    check_error(code, capsys.readouterr().err, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_short_windows_work_with_ledoit_wolf(short: Path, tmp_path: Path) -> None:
    assert main(["-q", "fmri", "connectivity", str(short), "--out", str(tmp_path / "fc"), "--kind", "tangent"]) == 0
