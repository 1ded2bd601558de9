"""Cheap input checks shared by the BrainLM models; each failure raises one `EncoderInputError`."""

from __future__ import annotations

import torch

from encoders.errors import EncoderInputError


def check_tensor(name: str, value: object, ndim: int) -> torch.Tensor:
    """`value` must be a floating-point tensor with `ndim` dimensions."""
    if not isinstance(value, torch.Tensor):
        raise EncoderInputError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim != ndim:
        raise EncoderInputError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise EncoderInputError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def check_finite(name: str, value: torch.Tensor) -> None:
    """No NaN/Inf in `value`: one reduction (a sum) in the normal case, an exact count only on failure."""
    if torch.isfinite(value.sum()):
        return
    bad = int((~torch.isfinite(value)).sum())
    if bad:  # a finite tensor whose sum overflows is still accepted
        raise EncoderInputError(f"{name} contains {bad} NaN/Inf value(s); clean or impute the recording first")


def check_noise(noise: torch.Tensor | None, batch: int, length: int) -> None:
    """An explicit masking noise must be a [B, L] tensor (small value = kept token)."""
    if noise is None:
        return
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != (batch, length):
        shape = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise EncoderInputError(f"noise must be a tensor of shape [B, L] = [{batch}, {length}], got {shape}")


def check_brainlm_inputs(
    signal_vectors: object,
    xyz_vectors: object,
    num_voxels: int,
    patch_size: int,
    max_patches: int,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate `signal_vectors [B, V, T]` / `xyz_vectors [B, V, 3]`; return them on `like`'s device and dtype."""
    signal = check_tensor("signal_vectors", signal_vectors, 3)
    batch, voxels, timepoints = signal.shape
    if voxels != num_voxels:
        raise EncoderInputError(
            f"signal_vectors has {voxels} parcels (shape {tuple(signal.shape)}), but the model config expects "
            f"num_brain_voxels={num_voxels} parcels: signal_vectors must be [B, {num_voxels}, T]"
        )
    if timepoints == 0 or timepoints % patch_size:
        raise EncoderInputError(
            f"signal_vectors has T={timepoints} timepoints, which must be a positive multiple of "
            f"timepoint_patching_size={patch_size}"
        )
    if timepoints // patch_size > max_patches:
        raise EncoderInputError(
            f"signal_vectors has T={timepoints} timepoints = {timepoints // patch_size} patches; at most "
            f"{max_patches} patches per parcel are supported (time-encoding table)"
        )
    xyz = check_tensor("xyz_vectors", xyz_vectors, 3)
    if tuple(xyz.shape) != (batch, voxels, 3):
        raise EncoderInputError(
            f"xyz_vectors must have shape [B, V, 3] = [{batch}, {voxels}, 3] (MNI mm per parcel), "
            f"got {tuple(xyz.shape)}"
        )
    signal = signal.to(device=like.device, dtype=like.dtype)
    xyz = xyz.to(device=like.device, dtype=like.dtype)
    check_finite("signal_vectors", signal)
    check_finite("xyz_vectors", xyz)
    return signal, xyz
