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


def test_anon_peak_sees_a_temporary_array_and_not_mapped_file_pages(tmp_path) -> None:
    import numpy as np

    from brainmm.memory import AnonPeak, anon_rss_mb

    before = anon_rss_mb()
    assert before is not None  # Linux (CI)
    big = tmp_path / "big.bin"
    np.ones(64 * 2**20 // 8).tofile(big)  # 64 MB of file pages, mapped and read below
    with AnonPeak(interval=0.01) as peak:
        mapped = np.memmap(big, dtype=np.float64, mode="r")
        assert float(mapped.sum()) == 64 * 2**20 // 8
        x = np.ones(256 * 2**20 // 8)  # 256 MB anonymous, freed before the block ends
        x[::512] = 2.0
        del x
    assert peak.peak_mb - before >= 200
    assert peak.peak_mb - before < 256 + 64  # the mapped file pages are not counted
