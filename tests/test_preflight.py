"""`brainmm.preflight`: minimum split sizes as one message listing every shortfall and the fix, from the library
and as `brainmm align` reports it before any work."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from stage_inputs import World, align_argv, check_error, left_in, run


def test_size_message_lists_every_shortfall_and_the_fix() -> None:
    from brainmm.errors import BrainmmError
    from brainmm.preflight import ALIGN_NEEDS, BASELINE_NEEDS, check_sizes, retrieval_needs, split_sizes

    assert split_sizes(5) == {"train": 3, "val": 1, "test": 1} and split_sizes(12) == {"train": 8, "val": 2, "test": 2}
    with pytest.raises(BrainmmError) as err:
        check_sizes({"train": 3, "val": 1, "test": 1}, [*ALIGN_NEEDS, *retrieval_needs(["test"]), *BASELINE_NEEDS], "x")
    message = str(err.value)
    assert message.startswith("x: too few subjects (train 3, val 1, test 1): val has 1 subject (align")
    assert "test has 1 subject (evaluate (retrieval on test) needs >= 2, the baselines (scored on test) needs >= 3)" in message
    assert "at least 8 subjects in all (train 3, val 2, test 3)" in message and "--split-from" in message
    check_sizes({"train": 3, "val": 2, "test": 3}, [*ALIGN_NEEDS, *BASELINE_NEEDS], "x")  # enough: no error


def test_align_with_one_val_subject(world: World, tmp_path: Path, capsys) -> None:
    split = pd.read_csv(world.root / "tables" / "split.csv", dtype=str)
    val = split.index[split["split"] == "val"]
    split.loc[val[1:], "split"] = "train"
    split.to_csv(tmp_path / "split.csv", index=False)
    code, err = run(align_argv(world, tmp_path / "out" / "align", split=tmp_path / "split.csv"), capsys)
    check_error(code, err, r"align \(subjects with brain and genetics inputs in split table .*split\.csv\): too few "
                           r"subjects \(train \d+, val 1, test 4\): val has 1 subject \(align \(validation retrieval, "
                           r"used for model selection and early stopping\) needs >= 2\); this needs at least 4 subjects in "
                           r"all \(train 2, val 2\); .*--split-from SPLIT\.csv")
    assert left_in(tmp_path / "out") == []
