"""Contrastive losses between normalised brain and genetics features (open_clip semantics).

Every pair loss has the signature `loss(brain, genetics, logit_scale, logit_bias=None, labels=None, mask=None)`:
  * `brain`, `genetics`: [B, D] L2-normalised features of the B pairs on this rank;
  * `logit_scale`: the already exponentiated scale (the model stores its log);
  * `labels`: optional [B] integer subject ids. Rows with equal labels are all positives of each other
    (several recordings of one subject); without labels, row i pairs with column i only;
  * `mask`: optional [B] bool, False for rows whose genetics modality is missing (excluded from the term).
Under torchrun, features are gathered across ranks with gradient; `local_loss=True` scores only this rank's rows
against the gathered batch (labels offset by B*rank) and scales the term so that DDP's gradient averaging gives
exactly the full-batch gradient. Logged values should be averaged over ranks (`distributed.all_reduce_mean`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from alignment.configs import LossConfig
from alignment.distributed import gather_features, gather_tensor, world
from alignment.errors import AlignmentInputError
from alignment.model import AlignmentOutput


def check_pair(
    brain: torch.Tensor,
    genetics: torch.Tensor,
    labels: torch.Tensor | None,
    mask: torch.Tensor | None,
    world_size: int,
) -> None:
    """Shapes of one pair-loss call; a global batch of one pair is an error (no negatives)."""
    if brain.ndim != 2 or genetics.shape != brain.shape:
        raise AlignmentInputError(
            f"contrastive loss: expected brain and genetics features of the same [B, D] shape, "
            f"got {list(brain.shape)} and {list(genetics.shape)}"
        )
    n = brain.shape[0]
    if n * world_size < 2:
        raise AlignmentInputError(
            f"contrastive loss: a batch of {n * world_size} pair has no negatives; use batch_size >= 2"
        )
    for name, t in (("labels", labels), ("mask", mask)):
        if t is not None and t.shape != (n,):
            raise AlignmentInputError(f"contrastive loss: expected {name} of shape [{n}], got {list(t.shape)}")
    if mask is not None and mask.dtype != torch.bool:
        raise AlignmentInputError(f"contrastive loss: expected a bool mask, got {mask.dtype}")


class _PairLoss(nn.Module):
    """Gathering and row bookkeeping shared by the native losses."""

    def __init__(self, local_loss: bool = True, cache_labels: bool = True, rank: int | None = None,
                 world_size: int | None = None) -> None:
        super().__init__()
        default_rank, default_world = world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.local_loss = local_loss
        self.cache_labels = cache_labels
        self._label_cache: dict[tuple[torch.device, int, int], torch.Tensor] = {}

    def _arange(self, n: int, offset: int, device: torch.device) -> torch.Tensor:
        key = (device, n, offset)
        labels = self._label_cache.get(key)
        if labels is None:
            labels = torch.arange(offset, offset + n, device=device)
            if self.cache_labels:
                self._label_cache = {key: labels}  # keep only the latest size (open_clip's prev_num_logits)
        return labels

    def _gather(self, brain, genetics, labels, mask, gather_brain: bool = True):
        """Rows scored on this rank, all columns, and the factor turning a row sum into this rank's share.

        `gather_brain=False` skips gathering the brain rows (SigLIP with local_loss only needs the genetics ones).
        """
        n_local = brain.shape[0]
        if self.world_size > 1:
            if gather_brain:
                all_b, all_g = gather_features(brain, genetics)
            else:
                all_b, (all_g,) = None, gather_features(genetics)
            all_labels = gather_tensor(labels) if labels is not None else None
            all_mask = gather_tensor(mask) if mask is not None else None
        else:
            all_b, all_g, all_labels, all_mask = brain, genetics, labels, mask
        if self.local_loss and self.world_size > 1:
            rows = (brain, genetics, labels, mask, self.rank * n_local)
            share = float(self.world_size)  # DDP divides by world_size again
        else:
            rows = (all_b, all_g, all_labels, all_mask, 0)
            share = 1.0
        n_present = all_mask.sum().clamp(min=1).float() if all_mask is not None else float(all_g.shape[0])
        return rows, (all_b, all_g, all_labels, all_mask), share, n_present


class ClipLoss(_PairLoss):
    """Symmetric InfoNCE: alpha * CE(s * b g^T) + (1 - alpha) * CE(s * g b^T), multi-positive with labels."""

    def __init__(self, alpha: float = 0.5, local_loss: bool = True, cache_labels: bool = True,
                 rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__(local_loss, cache_labels, rank, world_size)
        self.alpha = alpha

    def _direction(self, logits, offset, row_labels, col_labels, row_mask, col_mask) -> torch.Tensor:
        """Sum over present rows of the cross-entropy against the positives of each row."""
        n_rows = logits.shape[0]
        if row_mask is None and row_labels is None:
            return F.cross_entropy(logits, self._arange(n_rows, offset, logits.device), reduction="sum")
        index = torch.arange(n_rows, device=logits.device)
        if row_mask is not None:
            index = index[row_mask]
            logits = logits[index].masked_fill(~col_mask, float("-inf"))
        if row_labels is None:
            return F.cross_entropy(logits, index + offset, reduction="sum")
        positives = row_labels[index, None] == col_labels[None, :]
        if col_mask is not None:
            positives &= col_mask
        log_prob = logits.log_softmax(dim=-1).masked_fill(~positives, 0.0)
        return -(log_prob.sum(dim=-1) / positives.sum(dim=-1)).sum()

    def forward(self, brain: torch.Tensor, genetics: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        check_pair(brain, genetics, labels, mask, self.world_size)
        brain, genetics = brain.float(), genetics.float()
        (rb, rg, rl, rm, offset), (ab, ag, al, am), share, n_present = self._gather(brain, genetics, labels, mask)
        logits_bg = logit_scale * rb @ ag.T
        logits_gb = logit_scale * rg @ ab.T
        if logit_bias is not None:
            logits_bg, logits_gb = logits_bg + logit_bias, logits_gb + logit_bias
        loss_bg = self._direction(logits_bg, offset, rl, al, rm, am)
        loss_gb = self._direction(logits_gb, offset, rl, al, rm, am)
        return (self.alpha * loss_bg + (1.0 - self.alpha) * loss_gb) * share / n_present


class SigLipLoss(_PairLoss):
    """Sigmoid loss: -sum log sigmoid(y_ij (s b_i.g_j + bias)) / N with y = +1 for positives, -1 otherwise."""

    def forward(self, brain: torch.Tensor, genetics: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        check_pair(brain, genetics, labels, mask, self.world_size)
        brain, genetics = brain.float(), genetics.float()
        (rb, _, rl, rm, offset), (_, ag, al, am), share, n_present = self._gather(
            brain, genetics, labels, mask, gather_brain=not self.local_loss)
        logits = logit_scale * rb @ ag.T
        if logit_bias is not None:
            logits = logits + logit_bias
        if rl is None:
            rows = torch.arange(logits.shape[0], device=logits.device) + offset
            positives = rows[:, None] == torch.arange(logits.shape[1], device=logits.device)[None, :]
        else:
            positives = rl[:, None] == al[None, :]
        signs = positives.to(logits.dtype) * 2.0 - 1.0
        pair_loss = -F.logsigmoid(signs * logits)
        if rm is not None:
            pair_loss = pair_loss * (rm[:, None] & am[None, :]).to(pair_loss.dtype)
        return pair_loss.sum() * share / n_present


def create_loss(cfg: LossConfig | None = None, embed_dim: int = 512, rank: int | None = None,
                world_size: int | None = None) -> nn.Module:
    """The pair loss named by `cfg.kind` (labels are always cached, as in open_clip's create_loss)."""
    cfg = cfg or LossConfig()
    cfg.validate()
    if cfg.kind == "clip":
        return ClipLoss(cfg.alpha, cfg.local_loss, True, rank, world_size)
    if cfg.kind == "siglip":
        return SigLipLoss(cfg.local_loss, True, rank, world_size)
    from alignment import pml  # pytorch-metric-learning is imported only when asked for

    if cfg.kind == "supcon":
        return pml.SupConPairLoss(cfg.temperature, cfg.alpha)
    return pml.CrossBatchMemoryPairLoss(embed_dim, cfg.temperature, cfg.memory_size, cfg.alpha)


@dataclass
class LossOutput:
    """Total loss (mean over genetics modalities) and the term of each modality."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class AlignmentLoss(nn.Module):
    """One pair loss per genetics modality; total = mean over modalities (ContIG: weight 1/M each).

    A modality missing for some subjects is masked out of its own term only; a modality absent from the whole
    batch contributes zero.
    """

    def __init__(self, cfg: LossConfig | None, modalities: Sequence[str], embed_dim: int = 512,
                 rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        if not modalities:
            raise AlignmentInputError("AlignmentLoss: expected at least one genetics modality")
        self.terms = nn.ModuleDict({m: create_loss(cfg, embed_dim, rank, world_size) for m in modalities})

    def forward(self, out: AlignmentOutput, labels: torch.Tensor | None = None,
                masks: Mapping[str, torch.Tensor] | None = None) -> LossOutput:
        missing = sorted(set(self.terms) - set(out.genetics))
        if missing:
            raise AlignmentInputError(f"AlignmentLoss: no features for genetics modalities {missing}")
        masks = masks or {}
        terms = {
            m: loss(out.brain, out.genetics[m], out.logit_scale, out.logit_bias, labels, masks.get(m))
            for m, loss in self.terms.items()
        }
        total = torch.stack(list(terms.values())).mean()
        return LossOutput(total, terms)
