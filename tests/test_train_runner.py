"""`brainmm.train.runner.LoopRunner` with a toy step function: log / checkpoint cadence, validation early stop,
the finite check's message, checkpoint keys, and (2 gloo ranks) resume giving each rank its own RNG stream and
the result of an uninterrupted run."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from brainmm.align.report import Progress  # a record with the fields early stopping uses
from brainmm.distributed import DistInfo
from brainmm.errors import BrainmmError
from brainmm.train.common import CheckpointDir, load_checkpoint
from brainmm.train.runner import LoopRunner

STEPS_PER_EPOCH = 4


def toy_run(folder: Path, info: DistInfo, *, resume: bool = False, crash_at: int = 0, nan_at: int = 0,
            scores: list[float] | None = None, reseeded: list[int] | None = None, **run: Any) -> dict[str, Any]:
    """Train a linear model on inputs plus noise from the global torch RNG (as dropout); gradients are averaged
    over the ranks. Returns the draws per step, the logged steps, the best-state calls and the final weights."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    if not resume:  # each rank's own stream; a resumed run must get it from the checkpoint alone
        torch.manual_seed(100 + info.rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    runner = LoopRunner("toy", folder, info, model, optimizer, scheduler, Progress(), log_every=2,
                        checkpoint_every=run.pop("checkpoint_every", 3), config="toy: 1", hint="lower toy.lr",
                        keep=100)
    if resume:
        runner.resume(reseed=lambda step: (reseeded if reseeded is not None else []).append(step))
    out: dict[str, Any] = {"draws": {}, "logged": [], "best": []}
    calls = {"n": 0}

    def step(b: int) -> float:
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise RuntimeError("simulated crash")
        noise = torch.rand(2, 3)
        loss = model(noise + b).pow(2).mean() * (float("nan") if runner.prog.step + 1 == nan_at else 1.0)
        runner.check_finite(loss, "loss", lambda: f"items {[b, b + 1]}")
        optimizer.zero_grad()
        loss.backward()
        if info.world_size > 1:
            for p in model.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad /= info.world_size
        optimizer.step()
        scheduler.step()
        out["draws"][runner.prog.step + 1] = noise
        return float(loss.detach())

    def validate() -> float:
        return scores[runner.prog.epoch]

    runner.run(lambda epoch, first: STEPS_PER_EPOCH, step, log=lambda loss: out["logged"].append(runner.prog.step),
               validate=validate if scores else None, on_best=lambda: out["best"].append(runner.prog.step),
               extra_state=lambda: {"extra": torch.tensor(7)}, **run)
    out["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
    out["prog"] = runner.prog
    return out


def names(folder: Path) -> list[int]:
    return [int(p.stem.split("-")[1]) for p in CheckpointDir(folder).paths()]


def test_step_cadence_checkpoints_and_keys(tmp_path: Path) -> None:
    out = toy_run(tmp_path / "c", DistInfo(), max_steps=7)
    assert out["logged"] == [2, 4, 6] and sorted(out["draws"]) == list(range(1, 8))
    assert names(tmp_path / "c") == [3, 6, 7]  # every 3 steps, and where the run stops
    assert (out["prog"].step, out["prog"].epoch, out["prog"].batch) == (7, 1, 3)
    ckpt = load_checkpoint(tmp_path / "c" / "step-000000006.pt")
    assert set(ckpt) == {"model", "optimizer", "scheduler", "rng", "progress", "config", "extra"}
    assert ckpt["progress"]["step"] == 6 and ckpt["progress"]["epoch"] == 1 and ckpt["progress"]["batch"] == 2
    assert len(ckpt["rng"]) == 1 and ckpt["config"] == "toy: 1" and int(ckpt["extra"]) == 7
    assert ckpt["scheduler"]["last_epoch"] == 6


def test_validation_tracks_the_best_epoch_and_stops_early(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="brainmm.train"):
        out = toy_run(tmp_path / "v", DistInfo(), scores=[0.5, 0.7, 0.6, 0.7, 0.9], max_epochs=10, patience=2)
    p = out["prog"]
    assert (p.step, p.epoch, p.best_step, p.best_epoch, p.best_score) == (16, 4, 8, 1, 0.7)
    assert p.stopped_early and p.done and p.bad_epochs == 2 and out["best"] == [4, 8]
    assert "toy: early stop after epoch 3 (no better val score for 2 epochs)" in caplog.text
    # mid-epoch every 3 steps; the one of an epoch's last step (12) after its validation; the last one (16)
    assert names(tmp_path / "v") == [3, 6, 9, 12, 15, 16]
    at_12 = load_checkpoint(tmp_path / "v" / "step-000000012.pt")["progress"]
    assert (at_12["epoch"], at_12["batch"], at_12["bad_epochs"], at_12["best_step"]) == (3, 0, 1, 8)
    out = toy_run(tmp_path / "w", DistInfo(), scores=[0.5, 0.7, 0.6, 0.7, 0.9], max_epochs=2)
    assert out["prog"].step == 8 and not out["prog"].stopped_early and names(tmp_path / "w")[-1] == 8


def test_a_non_finite_loss_names_step_items_checkpoint_and_fix(tmp_path: Path) -> None:
    with pytest.raises(BrainmmError, match=r"^toy: non-finite loss at step 5 \(epoch 1\); items \[0, 1\]; nothing "
                       r"was saved for this step \(the last checkpoint, if any, is .*step-000000004.pt\); "
                       r"lower toy.lr$"):
        toy_run(tmp_path / "n", DistInfo(), nan_at=5, max_steps=8, checkpoint_every=2)
    assert names(tmp_path / "n") == [2, 4]


def test_resume_equals_an_uninterrupted_run_and_reseeds_for_another_process_count(tmp_path: Path) -> None:
    straight = toy_run(tmp_path / "a", DistInfo(), max_steps=7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        toy_run(tmp_path / "b", DistInfo(), max_steps=7, crash_at=5)
    resumed = toy_run(tmp_path / "b", DistInfo(), max_steps=7, resume=True)
    assert sorted(resumed["draws"]) == [4, 5, 6, 7] and resumed["logged"] == [4, 6]
    assert all(torch.equal(resumed["draws"][s], straight["draws"][s]) for s in resumed["draws"])
    assert all(torch.equal(resumed["weights"][k], straight["weights"][k]) for k in straight["weights"])
    # a checkpoint of 2 processes resumed by 1: warned and reseeded from the step
    path = tmp_path / "b" / "step-000000007.pt"
    state = load_checkpoint(path)
    state["rng"] = state["rng"] * 2
    torch.save(state, path)
    reseeded: list[int] = []
    toy_run(tmp_path / "b", DistInfo(), max_steps=8, resume=True, reseeded=reseeded)
    assert reseeded == [7]


def _rank(rank: int, port: int, root: str) -> None:
    """One gloo rank: an uninterrupted run, a run crashed at step 5 (last checkpoint: 3), then its --resume."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    info, root_path = DistInfo(rank=rank, world_size=2), Path(root)
    straight = toy_run(root_path / "straight", info, max_steps=10)
    try:
        toy_run(root_path / "crashed", info, max_steps=10, crash_at=5)
    except RuntimeError as err:
        assert "simulated crash" in str(err)
    resumed = toy_run(root_path / "crashed", info, max_steps=10, resume=True)
    torch.save({"straight": straight["draws"], "resumed": resumed["draws"], "w_straight": straight["weights"],
                "w_resumed": resumed["weights"]}, root_path / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    # the results are on disk; skip the interpreter's teardown, where gloo's threads once aborted a rank (SIGABRT,
    # "terminate called without an active exception") after every assertion-relevant step had finished
    os._exit(0)


@pytest.mark.slow
def test_two_ranks_resume_each_with_its_own_rng_stream(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    rng = load_checkpoint(tmp_path / "crashed" / "step-000000003.pt")["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # one stream per rank
    for r in ranks:
        assert sorted(r["resumed"]) == list(range(4, 11))
        assert all(torch.equal(r["resumed"][s], r["straight"][s]) for s in r["resumed"])  # its own stream back
        assert all(torch.equal(r["w_resumed"][k], r["w_straight"][k]) for k in r["w_straight"])
    assert not torch.equal(ranks[0]["resumed"][4], ranks[1]["resumed"][4])  # the ranks draw differently
    assert all(torch.equal(ranks[0]["w_resumed"][k], ranks[1]["w_resumed"][k]) for k in ranks[0]["w_resumed"])
