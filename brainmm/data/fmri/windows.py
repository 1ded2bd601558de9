"""Training and evaluation windows as a torch Dataset: random (seeded per epoch and item) or tiled.

Random windows draw each start from `numpy.random.default_rng([seed, epoch, index])`, so an item is the
same whichever DataLoader worker computes it; call `set_epoch(e)` before each epoch for new windows.
Tiled windows start at 0, T, 2T, ... plus one final window ending at the last time point, so every time
point is covered. Signals are read from the memory-mapped Arrow file; only the window is copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from brainmm.errors import BrainmmError

MODES = ("random", "tiled")


def tile_starts(length: int, window: int) -> list[int]:
    """Start indices of tiled windows covering [0, length): stride `window`, last one flush with the end."""
    if length < window:
        return []
    starts = list(range(0, length - window + 1, window))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


class FmriWindows(Dataset):
    """Items: signal_vectors [V, T] float32, xyz_vectors [V, 3], recording_id, subject_id, window_index, start."""

    def __init__(
        self,
        data_path: Path,
        rows: np.ndarray,
        lengths: np.ndarray,
        recording_ids: list[str],
        subject_ids: list[str],
        coords: np.ndarray,
        num_timepoints: int,
        mode: str = "random",
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise BrainmmError(f"window mode {mode!r}: expected one of {', '.join(MODES)}")
        if num_timepoints < 1:
            raise BrainmmError(f"num_timepoints: expected a positive integer, got {num_timepoints}")
        self.data_path = Path(data_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.recording_ids = list(recording_ids)
        self.subject_ids = list(subject_ids)
        self.xyz = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32))
        self.num_timepoints = int(num_timepoints)
        self.mode = mode
        self.seed = int(seed)
        self.epoch = 0
        if mode == "tiled":
            items = [(i, k, s) for i, n in enumerate(self.lengths) for k, s in enumerate(tile_starts(int(n), self.num_timepoints))]
            self.items = np.asarray(items, dtype=np.int64).reshape(-1, 3)
        self._reader = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random windows `__getitem__` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows) if self.mode == "random" else len(self.items)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None  # each worker maps the Arrow file itself
        return state

    def _read(self, row: int) -> np.ndarray:
        if self._reader is None:
            import datasets

            from brainmm.data.fmri.dataset import SignalReader

            self._reader = SignalReader(datasets.load_from_disk(str(self.data_path)))
        return self._reader(row)

    def start_of(self, index: int) -> tuple[int, int, int]:
        """(recording position, window_index, start) of item `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        if self.mode == "tiled":
            i, k, s = self.items[index]
            return int(i), int(k), int(s)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return index, 0, int(rng.integers(0, self.lengths[index] - self.num_timepoints + 1))

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, k, start = self.start_of(index)
        window = self._read(int(self.rows[i]))[start : start + self.num_timepoints]
        return {
            "signal_vectors": torch.from_numpy(np.array(window.T, order="C")),
            "xyz_vectors": self.xyz,
            "recording_id": self.recording_ids[i],
            "subject_id": self.subject_ids[i],
            "window_index": k,
            "start": start,
        }
