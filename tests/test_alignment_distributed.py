"""Two gloo processes with DDP give the loss and every gradient of one process on the global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alignment import AlignmentInputError, AlignmentLoss, DualEncoder, HeadConfig, LossConfig, epoch_batches

WORLD = 2
GLOBAL_BATCH = 8
# (name, loss config, use subject labels, use a missing-modality mask)
CASES = [
    ("clip_local", LossConfig(kind="clip", local_loss=True), False, False),
    ("clip_full", LossConfig(kind="clip", local_loss=False, alpha=0.75), False, False),
    ("clip_labels_mask", LossConfig(kind="clip", local_loss=True), True, True),
    ("siglip_local", LossConfig(kind="siglip", local_loss=True), False, False),
    ("siglip_full_mask", LossConfig(kind="siglip", local_loss=False), True, True),
    ("supcon", LossConfig(kind="supcon", temperature=0.1), True, False),
]


def _inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    return {
        "brain": torch.randn(GLOBAL_BATCH, 6, generator=gen),
        "dna": torch.randn(GLOBAL_BATCH, 5, generator=gen),
        "geno": torch.randn(GLOBAL_BATCH, 4, generator=gen),
        "labels": torch.tensor([0, 0, 1, 2, 3, 3, 4, 5]),  # subjects 0 and 3 span both ranks' rows
        "mask": torch.tensor([True, True, False, True, True, True, False, True]),
    }


def _model(cfg: LossConfig) -> DualEncoder:
    torch.manual_seed(7)
    model = DualEncoder(6, {"dna": 5, "geno": 4}, HeadConfig(hidden_dim=12, out_dim=8, dropout=0.0),
                        init_logit_scale=cfg.logit_scale_init(), init_logit_bias=cfg.logit_bias_init())
    model.logit_scale.requires_grad_(cfg.learnable_temperature)  # PML losses: fixed temperature (as the driver)
    return model


def _step(model, loss_fn, x: dict[str, torch.Tensor], rows: slice, labels: bool, mask: bool) -> torch.Tensor:
    out = model(x["brain"][rows], {"dna": x["dna"][rows], "geno": x["geno"][rows]})
    masks = {"geno": x["mask"][rows]} if mask else None
    return loss_fn(out, x["labels"][rows] if labels else None, masks).loss


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from alignment import all_reduce_mean

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    x = _inputs()
    per_rank = GLOBAL_BATCH // WORLD
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    results = {}
    for name, cfg, labels, mask in CASES:
        model = _model(cfg)
        ddp = DistributedDataParallel(model)
        loss_fn = AlignmentLoss(cfg, ["dna", "geno"], embed_dim=8)
        loss = _step(ddp, loss_fn, x, rows, labels, mask)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results[name] = {"loss": all_reduce_mean(loss), **grads}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()  # neither rank tears gloo down while the other still has traffic in flight
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_on_the_global_batch(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    x = _inputs()
    for name, cfg, labels, mask in CASES:
        model = _model(cfg)
        loss_fn = AlignmentLoss(cfg, ["dna", "geno"], embed_dim=8, rank=0, world_size=1)
        loss = _step(model, loss_fn, x, slice(None), labels, mask)
        loss.backward()
        # fp32 rounding bound, not one CPU's: both runs add the same GLOBAL_BATCH terms in another order, with
        # logits up to the logit scale, so they differ by at most ~ GLOBAL_BATCH * scale * eps of the value's size
        bound = GLOBAL_BATCH * model.logit_scale.exp().item() * torch.finfo(torch.float32).eps
        for r in range(WORLD):
            got = ranks[r][name]
            assert got["loss"].item() == pytest.approx(loss.item(), abs=bound * max(1.0, abs(loss.item()))), (name, r)
            grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
            assert set(got) - {"loss"} == set(grads), (name, r)
            for key, grad in grads.items():
                tol = bound * max(1.0, grad.abs().max().item())
                assert torch.allclose(got[key], grad, atol=tol, rtol=0), (name, r, key)
        assert model.logit_scale.grad is not None or not cfg.learnable_temperature


def test_epoch_batches_shard_evenly_and_drop_the_incomplete_global_batch() -> None:
    n, batch = 11, 4
    per_rank = [epoch_batches(n, batch, seed=3, epoch=0, world_size=2, rank=r) for r in range(2)]
    (b0, dropped0), (b1, dropped1) = per_rank
    assert dropped0 == dropped1 == 3 and len(b0) == len(b1) == 2
    assert all(len(x) == 2 for x in b0 + b1)
    seen = torch.cat(b0 + b1)
    assert len(set(seen.tolist())) == 8  # disjoint across ranks and steps
    again, _ = epoch_batches(n, batch, seed=3, epoch=0, world_size=2, rank=0)
    assert all(torch.equal(a, b) for a, b in zip(b0, again))  # depends only on seed + epoch
    other, _ = epoch_batches(n, batch, seed=3, epoch=1, world_size=2, rank=0)
    assert not all(torch.equal(a, b) for a, b in zip(b0, other))
    single, _ = epoch_batches(n, batch, seed=3, epoch=0)
    assert torch.equal(single[0], torch.cat([b0[0], b1[0]]))  # global batch = concatenation of the ranks' rows
    with pytest.raises(AlignmentInputError, match="multiple of the world size"):
        epoch_batches(n, 5, seed=0, epoch=0, world_size=2)
    with pytest.raises(AlignmentInputError, match="larger than the 11 training samples"):
        epoch_batches(n, 12, seed=0, epoch=0)


def test_gather_is_identity_in_one_process() -> None:
    from alignment import gather_features

    a = F.normalize(torch.randn(3, 4), dim=-1)
    assert gather_features(a)[0] is a
