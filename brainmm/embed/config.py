"""`EmbedConfig`: which frozen BrainLM, which dataset, pooling, window, where the cache and the tables go."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from brainmm.errors import BrainmmError


@dataclass
class EmbedConfig:
    """The `brainmm embed` stage (brain embeddings from a frozen BrainLM, cached on disk).

    `num_timepoints` null: the model's window (Nystromformer: num_timepoints_per_voxel; ViT-MAE: 200).
    `cache_dir` null: `<data dir>/brain-embeddings` ($BRAINMM_DATA_DIR or ~/.cache/brainmm).
    `out`: table stem; writes `<out>.safetensors/.json` (one row per recording), `<out>_subjects.*` (mean over a
    subject's recordings) and `<out>.config.yaml`.
    `precision`: `auto` (bf16 autocast on a GPU with bf16 or a CPU with AMX/AVX512_BF16, else fp32), `fp32` or
    `bf16` (`encoders.precision`); the resolved value is part of the cache key and the tables' meta.
    """

    model: str = ""
    dataset: str = ""
    pooling: Literal["cls", "mean", "time_then_voxel"] = "cls"
    num_timepoints: int | None = None
    batch_size: int = 32
    num_workers: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    cache_dir: str | None = None
    out: str = "embeddings/brain"

    def validate(self) -> None:
        """Range checks (paths are checked when the stage runs)."""
        for name, value, low in (("batch_size", self.batch_size, 1), ("num_workers", self.num_workers, 0)):
            if value < low:
                raise BrainmmError(f"embed config field '{name}': expected an integer >= {low}, got {value}")
        if self.num_timepoints is not None and self.num_timepoints < 1:
            raise BrainmmError(f"embed config field 'num_timepoints': expected null or >= 1, got {self.num_timepoints}")
        if not self.out:
            raise BrainmmError("embed config field 'out': expected an output table stem, got nothing")
