"""`brainmm.evaluate.preflight`: every retrieval split is checked up front, in one line, before any work."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from stage_inputs import World, align_argv, check_error, run

from brainmm.cli import main


def test_evaluate_checks_every_retrieval_split_up_front(world: World, tmp_path: Path, capsys, monkeypatch) -> None:
    """An align run whose test split kept one subject: evaluate names it (and any other short split) in one line
    before any work, and writes nothing."""
    monkeypatch.chdir(tmp_path)
    split = pd.read_csv(world.root / "tables" / "split.csv", dtype=str)
    test = split.index[split["split"] == "test"]
    split.loc[test[1:], "split"] = "train"
    split.to_csv(tmp_path / "split.csv", index=False)
    assert main(align_argv(world, tmp_path / "align", split=tmp_path / "split.csv")) == 0
    code, err = run(["-q", "evaluate", "--align-dir", str(tmp_path / "align"), "retrieval.splits=[val,test]",
                     "baselines.methods=[cca]"], capsys)
    check_error(code, err, r"evaluate: too few subjects with shared-space brain and genetics embeddings: dna: test has 1 "
                           r"subject \(evaluate \(retrieval on test\) needs >= 2\) \(train \d+, val 4, test 1\); give the "
                           r"short split\(s\) more subjects: .*--split-from SPLIT\.csv.*, or evaluate fewer splits "
                           r"\(retrieval\.splits\)")
    assert not (tmp_path / "align" / "evaluation").exists()
    code, err = run(["-q", "evaluate", "--align-dir", str(tmp_path / "align"), "retrieval.splits=[val]",
                     "baselines.methods=[cca]", "retrieval.n_boot=20", "retrieval.kway=0", "figures.enabled=false",
                     "model.log=false"], capsys)
    assert code == 0 and "evaluate: baselines ['cca'] for 'dna' skipped: test has 1 subject" in err, err
