"""Projector heads into the shared space: an MLP (default) or a linear map, with optional input standardisation."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from alignment.configs import HeadConfig
from alignment.errors import AlignmentInputError


class ProjectionHead(nn.Module):
    """Maps [B, in_dim] tower outputs to [B, out_dim] (not yet L2-normalised: the dual encoder does that)."""

    def __init__(self, in_dim: int, config: HeadConfig | None = None) -> None:
        super().__init__()
        config = config or HeadConfig()
        config.validate()
        if not isinstance(in_dim, int) or in_dim < 1:
            raise AlignmentInputError(f"head in_dim: expected a positive integer, got {in_dim!r}")
        self.in_dim, self.config = in_dim, config
        if config.standardize:
            self.register_buffer("input_mean", torch.zeros(in_dim))
            self.register_buffer("input_std", torch.ones(in_dim))
        if config.kind == "linear":
            self.net = nn.Sequential(nn.Linear(in_dim, config.out_dim))
        else:
            layers: list[nn.Module] = []
            width = in_dim
            for _ in range(config.depth - 1):
                layers += [nn.Linear(width, config.hidden_dim), nn.GELU(), nn.Dropout(config.dropout)]
                width = config.hidden_dim
            layers.append(nn.Linear(width, config.out_dim))
            if config.layer_norm:
                layers.append(nn.LayerNorm(config.out_dim))
            self.net = nn.Sequential(*layers)

    @property
    def out_dim(self) -> int:
        """Dimension of the shared space."""
        return self.config.out_dim

    @torch.no_grad()
    def fit_standardizer(self, x: torch.Tensor, eps: float = 1e-6) -> None:
        """Set the input mean/std from training rows `x` [N, in_dim] (constant features get std 1)."""
        if not self.config.standardize:
            raise AlignmentInputError("fit_standardizer: this head was built with head.standardize=false")
        if x.ndim != 2 or x.shape[1] != self.in_dim or x.shape[0] < 1:
            raise AlignmentInputError(f"fit_standardizer: expected [N>=1, {self.in_dim}] inputs, got {list(x.shape)}")
        x = x.to(self.input_mean.device, torch.float64)
        mean = x.mean(0)
        std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(mean)
        self.input_mean.copy_(mean.float())
        self.input_std.copy_(torch.where(std > eps, std, torch.ones_like(std)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise AlignmentInputError(f"projector head: expected inputs with {self.in_dim} features, got {x.shape[-1]}")
        if self.config.standardize:
            x = (x - self.input_mean) / self.input_std
        return self.net(x)

    def to_config(self) -> dict[str, Any]:
        """JSON-able description from which `ProjectionHead.from_config` rebuilds the same module."""
        return {"in_dim": self.in_dim, **asdict(self.config)}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ProjectionHead:
        """Rebuild a head from `to_config()` output (weights loaded separately)."""
        cfg = dict(cfg)
        in_dim = cfg.pop("in_dim")
        try:
            return cls(in_dim, HeadConfig(**cfg))
        except TypeError as err:
            raise AlignmentInputError(f"head config {cfg}: {err}") from None


def _standardised(head: ProjectionHead, x: torch.Tensor) -> np.ndarray:
    x = x.detach().to(torch.float64).cpu()
    if head.config.standardize:
        x = (x - head.input_mean.double().cpu()) / head.input_std.double().cpu()
    return x.numpy()


@torch.no_grad()
def init_heads_from_cca(
    brain_head: ProjectionHead,
    genetics_head: ProjectionHead,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    max_components: int = 8,
) -> dict[str, float]:
    """Set two linear heads to the PCA -> CCA solution of their (standardised) paired training inputs, its PCA size
    and number of pairs chosen on the validation pairs (`alignment.baselines.select_cca`): the first k outputs are
    the standardised canonical scores (the `cca` baseline's space), the other outputs 0. Returns the selection."""
    from alignment.baselines import select_cca

    heads = (brain_head, genetics_head)
    for head in heads:
        if head.config.kind != "linear":
            raise AlignmentInputError("init_heads_from_cca: needs linear heads (head.kind linear)")
    tb, tg = (_standardised(h, x) for h, x in zip(heads, train))
    vb, vg = (_standardised(h, x) for h, x in zip(heads, val))
    model = select_cca("cca", tb, tg, vb, vg, max_components)
    k = int(model.model_.n_components)
    for side, head in enumerate(heads):
        if head.out_dim < k:
            raise AlignmentInputError(f"init_heads_from_cca: head.out_dim {head.out_dim} < {k} canonical pairs")
        weight, bias = model.affine_map(side, head.in_dim, heads[1 - side].in_dim)
        linear = head.net[0]
        linear.weight.zero_()
        linear.bias.zero_()
        linear.weight[:k] = torch.as_tensor(weight, dtype=linear.weight.dtype)
        linear.bias[:k] = torch.as_tensor(bias, dtype=linear.bias.dtype)
    return {**model.selection_, "components": float(k)}
