"""Configs of the alignment library (projector heads, contrastive losses), importable without torch: the CLI reads
and checks a config before any model code loads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from alignment.errors import AlignmentInputError

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)
LossKind = Literal["clip", "siglip", "supcon", "xbm"]


@dataclass
class HeadConfig:
    """Shape of one projector head; the default is Linear(in, 1024) -> GELU -> Dropout(0.1) -> Linear(1024, 512)
    -> LayerNorm(512). `kind: linear` is a single Linear(in, out_dim) (no norm, no dropout).

    `standardize` adds a fixed per-feature (x - mean) / std in front (statistics set with `fit_standardizer`
    on the training split and saved with the head's weights). `init: cca` (linear heads only) starts both heads from
    the train-fitted PCA -> CCA solution (`init_heads_from_cca`), so training can only refine the classical fit.
    """

    kind: Literal["mlp", "linear"] = "mlp"
    out_dim: int = 512
    hidden_dim: int = 1024
    depth: int = 2  # number of Linear layers in the MLP
    dropout: float = 0.1
    layer_norm: bool = True
    standardize: bool = False
    init: Literal["random", "cca"] = "random"

    def validate(self) -> None:
        """Raise AlignmentInputError for impossible shapes."""
        for name in ("out_dim", "hidden_dim", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AlignmentInputError(f"head.{name}: expected a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise AlignmentInputError(f"head.dropout: expected a number in [0, 1), got {self.dropout!r}")
        if self.kind not in ("mlp", "linear"):
            raise AlignmentInputError(f"head.kind: expected 'mlp' or 'linear', got {self.kind!r}")
        if self.init not in ("random", "cca"):
            raise AlignmentInputError(f"head.init: expected 'random' or 'cca', got {self.init!r}")
        if self.init == "cca" and self.kind != "linear":
            raise AlignmentInputError(f"head.init: 'cca' needs head.kind 'linear' (a CCA solution is linear), got "
                                      f"{self.kind!r}")


@dataclass
class LossConfig:
    """Which contrastive loss and its settings.

    kind: clip (symmetric InfoNCE, learnable temperature), siglip (sigmoid, learnable temperature and bias),
    supcon (pytorch-metric-learning SupConLoss on subject ids, fixed temperature), xbm (cross-batch memory queue of
    negatives around NTXentLoss, fixed temperature). alpha weighs the directions (ContIG):
    alpha * L(brain->genetics) + (1 - alpha) * L(genetics->brain).
    """

    kind: LossKind = "clip"
    alpha: float = 0.5
    local_loss: bool = True
    temperature: float = 0.07  # fixed temperature of the PML losses (supcon, xbm)
    memory_size: int = 1024  # xbm queue length (rows per direction)
    init_logit_scale: float | None = None  # None: ln(1/0.07) clip, ln(10) siglip, ln(1/temperature) PML
    init_logit_bias: float | None = None  # siglip only; None: -10

    def validate(self) -> None:
        """Raise AlignmentInputError for inconsistent settings."""
        if self.kind not in ("clip", "siglip", "supcon", "xbm"):
            raise AlignmentInputError(f"loss.kind: expected clip, siglip, supcon or xbm, got {self.kind!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise AlignmentInputError(f"loss.alpha: expected a number in [0, 1], got {self.alpha}")
        if self.kind == "siglip" and self.alpha != 0.5:
            raise AlignmentInputError("loss.alpha: SigLIP scores each pair once (symmetric); leave alpha at 0.5")
        if self.temperature <= 0:
            raise AlignmentInputError(f"loss.temperature: expected a positive number, got {self.temperature}")
        if self.memory_size < 1:
            raise AlignmentInputError(f"loss.memory_size: expected a positive integer, got {self.memory_size}")
        if self.init_logit_bias is not None and self.kind != "siglip":
            raise AlignmentInputError(f"loss.init_logit_bias: only SigLIP has a logit bias (loss.kind={self.kind})")
        if self.init_logit_scale is not None and not self.learnable_temperature:
            raise AlignmentInputError(
                f"loss.init_logit_scale: loss.kind={self.kind} uses the fixed loss.temperature instead"
            )

    @property
    def learnable_temperature(self) -> bool:
        """Whether the model's logit scale is trained (native losses) or fixed at 1/temperature (PML losses)."""
        return self.kind in ("clip", "siglip")

    def logit_scale_init(self) -> float:
        """Initial log-scale for the model."""
        if not self.learnable_temperature:
            return math.log(1.0 / self.temperature)
        if self.init_logit_scale is not None:
            return self.init_logit_scale
        return math.log(10.0) if self.kind == "siglip" else CLIP_INIT_LOGIT_SCALE

    def logit_bias_init(self) -> float | None:
        """Initial logit bias (SigLIP only)."""
        if self.kind != "siglip":
            return None
        return -10.0 if self.init_logit_bias is None else self.init_logit_bias
