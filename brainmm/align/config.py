"""Typed config of the `brainmm align` stage (inputs, towers, heads, loss, optimisation, tracking)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from alignment import (
    HeadConfig,
    LossConfig,
)
from brainmm.align.confounds_config import ConfoundsConfig
from brainmm.align.tower_config import TowersConfig
from brainmm.align.towers import check_towers, tower_kind
from brainmm.errors import BrainmmError
from brainmm.tracking import TrackingConfig

_MODALITY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


# ----------------------------------------------------------------------------------------------- config


@dataclass
class AlignDataConfig:
    """Input tables: brain table stem (empty with a BrainLM tower), genetics table stems by modality, split CSV."""

    brain: str = ""
    genetics: dict[str, str] = field(default_factory=dict)
    split: str = ""


@dataclass
class AlignTrainConfig:
    """Optimisation. `batch_size` is the global batch (split evenly over torchrun processes)."""

    batch_size: int = 64
    epochs: int = 100
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # AdamW (beta1, beta2)
    eps: float = 1e-6
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16 autocast where the device runs it fast (encoders.precision)
    device: str = "auto"
    seed: int = 0
    log_every: int = 10  # steps between train-metric logs
    checkpoint_every: int = 100  # steps between checkpoints (one is also written when training ends)
    patience: int = 10  # epochs without a better validation score before stopping; 0 = never stop early
    shuffle_pairs: bool = False  # pair each train subject with another's genetics (seeded derangement): a null run


@dataclass
class AlignConfig:
    """The `brainmm align` stage."""

    name: str = "align"
    output_dir: str = "runs/align"
    data: AlignDataConfig = field(default_factory=AlignDataConfig)
    head: HeadConfig = field(default_factory=lambda: HeadConfig(standardize=True))
    towers: TowersConfig = field(default_factory=TowersConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: AlignTrainConfig = field(default_factory=AlignTrainConfig)
    confounds: ConfoundsConfig = field(default_factory=ConfoundsConfig)  # residualise the inputs (train fit)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check_paths(self) -> None:
        """The input tables and the split exist (the CLI calls this before torch loads; the run reads them later)."""
        from pathlib import Path

        from brainmm.embeddings import require_table

        for stem in ([self.data.brain] if self.data.brain else []) + list(self.data.genetics.values()):
            require_table(stem)
        if self.data.split and not Path(self.data.split).is_file():
            raise BrainmmError(f"split file {self.data.split}: not found")

    def validate(self) -> None:
        """Cross-field checks (input paths: `check_paths`, and again when the run starts)."""
        t = self.train
        positive = {"train.batch_size": t.batch_size, "train.epochs": t.epochs, "train.log_every": t.log_every,
                    "train.checkpoint_every": t.checkpoint_every}
        for name, value in positive.items():
            if value < 1:
                raise BrainmmError(f"align config field '{name}': expected an integer >= 1, got {value}")
        if t.batch_size < 2:
            raise BrainmmError(f"align config field 'train.batch_size': a contrastive loss needs >= 2, got {t.batch_size}")
        checks = [("train.lr", t.lr > 0, "> 0"), ("train.weight_decay", t.weight_decay >= 0, ">= 0"),
                  ("train.eps", t.eps > 0, "> 0"), ("train.warmup_steps", t.warmup_steps >= 0, ">= 0"),
                  ("train.grad_clip", t.grad_clip >= 0, ">= 0"), ("train.patience", t.patience >= 0, ">= 0"),
                  ("train.min_lr_ratio", 0 <= t.min_lr_ratio <= 1, "in [0, 1]"),
                  ("train.betas", len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "two numbers in [0, 1)")]
        for name, ok, expected in checks:
            if not ok:
                raise BrainmmError(f"align config field '{name}': expected {expected}, got {_field(self, name)!r}")
        for modality in self.data.genetics:
            if not _MODALITY_NAME.match(modality) or modality == "brain":
                raise BrainmmError(
                    f"align config field 'data.genetics.{modality}': modality names must be identifiers "
                    "(letters, digits, _) other than 'brain'"
                )
        check_towers(self.towers)
        for modality in self.towers.genetics:
            if modality not in self.data.genetics:
                raise BrainmmError(
                    f"align config field 'towers.genetics.{modality}': no such modality in data.genetics "
                    f"({sorted(self.data.genetics)})"
                )
        if tower_kind(self.towers.brain.kind, "brain").has_model and self.data.brain:
            raise BrainmmError(
                f"align config field 'data.brain': with towers.brain.kind: {self.towers.brain.kind} the brain rows come "
                f"from the tower's own inputs (towers.brain); leave data.brain empty (got {self.data.brain!r})"
            )


def _field(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg
