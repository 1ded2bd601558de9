"""AdamW parameter groups (heads vs towers, no decay on norms/biases/temperature) and a warmup + cosine schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from alignment.errors import AlignmentInputError

TOWER_PREFIXES = ("brain_tower.", "genetics_towers.")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """open_clip's rule: scalars/vectors (ndim < 2), norms, biases and the logit scale/bias get no weight decay."""
    return param.ndim < 2 or "norm" in name or "bias" in name or "logit_scale" in name


def param_groups(model: nn.Module, lr: float, weight_decay: float, tower_lr: float | None = None) -> list[dict[str, Any]]:
    """Trainable parameters split into heads/towers x decay/no-decay groups, each named (`group["name"]`).

    Heads (and the temperature) train at `lr`, towers at `tower_lr` (default: `lr`). Frozen parameters are left out;
    empty groups are dropped.
    """
    if lr <= 0 or (tower_lr is not None and tower_lr <= 0) or weight_decay < 0:
        raise AlignmentInputError(
            f"optimizer: expected lr > 0, tower_lr > 0 and weight_decay >= 0, got {lr}, {tower_lr}, {weight_decay}"
        )
    buckets: dict[str, list[nn.Parameter]] = {"heads": [], "heads_no_decay": [], "towers": [], "towers_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "towers" if name.startswith(TOWER_PREFIXES) else "heads"
        buckets[part + ("_no_decay" if no_weight_decay(name, p) else "")].append(p)
    rates = {"heads": lr, "towers": tower_lr if tower_lr is not None else lr}
    groups = [
        {"name": key, "params": params, "lr": rates[key.split("_")[0]],
         "weight_decay": 0.0 if key.endswith("no_decay") else weight_decay}
        for key, params in buckets.items()
        if params
    ]
    if not groups:
        raise AlignmentInputError("optimizer: the model has no trainable parameters")
    return groups


class WarmupCosine:
    """LR multiplier: linear warmup to 1 over `warmup_steps`, then cosine decay to `min_ratio` at `total_steps`."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_ratio <= 1.0:
            raise AlignmentInputError(
                f"schedule: expected warmup_steps >= 0, total_steps >= 1, 0 <= min_lr_ratio <= 1, "
                f"got {warmup_steps}, {total_steps}, {min_ratio}"
            )
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.0) -> LambdaLR:
    """A LambdaLR (state_dict-able) applying `WarmupCosine` to every parameter group."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))
