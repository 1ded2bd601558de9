"""Hostile `brainmm evaluate` inputs (issue 29): an input table whose width differs from the one the heads (or a
genotype tower) were trained on is one line naming the field and both widths, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stage_inputs import check_error
from test_confounds_app import align_config, small_inputs

from brainmm.align import run_align
from brainmm.cli import main
from brainmm.embeddings import EmbeddingTable


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, _migrated_mlflow_db: Path) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("eval_width")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    import shutil

    shutil.copy(_migrated_mlflow_db, folder / "mlflow.db")
    inputs = small_inputs(folder)
    cfg = align_config(inputs, False, uri, epochs=1)
    cfg.train.batch_size = 8
    result = run_align(cfg)
    for name in ("brain", "genotypes"):
        table = EmbeddingTable.load(folder / name)
        wider = np.hstack([table.vectors, np.ones((len(table.ids), 1), table.vectors.dtype)])
        EmbeddingTable(table.ids, wider, table.meta).save(folder / f"{name}_wider")
    return {"dir": result.run_dir, "folder": folder, "uri": uri}


@pytest.mark.parametrize(("override", "match"), [
    ("data.brain={folder}/brain_wider", r"evaluate config field 'data\.brain': table .*brain_wider has 7 columns, "
                                        r"but align run .* was trained on 6"),
    ("data.genetics={{genotype: {folder}/genotypes_wider}}",
     r"evaluate config field 'data\.genetics\.genotype': table .*genotypes_wider has 11 columns, .*trained on 10"),
])
def test_a_table_of_another_width_is_refused(run: dict[str, Any], override: str, match: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "evaluation"
    capsys.readouterr()
    code = main(["-q", "evaluate", "--align-dir", str(run["dir"]), override.format(folder=run["folder"]),
                 f"output_dir={out}", "figures.enabled=false", "model.log=false"])
    check_error(code, capsys.readouterr().err, match)
    assert not out.exists()


def test_text_cell_in_a_numeric_probe_target_names_the_cell(run: dict[str, Any], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    import pandas as pd

    cohort = pd.read_csv(run["folder"] / "cohort.csv")
    cohort["age"] = cohort["age"].round(1).astype(object)
    cohort.loc[9, "age"] = "unknown"
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    out = tmp_path / "evaluation"
    capsys.readouterr()
    code = main(["-q", "evaluate", "--align-dir", str(run["dir"]), f"data.cohort={tmp_path / 'cohort.csv'}",
                 "probes.targets=[age]", f"output_dir={out}", "figures.enabled=false", "model.log=false"])
    check_error(code, capsys.readouterr().err, r"probe target 'age' in .*cohort\.csv: row 10 \(subject 's09'\) has "
                                               r"'unknown', not a number.*set probes\.tasks\.age: classification")
    assert not out.exists()
