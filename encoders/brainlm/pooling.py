"""Pooling of BrainLM encoder outputs (`[B, 1 + N, H]`, CLS first) into one vector per recording."""

from __future__ import annotations

import torch

from encoders.errors import EncoderInputError

POOLINGS = ("cls", "mean", "time_then_voxel")


def check_pooling(pooling: str, allowed: tuple[str, ...] = POOLINGS) -> str:
    """Raise `EncoderInputError` unless `pooling` is one of `allowed`."""
    if pooling not in allowed:
        raise EncoderInputError(f"pooling must be one of {allowed}, got {pooling!r}")
    return pooling


def pool_latent(latent: torch.Tensor, pooling: str = "cls", grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Pool `latent [B, 1 + N, H]` (row 0 = CLS) to `[B, H]`.

    `cls`: row 0. `mean`: mean over the N non-CLS tokens. `time_then_voxel`: the N = V * P tokens viewed as
    `[B, V, P, H]` (`grid=(V, P)`, parcel-major), mean over the P time patches, then over the V parcels.
    """
    check_pooling(pooling)
    if pooling == "cls":
        return latent[:, 0]
    tokens = latent[:, 1:]
    if pooling == "mean":
        return tokens.mean(dim=1)
    if grid is None or grid[0] * grid[1] != tokens.shape[1]:
        raise EncoderInputError(f"time_then_voxel pooling needs grid=(V, P) with V * P = {tokens.shape[1]}, got {grid}")
    return tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[2]).mean(dim=2).mean(dim=1)
