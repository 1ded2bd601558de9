"""Process-group helpers shared by every stage (training, embedding): join/leave torchrun, collectives, shards.

Lives below `brainmm.train` and `brainmm.embed` so that neither imports the other for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from alignment.distributed import DistInfo, init_distributed, resolve_device

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "distributed",
    "gather_objects",
    "init_distributed",
    "resolve_device",
    "shard_range",
    "teardown_distributed",
]


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[DistInfo]:
    """Join the torchrun process group (gloo on CPU, NCCL on GPU) for the block; leave it if this call joined."""
    joined = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(device)
    finished = False
    try:
        yield info
        finished = True
    finally:
        if joined and info.world_size > 1:
            if finished:  # leave together: a gloo rank whose peer has already torn down can abort at exit
                barrier()
            teardown_distributed()


def teardown_distributed() -> None:
    """Destroy the default process group when there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (no-op in a 1-process job)."""
    if _world() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank."""
    if _world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank."""
    if _world() == 1:
        return [obj]
    out: list[Any] = [None] * _world()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over ranks (a copy; identity in a 1-process job)."""
    t = t.detach().clone()
    if _world() > 1:
        dist.all_reduce(t)
    return t


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s contiguous, disjoint share of `range(n)` (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))
