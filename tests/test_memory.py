"""`brainmm.memory.check_param_budget`: absurd model sizes are refused before any allocation (align heads,
pretraining models)."""

from __future__ import annotations

from pathlib import Path

import pytest
from stage_inputs import World, align_argv, check_error, left_in, pretrain, run


def test_check_param_budget() -> None:
    from brainmm.errors import BrainmmError
    from brainmm.memory import available_memory, check_param_budget

    available, total = available_memory()
    assert 0 < available <= total
    assert check_param_budget(1000, "head") == 4000
    with pytest.raises(BrainmmError, match=r"align config field 'head\.hidden_dim': 1,000,000,000,000 parameters "
                                           r"need about 16\.0 TB \(4 bytes x 4 copies\)"):
        check_param_budget(10**12, "align config field 'head.hidden_dim'", copies=4)


def test_absurd_head_is_refused_before_allocation(world: World, tmp_path: Path, capsys) -> None:
    code, err = run(align_argv(world, tmp_path / "out" / "align", "head.hidden_dim=1000000000"), capsys)
    check_error(code, err, r"align config field 'head' \(hidden_dim 1000000000, out_dim 4\): [0-9,]{14,} parameters "
                           r"need about [0-9.,]+ (GB|TB) \(4 bytes x 4 copies\), more than this machine's available "
                           r"memory \([0-9.,]+ [kMGT]?B of [0-9.,]+ [kMGT]?B\)")
    assert left_in(tmp_path) == []


def test_absurd_pretrain_model_is_refused_before_allocation(world: World, tmp_path: Path, capsys) -> None:
    code, err = run(pretrain(world, tmp_path / "out" / "pre", "model.arch.hidden_size=10000000"), capsys)
    check_error(code, err, r"pretrain model \(model\.arch: hidden_size 10000000, num_hidden_layers 1, intermediate_size "
                           r"16\): [0-9,]{15,} parameters need about [0-9.,]+ (TB|PB) \(4 bytes x 4 copies\), more than "
                           r"this machine's available memory")
    assert left_in(tmp_path) == []
