"""pytorch-metric-learning (PML) adapters, used where PML adds something to the native losses.

* `SupConPairLoss`: SupConLoss with subject ids as labels, both directions (several scans per subject).
* `CrossBatchMemoryPairLoss`: CrossBatchMemory queues of detached keys (MoCo-style extra negatives for small
  batches); labels must be globally unique over time (subject indices), the other modality's rows are enqueued.
* `pml_clip_loss`: the PML configuration that reproduces CLIP at a fixed temperature (reference for tests).
* `SafeDistributedLossWrapper`: PML's DistributedLossWrapper, refusing efficient=True with ref_emb.

Pitfalls guarded here: PML zeroes the diagonal when `ref_labels is labels` (same object), which deletes every
cross-modal positive, so ref labels are always cloned; PML losses have a fixed temperature (the model's logit
scale is not used). Under torchrun the adapters gather features with gradient and score the whole global batch
on every rank, which is exact after DDP averaging.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.losses import CrossBatchMemory, NTXentLoss, SupConLoss
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
from torch import nn

from alignment.distributed import gather_features, gather_tensor, world
from alignment.errors import AlignmentInputError
from alignment.losses import check_pair


def cross_modal(loss: nn.Module, anchors: torch.Tensor, labels: torch.Tensor, refs: torch.Tensor,
                ref_labels: torch.Tensor) -> torch.Tensor:
    """A PML loss with anchors of one modality scored against refs of the other (ref labels always cloned)."""
    if ref_labels is labels:
        ref_labels = ref_labels.clone()
    return loss(anchors, labels, ref_emb=refs, ref_labels=ref_labels)


def pml_clip_loss(brain: torch.Tensor, genetics: torch.Tensor, temperature: float) -> torch.Tensor:
    """1/2 [NTXent(brain, ref=genetics) + NTXent(genetics, ref=brain)] with distinct arange labels (= CLIP)."""
    labels = torch.arange(brain.shape[0], device=brain.device)
    loss = NTXentLoss(temperature=temperature)
    return 0.5 * (cross_modal(loss, brain, labels, genetics, labels) + cross_modal(loss, genetics, labels, brain, labels))


class _PMLPairLoss(nn.Module):
    """Common gathering/masking; subclasses score (brain, genetics, labels) of the whole global batch."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def _global_rows(self, brain, genetics, labels, mask, need_labels: bool):
        _, world_size = world()
        check_pair(brain, genetics, labels, mask, world_size)
        if need_labels and labels is None:
            raise AlignmentInputError(
                "loss.kind=xbm: needs labels that stay unique over the whole run (subject indices), got none"
            )
        if world_size > 1:
            brain, genetics = gather_features(brain, genetics)
            labels = gather_tensor(labels) if labels is not None else None
            mask = gather_tensor(mask) if mask is not None else None
        if labels is None:
            labels = torch.arange(brain.shape[0], device=brain.device)
        if mask is not None:
            brain, genetics, labels = brain[mask], genetics[mask], labels[mask]
        return brain.float(), genetics.float(), labels.long()


class SupConPairLoss(_PMLPairLoss):
    """alpha * SupCon(brain, ref=genetics) + (1 - alpha) * SupCon(genetics, ref=brain), labels = subject ids."""

    def __init__(self, temperature: float = 0.07, alpha: float = 0.5) -> None:
        super().__init__(alpha)
        self.loss = SupConLoss(temperature=temperature)

    def forward(self, brain: torch.Tensor, genetics: torch.Tensor, logit_scale: torch.Tensor | None = None,
                logit_bias: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, g, y = self._global_rows(brain, genetics, labels, mask, need_labels=False)
        if b.shape[0] == 0:
            return (brain.sum() + genetics.sum()) * 0.0
        bg = cross_modal(self.loss, b, y, g, y)
        gb = cross_modal(self.loss, g, y, b, y)
        return self.alpha * bg + (1.0 - self.alpha) * gb


class CrossBatchMemoryPairLoss(_PMLPairLoss):
    """NTXent against a queue of past keys: brain anchors vs queued genetics rows and the reverse."""

    def __init__(self, embed_dim: int, temperature: float = 0.07, memory_size: int = 1024,
                 alpha: float = 0.5) -> None:
        super().__init__(alpha)
        self.brain_to_genetics = CrossBatchMemory(NTXentLoss(temperature=temperature), embed_dim, memory_size)
        self.genetics_to_brain = CrossBatchMemory(NTXentLoss(temperature=temperature), embed_dim, memory_size)

    @staticmethod
    def _queued(memory: CrossBatchMemory, anchors, keys, labels) -> torch.Tensor:
        enqueue = torch.cat([torch.zeros_like(labels, dtype=torch.bool), torch.ones_like(labels, dtype=torch.bool)])
        return memory(torch.cat([anchors, keys]), torch.cat([labels, labels]), enqueue_mask=enqueue)

    def forward(self, brain: torch.Tensor, genetics: torch.Tensor, logit_scale: torch.Tensor | None = None,
                logit_bias: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, g, y = self._global_rows(brain, genetics, labels, mask, need_labels=True)
        if b.shape[0] == 0:
            return (brain.sum() + genetics.sum()) * 0.0
        bg = self._queued(self.brain_to_genetics, b, g, y)
        gb = self._queued(self.genetics_to_brain, g, b, y)
        return self.alpha * bg + (1.0 - self.alpha) * gb

    def get_extra_state(self) -> dict[str, Any]:
        """Queue positions (the queued rows themselves are buffers), so a resumed run continues the same queue."""
        return {
            name: {"queue_idx": int(m.queue_idx), "has_been_filled": bool(m.has_been_filled)}
            for name, m in (("brain_to_genetics", self.brain_to_genetics), ("genetics_to_brain", self.genetics_to_brain))
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        for name, values in state.items():
            memory = getattr(self, name)
            memory.queue_idx = int(values["queue_idx"])
            memory.has_been_filled = bool(values["has_been_filled"])


class SafeDistributedLossWrapper(DistributedLossWrapper):
    """DistributedLossWrapper that refuses efficient=True with ref_emb and clones shared ref labels.

    With efficient=True PML removes the (i, i) pairs of the local block as self-comparisons; with ref_emb those
    are exactly the cross-modal positives, so the loss would silently train on negatives only.
    """

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None, enqueue_mask=None):
        if self.efficient and ref_emb is not None:
            raise AlignmentInputError(
                "DistributedLossWrapper(efficient=True) with ref_emb removes the cross-modal positive pairs "
                "(they look like self-comparisons); use efficient=False or the native ClipLoss (local_loss=True)"
            )
        if ref_emb is not None and ref_labels is labels and labels is not None:
            ref_labels = labels.clone()
        return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels, enqueue_mask)
