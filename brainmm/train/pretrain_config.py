"""Typed config of the `brainmm pretrain` stage (BrainLM architecture, data, optimisation, evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from brainmm.errors import BrainmmError
from brainmm.tracking import TrackingConfig

# ----------------------------------------------------------------------------------------------- config


@dataclass
class BrainLMArchConfig:
    """Architecture of a model trained from scratch (BrainLMConfig fields; defaults: the repo's 5M checkpoint).

    `num_brain_voxels` / `num_timepoints_per_voxel` null: taken from the dataset (parcels, window length).
    `xyz_init_scale` multiplies the initial weights of the two coordinate projections (encoder and decoder).
    1.0 is the original init; with raw MNI-mm coordinates (tens of mm) it makes the coordinate term of every
    token 10-20x larger than the signal term, which stalls short trainings on the mean-predictor plateau;
    0.02 initialises them as if coordinates were unit-scale. Inputs and checkpoints are unchanged either way.
    """

    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    decoder_hidden_size: int = 256
    decoder_num_hidden_layers: int = 2
    decoder_num_attention_heads: int = 4
    decoder_intermediate_size: int = 1024
    timepoint_patching_size: int = 20
    num_brain_voxels: int | None = None
    num_timepoints_per_voxel: int | None = None
    conv_kernel_size: int | None = 65
    hidden_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    loss_fn: Literal["mse", "mae"] = "mse"
    use_tanh_decoder: bool = False
    xyz_init_scale: float = 1.0


@dataclass
class PretrainModelConfig:
    """The model: a checkpoint folder to continue from (`init_from`), else a fresh model of `arch`.

    `mask_ratio` is applied in both cases (as the original train.py does).
    """

    init_from: str | None = None
    arch: BrainLMArchConfig = field(default_factory=BrainLMArchConfig)
    mask_ratio: float = 0.2
    gradient_checkpointing: bool = False


@dataclass
class PretrainDataConfig:
    """Training data: an ingested fMRI dataset folder; random windows, `windows_per_recording` per epoch."""

    dataset: str = ""
    windows_per_recording: int = 1
    num_workers: int = 0


@dataclass
class PretrainTrainConfig:
    """Optimisation; `batch_size` is the global batch per optimizer step (all processes, all micro-batches)."""

    max_steps: int = 1000
    batch_size: int = 256
    micro_batch_size: int | None = None  # per process and forward pass; null: batch_size / processes
    base_lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16 autocast where the device runs it fast (encoders.precision)
    device: str = "auto"
    seed: int = 1234
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2


@dataclass
class PretrainEvalConfig:
    """Evaluation on tiled windows with fixed, seeded masking noise (val during training, test at the end)."""

    every: int = 100  # steps between val evaluations; 0: only at the end
    batch_size: int = 16
    seed: int = 0
    max_windows: int | None = None  # first N tiled windows of a split; null: all
    figure_parcels: int = 4


@dataclass
class PretrainConfig:
    """The `brainmm pretrain` stage."""

    name: str = "pretrain"
    output_dir: str = "runs/pretrain"
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    eval: PretrainEvalConfig = field(default_factory=PretrainEvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        """Range checks of every numeric field (paths are checked when the run starts)."""
        t, e, d, m = self.train, self.eval, self.data, self.model
        checks = [
            ("train.max_steps", t.max_steps >= 1, ">= 1"), ("train.batch_size", t.batch_size >= 1, ">= 1"),
            ("train.micro_batch_size", t.micro_batch_size is None or t.micro_batch_size >= 1, "null or >= 1"),
            ("train.base_lr", t.base_lr > 0, "> 0"), ("train.weight_decay", t.weight_decay >= 0, ">= 0"),
            ("train.betas", len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "two numbers in [0, 1)"),
            ("train.eps", t.eps > 0, "> 0"), ("train.warmup_ratio", 0 <= t.warmup_ratio < 1, "in [0, 1)"),
            ("train.min_lr_ratio", 0 <= t.min_lr_ratio <= 1, "in [0, 1]"), ("train.grad_clip", t.grad_clip >= 0, ">= 0"),
            ("train.log_every", t.log_every >= 1, ">= 1"), ("train.checkpoint_every", t.checkpoint_every >= 1, ">= 1"),
            ("train.keep_checkpoints", t.keep_checkpoints >= 2, ">= 2"), ("eval.every", e.every >= 0, ">= 0"),
            ("eval.batch_size", e.batch_size >= 1, ">= 1"),
            ("eval.max_windows", e.max_windows is None or e.max_windows >= 1, "null or >= 1"),
            ("eval.figure_parcels", e.figure_parcels >= 1, ">= 1"),
            ("data.windows_per_recording", d.windows_per_recording >= 1, ">= 1"),
            ("data.num_workers", d.num_workers >= 0, ">= 0"),
            ("model.mask_ratio", 0 < m.mask_ratio < 1, "in (0, 1): the metrics are over masked timepoints"),
            ("model.arch.xyz_init_scale", m.arch.xyz_init_scale > 0, "> 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                value = self
                for part in name.split("."):
                    value = getattr(value, part)
                raise BrainmmError(f"pretrain config field '{name}': expected {expected}, got {value!r}")
