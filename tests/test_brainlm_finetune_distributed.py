"""A BrainLM tower (each architecture) + heads under DDP with 2 gloo ranks equals one process on the global batches.

Towers and heads run in float64; the CLIP loss itself computes in float32 (`alignment.losses` casts the features),
so the two runs differ by fp32 rounding of the loss terms: measured <= 1 fp32 rounding (1.2e-7) of the largest
compared value; the bound is 16 roundings, capped at the issue's 1e-5. Compared: the loss of every step, every
gradient of the first step, every trainable weight after the last step, on both ranks. Dropout: every
rank seeds torch's generator with `dropout_seed(seed, rank)` once; with dropout active the reference reproduces
that by embedding each rank's rows with that rank's generator stream (the only thing that differs from one process).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from alignment import AlignmentLoss, AlignmentOutput, DualEncoder, HeadConfig, LossConfig
from encoders.brainlm import BrainLMForPretraining, BrainLMViTForPretraining
from encoders.brainlm.lora import LoraSettings
from encoders.brainlm.testing import random_brainlm_inputs, tiny_brainlm_config, tiny_vit_config
from encoders.brainlm.tower import BrainLMTower, dropout_seed

pytestmark = pytest.mark.slow  # end to end (the fast lane, -m 'not slow', leaves it out)

WORLD, GLOBAL_BATCH, STEPS, SEED = 2, 4, 2, 11
EPS32 = torch.finfo(torch.float32).eps
# (name, architecture, trainable, last_n, LoRA settings, gradient checkpointing, dropout)
ROUNDINGS = 16  # allowed fp32 roundings of the largest compared value (the CLIP loss runs in float32)
CASES = [
    ("nys_last_n", "brainlm_mae", "last_n", 1, None, False, 0.0),
    ("nys_lora_ckpt", "brainlm_mae", "lora", 0, LoraSettings(rank=2), True, 0.0),
    ("vit_last_n_ckpt", "vit_mae", "last_n", 1, None, True, 0.0),
    ("vit_lora", "vit_mae", "lora", 0, LoraSettings(rank=2, target_modules=["q_proj", "v_proj"]), False, 0.0),
    ("vit_lora_dropout", "vit_mae", "lora", 0, LoraSettings(rank=2, dropout=0.2), False, 0.2),
]


def _data(arch: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(windows [STEPS * GLOBAL_BATCH, V, T], genetics inputs [N, 5], coords [V, 3]), float64."""
    g = torch.Generator().manual_seed(3)
    n = STEPS * GLOBAL_BATCH
    if arch == "brainlm_mae":
        signal, xyz = random_brainlm_inputs(tiny_brainlm_config(), n, seed=3)
        coords = xyz[0]
    else:
        signal = torch.randn(n, 424, 200, generator=g)
        coords = torch.round(torch.randn(424, 3, generator=g) * 30)
    return signal.double(), torch.randn(n, 5, generator=g, dtype=torch.float64), coords


def _model(arch: str, trainable: str, last_n: int, lora: LoraSettings | None, ckpt: bool,
           dropout: float) -> DualEncoder:
    torch.manual_seed(7)
    encoder = (BrainLMForPretraining(tiny_brainlm_config()) if arch == "brainlm_mae" else
               BrainLMViTForPretraining(tiny_vit_config(hidden_dropout_prob=dropout,
                                                        attention_probs_dropout_prob=dropout)))
    tower = BrainLMTower(encoder, _data(arch)[2], pooling="mean")
    tower.set_trainable(trainable, last_n, lora)
    tower.gradient_checkpointing(ckpt)
    head = HeadConfig(kind="linear", out_dim=8)
    return DualEncoder(tower.out_dim, {"dna": 5}, head, brain_tower=tower).double().train()


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n.removeprefix("module."): p for n, p in model.named_parameters() if p.requires_grad}


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from alignment import all_reduce_mean

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    per_rank = GLOBAL_BATCH // WORLD
    results = {}
    for name, arch, *settings in CASES:
        signal, genetics, _ = _data(arch)
        model = _model(arch, *settings)
        ddp = DistributedDataParallel(model)
        ddp.train()
        tower = model.brain_tower
        eval_units = [not u.training for u in tower.units()]
        loss_fn = AlignmentLoss(LossConfig(kind="clip", local_loss=True), ["dna"], embed_dim=8)
        opt = _optimizer(model)
        torch.manual_seed(dropout_seed(SEED, rank))
        losses, grads = [], {}
        for step in range(STEPS):
            rows = slice(step * GLOBAL_BATCH + rank * per_rank, step * GLOBAL_BATCH + (rank + 1) * per_rank)
            loss = loss_fn(ddp(signal[rows], {"dna": genetics[rows]})).loss
            opt.zero_grad()
            loss.backward()
            if step == 0:
                grads = {k: p.grad.clone() for k, p in _trainable(model).items()}
            opt.step()
            losses.append(all_reduce_mean(loss))
        results[name] = {"losses": torch.stack(losses), "eval_units": torch.tensor(eval_units),
                         **{f"grad.{k}": v for k, v in grads.items()},
                         **{f"final.{k}": p.detach().clone() for k, p in _trainable(model).items()}}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()  # neither rank tears gloo down while the other still has traffic in flight
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(name: str, arch: str, *settings) -> dict[str, torch.Tensor]:
    """One process over the same global batches (per-rank generator streams only when dropout is on)."""
    signal, genetics, _ = _data(arch)
    model = _model(arch, *settings)
    loss_fn = AlignmentLoss(LossConfig(kind="clip", local_loss=True), ["dna"], embed_dim=8, rank=0, world_size=1)
    opt = _optimizer(model)
    per_rank = GLOBAL_BATCH // WORLD
    streams = []
    for r in range(WORLD):
        torch.manual_seed(dropout_seed(SEED, r))
        streams.append(torch.get_rng_state())
    losses, grads = [], {}
    for step in range(STEPS):
        rows = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
        if settings[-1] == 0:  # no dropout: the plain 1-process step on the global batch
            out = model(signal[rows], {"dna": genetics[rows]})
        else:
            brain = []
            for r in range(WORLD):
                torch.set_rng_state(streams[r])
                start = step * GLOBAL_BATCH + r * per_rank
                brain.append(model.encode_brain(signal[start:start + per_rank]))
                streams[r] = torch.get_rng_state()
            out = AlignmentOutput(torch.cat(brain), {"dna": model.encode_genetics("dna", genetics[rows])},
                                  model.logit_scale.exp())
        loss = loss_fn(out).loss
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads = {k: p.grad.clone() for k, p in _trainable(model).items()}
        opt.step()
        losses.append(loss.detach())
    return {"losses": torch.stack(losses), **{f"grad.{k}": v for k, v in grads.items()},
            **{f"final.{k}": p.detach().clone() for k, p in _trainable(model).items()}}


def test_two_gloo_ranks_train_a_brainlm_tower_like_one_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name, arch, trainable, *rest in CASES:
        ref = _reference(name, arch, trainable, *rest)
        assert any(k.startswith("grad.brain_tower.") for k in ref), name  # the tower itself trains
        for r in range(WORLD):
            got = ranks[r][name]
            frozen_units = got.pop("eval_units")
            assert frozen_units[0] and (trainable != "last_n" or frozen_units[1]), (name, "frozen units in eval")
            assert set(got) == set(ref), name
            scale = max(v.abs().max().item() for v in ref.values())
            worst = max(((got[k] - v).abs().max().item(), k) for k, v in ref.items())
            assert worst[0] <= min(ROUNDINGS * EPS32 * scale, 1e-5), (name, r, worst)
        moved = [k for k in ref if k.startswith("final.brain_tower.")]
        assert moved, name
