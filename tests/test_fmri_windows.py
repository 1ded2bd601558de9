"""`brainmm.data.fmri.windows`: random windows reproducible across epochs and DataLoader workers; tiled windows
cover every time point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_fmri_dataset import V, build, make_cohort
from torch.utils.data import DataLoader

from brainmm.data.fmri.windows import tile_starts
from brainmm.errors import BrainmmError


def test_windows_random_reproducible_and_workers(tmp_path: Path) -> None:
    make_cohort(tmp_path)
    ds = build(tmp_path)
    w = ds.windows("train", num_timepoints=20, mode="random", seed=3)
    assert len(w) == len(ds.recording_ids("train"))
    item = w[0]
    assert item["signal_vectors"].shape == (V, 20) and item["signal_vectors"].dtype == torch.float32
    assert item["xyz_vectors"].shape == (V, 3) and item["recording_id"] == item["subject_id"]
    full = ds.signal(item["recording_id"])
    np.testing.assert_array_equal(item["signal_vectors"].numpy(), full[:, item["start"] : item["start"] + 20])
    starts = [w[i]["start"] for i in range(len(w))]
    assert starts == [ds.windows("train", 20, "random", seed=3)[i]["start"] for i in range(len(w))]
    assert starts != [ds.windows("train", 20, "random", seed=4)[i]["start"] for i in range(len(w))]
    w.set_epoch(1)
    epoch1 = [w[i]["start"] for i in range(len(w))]
    assert epoch1 != starts
    # the same windows whichever worker computes them
    loaded = [b["start"].tolist() for b in DataLoader(w, batch_size=2, num_workers=2)]
    assert sum(loaded, []) == epoch1
    batch = next(iter(DataLoader(w, batch_size=3)))
    assert batch["signal_vectors"].shape == (3, V, 20) and batch["xyz_vectors"].shape == (3, V, 3)


def test_windows_tiled_cover_every_time_point(tmp_path: Path) -> None:
    assert tile_starts(10, 4) == [0, 4, 6] and tile_starts(8, 4) == [0, 4] and tile_starts(3, 4) == []
    make_cohort(tmp_path, lengths=[50, 45, 20, 50, 50, 50, 50, 61])
    ds = build(tmp_path)
    w = ds.windows(None, num_timepoints=20, mode="tiled")
    seen: dict[str, np.ndarray] = {r: np.zeros(n, int) for r, n in zip(ds.recording_ids(), [50, 45, 20, 50, 50, 50, 50, 61])}
    for i in range(len(w)):
        item = w[i]
        s = item["start"]
        seen[item["recording_id"]][s : s + 20] += 1
        np.testing.assert_array_equal(item["signal_vectors"].numpy(), ds.signal(item["recording_id"])[:, s : s + 20])
    assert all((c > 0).all() for c in seen.values())
    lengths = dict(zip(ds.recording_ids(), [50, 45, 20, 50, 50, 50, 50, 61]))
    assert [(w[i]["recording_id"], w[i]["start"]) for i in range(len(w))] == [
        (r, s) for r in ds.recording_ids() for s in tile_starts(lengths[r], 20)
    ]
    assert len(w) == sum(len(tile_starts(n, 20)) for n in [50, 45, 20, 50, 50, 50, 50, 61])
    with pytest.raises(BrainmmError, match=r"recording 's2' has 20 time points, fewer than the window of 30"):
        ds.windows(None, num_timepoints=30)
    with pytest.raises(BrainmmError, match="window mode 'sliding'"):
        ds.windows("train", mode="sliding")
    with pytest.raises(BrainmmError, match="split 'dev'"):
        ds.recording_ids("dev")
