"""Tiny random BrainLM models and inputs for tests (any engineer's): seconds on a CPU, same code paths as old_13M."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import ViTMAEConfig

from encoders.brainlm.configuration import BrainLMConfig


def tiny_brainlm_config(**overrides) -> BrainLMConfig:
    """A tiny valid `BrainLMConfig`: 12 parcels x 40 timepoints (patch 10), hidden 32, 2+1 layers, conv 9."""
    fields = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=64, num_brain_voxels=12, num_timepoints_per_voxel=40,
        timepoint_patching_size=10, mask_ratio=0.5, conv_kernel_size=9,
    )
    fields.update(overrides)
    return BrainLMConfig(**fields)


def random_brainlm_inputs(
    config: BrainLMConfig, batch: int = 2, timepoints: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(signal [B, V, T] ~ N(0, 1), xyz [B, V, 3] integer mm in the MNI box, same coordinates per sample)."""
    g = torch.Generator().manual_seed(seed)
    t = timepoints or config.num_timepoints_per_voxel
    signal = torch.randn(batch, config.num_brain_voxels, t, generator=g)
    low, high = torch.tensor([-70.0, -100.0, -50.0]), torch.tensor([70.0, 70.0, 80.0])
    xyz = torch.round(low + (high - low) * torch.rand(config.num_brain_voxels, 3, generator=g))
    return signal, xyz.expand(batch, -1, -1).contiguous()


def tiny_vit_config(**overrides) -> ViTMAEConfig:
    """A tiny ViT-MAE BrainLM config with the real 424 x 200 -> 432 x 432 geometry (patch 16), hidden 24."""
    fields = dict(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=32, image_size=432, patch_size=16, mask_ratio=0.75,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    fields.update(overrides)
    config = ViTMAEConfig(**fields)
    config.train_mode = "auto_encode"
    return config


def checkpoint_from_fixture(fixture: Path, folder: Path) -> Path:
    """A loadable checkpoint folder from a golden fixture (its `weights.safetensors` becomes `model.safetensors`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").symlink_to(Path(fixture) / "config.json")
    (folder / "model.safetensors").symlink_to(Path(fixture) / "weights.safetensors")
    return folder
