"""Input preparation for the ViT-MAE BrainLM models (vitmae_111M / vitmae_650M), as in the original tutorials.

The tutorials sort the 424 parcels by their atlas Y coordinate (a *stable* ascending sort: Y has many ties)
and divide by a fixed 5.6430855 before building the parcel x time image. This is kept out of the model's
forward so that it is applied once, visibly, in the data pipeline.
"""

from __future__ import annotations

import numpy as np
import torch

from encoders.errors import EncoderInputError

VIT_SCALE = 5.6430855  # `max_val_to_scale` of the BrainLM tutorials (provenance undocumented upstream)


def sort_parcels_by_y(y_coords: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Parcel order of the tutorials: indices sorting Y ascending, ties kept in atlas order (== Python `sorted`)."""
    y = torch.as_tensor(np.asarray(y_coords) if not isinstance(y_coords, torch.Tensor) else y_coords)
    if y.ndim != 1 or y.numel() == 0:
        raise EncoderInputError(f"y_coords must be a non-empty 1-D array of parcel Y coordinates, got shape "
                                f"{tuple(y.shape)}")
    if not torch.isfinite(y.double()).all():
        raise EncoderInputError("y_coords contains NaN/Inf")
    return torch.sort(y, stable=True).indices


def vit_preprocess(
    signal_vectors: torch.Tensor | np.ndarray,
    y_coords: torch.Tensor | np.ndarray,
    scale: float | None = VIT_SCALE,
) -> torch.Tensor:
    """Reorder parcels by Y (stable) and divide by `scale` (None = no scaling): `[..., V, T] -> [..., V, T]`."""
    signal = signal_vectors if isinstance(signal_vectors, torch.Tensor) else torch.as_tensor(np.asarray(signal_vectors))
    order = sort_parcels_by_y(y_coords)
    if signal.ndim < 2 or signal.shape[-2] != order.numel():
        raise EncoderInputError(f"signal_vectors must be [..., V, T] with V = {order.numel()} parcels (one per "
                                f"Y coordinate), got shape {tuple(signal.shape)}")
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise EncoderInputError(f"scale must be a positive number or None, got {scale!r}")
    signal = signal.index_select(-2, order.to(signal.device))
    return signal / scale if scale is not None else signal
