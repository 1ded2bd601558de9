"""torchrun/DDP helpers: process-group setup, feature gathering with gradient, seeded per-epoch batch sharding.

Exactness rule (open_clip): features are all-gathered WITH gradient, so a loss computed from the gathered batch
back-propagates into every rank's rows; after DDP averages the parameter gradients they equal those of one process
on the concatenated global batch (tested with 2 gloo processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alignment.errors import AlignmentInputError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs."""
        return self.rank == 0


def world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA is available, else cpu; 'cuda' without a GPU is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AlignmentInputError(f"device {device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    if device != "cpu":
        raise AlignmentInputError(f"device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU); else a 1-process job."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def _gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    try:  # the non-deprecated functional collective (torch >= 2.6); backward sums the gradients of all ranks
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:  # older torch
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(t), dim=0)
    return all_gather_single_autograd(t.contiguous(), 0, dist.group.WORLD)


def gather_features(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All-gather [B, ...] tensors along dim 0 across ranks, keeping autograd (rank order; local rows included)."""
    _, world_size = world()
    if world_size == 1:
        return tensors
    return tuple(_gather_with_grad(t) for t in tensors)


def gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 without gradient (labels, masks)."""
    _, world_size = world()
    if world_size == 1:
        return t
    out = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a detached copy; identity when not distributed)."""
    _, world_size = world()
    t = t.detach().clone()
    if world_size > 1:
        dist.all_reduce(t)
        t /= world_size
    return t


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, world_size: int = 1, rank: int = 0
) -> tuple[list[torch.Tensor], int]:
    """This rank's sample indices per step for one epoch, and how many samples the epoch drops.

    The order is a permutation seeded by (seed, epoch) only, so a resumed run sees the same batches.
    `batch_size` is the GLOBAL batch: every step uses batch_size samples split evenly over the ranks (it must be
    divisible by world_size). The incomplete last global batch is dropped (drop_last), so every rank always has
    the same number of rows; the caller logs the dropped count.
    """
    if batch_size < 1 or batch_size % world_size:
        raise AlignmentInputError(
            f"batch_size {batch_size}: expected a positive multiple of the world size {world_size} "
            "(batch_size is the global batch, split evenly over the processes)"
        )
    if n < batch_size:
        raise AlignmentInputError(f"batch_size {batch_size}: larger than the {n} training samples; lower batch_size")
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    order = torch.randperm(n, generator=gen)
    steps = n // batch_size
    per_rank = batch_size // world_size
    batches = [order[s * batch_size + rank * per_rank : s * batch_size + (rank + 1) * per_rank] for s in range(steps)]
    return batches, n - steps * batch_size
