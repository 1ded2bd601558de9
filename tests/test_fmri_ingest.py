"""`brainmm.data.fmri.ingest`: an unknown repetition time is announced once, a partly known one assumed from the
others, different ones refused."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from stage_inputs import check_error, ingest_argv, run


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
