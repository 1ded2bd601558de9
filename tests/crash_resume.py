"""Runs of a training driver on 2 gloo ranks (torchrun-like processes), some killed at a training step as a crash
would, for the resume tests of `brainmm align` and `brainmm pretrain`."""

from __future__ import annotations

import importlib
import os
import socket
from typing import Any

import torch


def _rank(rank: int, port: int, module_name: str, run_name: str, runs: list[tuple[Any, bool, int]]) -> None:
    """One rank: join the gloo group, then `module.<run_name>(cfg, resume=resume)` for each run; a run with
    `crash_at` > 0 is killed (on every rank) at that call of the module's `_train_step`."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", BRAINMM_QUIET="1")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    module = importlib.import_module(module_name)
    original = module._train_step
    for cfg, resume, crash_at in runs:
        def step(*args, calls={"n": 0}, crash_at=crash_at, **kwargs):  # noqa: B006 (a fresh count per run)
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise RuntimeError("simulated crash")
            return original(*args, **kwargs)

        module._train_step = step
        try:
            getattr(module, run_name)(cfg, resume=resume)
        except RuntimeError as err:
            assert crash_at and "simulated crash" in str(err), err
        finally:
            module._train_step = original
    dist.barrier()
    dist.destroy_process_group()


def run_two_ranks(module_name: str, run_name: str, runs: list[tuple[Any, bool, int]]) -> None:
    """Run `runs` ((config, resume, crash_at) in order) on 2 spawned gloo ranks; see `_rank`."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, module_name, run_name, runs), nprocs=2, join=True)
