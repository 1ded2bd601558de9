"""`brainmm pretrain`: BrainLM masked-autoencoder pretraining on an ingested fMRI dataset.

From scratch (the `model.arch` section) or from a checkpoint folder (`model.init_from`, e.g. an original BrainLM
checkpoint). AdamW with the original betas/eps/weight decay, lr = base_lr x global batch / 256, linear warmup +
cosine decay, gradient clipping, optional gradient checkpointing, bf16 autocast on GPU, torchrun (DDP) with
sharded windows. Evaluation on the val split during training and on the test split at the end: masked MSE/MAE,
R^2 (unclipped and clipped at 0 as the original), Pearson r, and two baselines on the same masked timepoints.
Run folder: config.yaml, run.json, checkpoints/, model/ (Hugging Face folder), metrics.json, brainmm.log. MLflow
(through brainmm.tracking): params, step metrics, the reconstruction figure and the model folder.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from alignment.optim import param_groups
from brainmm.config import dump_yaml, save_config, to_dict
from brainmm.distributed import DistInfo, all_reduce_sum, barrier, distributed, gather_objects
from brainmm.errors import BrainmmError
from brainmm.train.common import check_run_dir, check_tracking, tracked_run, warmup_cosine
from brainmm.train.pretrain_config import (
    PretrainConfig,
    PretrainModelConfig,
    PretrainTrainConfig,
)
from brainmm.train.pretrain_eval import evaluate, example_window, reconstruction_figure
from brainmm.train.runner import LoopRunner
from encoders.precision import autocast, resolve_precision
from encoders.weights import quiet_transformers

LOG = logging.getLogger("brainmm.pretrain")
REFERENCE_BATCH = 256  # lr = base_lr * global batch / 256, as the original train.py
MEAN_FIT_MAX_RECORDINGS = 1000  # training recordings (evenly spaced) used for the per-parcel mean baseline

# ------------------------------------------------------------------------------------------------ model


def model_config(cfg: PretrainModelConfig, num_parcels: int, num_timepoints: int):
    """The BrainLMConfig to train: the checkpoint's (`init_from`) or `arch` (null sizes from the dataset)."""
    from encoders.brainlm import BrainLMConfig
    from encoders.brainlm.checkpoint import check_checkpoint_folder

    if cfg.init_from:
        check_checkpoint_folder(Path(cfg.init_from).expanduser(), "brainlm_mae")
        config = BrainLMConfig.from_pretrained(Path(cfg.init_from).expanduser(), local_files_only=True)
    else:
        arch = to_dict(cfg.arch)
        arch.pop("xyz_init_scale")
        arch["num_brain_voxels"] = arch["num_brain_voxels"] or num_parcels
        arch["num_timepoints_per_voxel"] = arch["num_timepoints_per_voxel"] or num_timepoints
        config = BrainLMConfig(**arch)
    config.mask_ratio = cfg.mask_ratio  # applied in both cases, as the original train.py does
    if config.num_timepoints_per_voxel % config.timepoint_patching_size:
        raise BrainmmError(
            f"pretrain model: num_timepoints_per_voxel {config.num_timepoints_per_voxel} is not a multiple of "
            f"timepoint_patching_size {config.timepoint_patching_size}"
        )
    return config


def check_model_budget(config) -> int:
    """Refuse a BrainLM of `config` whose training state (weights, gradients, two AdamW moments) cannot fit."""
    from brainmm.memory import check_param_budget
    from encoders.brainlm import BrainLMForPretraining

    with torch.device("meta"):  # shapes only: nothing is allocated
        n = sum(p.numel() for p in BrainLMForPretraining(config).parameters())
    return check_param_budget(n, f"pretrain model (model.arch: hidden_size {config.hidden_size}, num_hidden_layers "
                                 f"{config.num_hidden_layers}, intermediate_size {config.intermediate_size})", copies=4)


def build_model(cfg: PretrainModelConfig, config):
    """A fresh `BrainLMForPretraining` of `config`, or the checkpoint `cfg.init_from` with `config`'s mask ratio."""
    from encoders.brainlm import BrainLMForPretraining

    if cfg.init_from:
        model = BrainLMForPretraining.from_pretrained(Path(cfg.init_from).expanduser())
        model.config.mask_ratio = config.mask_ratio
    else:
        model = BrainLMForPretraining(config)
        with torch.no_grad():
            model.vit.embeddings.xyz_embedding_projection.weight.mul_(cfg.arch.xyz_init_scale)
            model.decoder.decoder_xyz_projection.weight.mul_(cfg.arch.xyz_init_scale)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


# ------------------------------------------------------------------------------------------------- data


class TrainWindows(Dataset):
    """`repeats` random windows per recording for one epoch: item r * N + j is recording j's r-th window.

    Window r of epoch e is the base dataset's window of virtual epoch e * repeats + r, so every (epoch, item)
    is fixed by the seed alone (the same on every rank, after a resume, in any DataLoader worker).
    """

    def __init__(self, windows: Dataset, repeats: int, epoch: int) -> None:
        self.windows, self.repeats, self.epoch = windows, int(repeats), int(epoch)

    def __len__(self) -> int:
        return len(self.windows) * self.repeats

    def __getitem__(self, index: int) -> dict[str, Any]:
        r, j = divmod(int(index), len(self.windows))
        self.windows.set_epoch(self.epoch * self.repeats + r)
        return self.windows[j]


def epoch_micro_batches(n: int, batch_size: int, micro: int, seed: int, epoch: int, info: DistInfo) -> list[list[list[int]]]:
    """This rank's item indices per step of one epoch, each step split into micro-batches (drop_last)."""
    from alignment.distributed import epoch_batches

    batches, _ = epoch_batches(n, batch_size, seed, epoch, info.world_size, info.rank)
    return [[c.tolist() for c in b.split(micro)] for b in batches]


def parcel_means(ds, split: str = "train") -> torch.Tensor:
    """Per-parcel mean over a split's recordings (at most 1000, evenly spaced): the mean baseline, [V] float32."""
    ids = ds.recording_ids(split)
    if len(ids) > MEAN_FIT_MAX_RECORDINGS:
        ids = [ids[i] for i in np.linspace(0, len(ids) - 1, MEAN_FIT_MAX_RECORDINGS).round().astype(int)]
    total, count = np.zeros(ds.num_parcels), 0
    for rid in ids:
        signal = ds.signal(rid)
        total += signal.sum(axis=1, dtype=np.float64)
        count += signal.shape[1]
    return torch.from_numpy(total / max(count, 1)).float()


# ------------------------------------------------------------------------------------------------ driver


@dataclass
class PretrainResult:
    """What `run_pretrain` produced (metrics and model_dir only once training has finished)."""

    run_dir: Path
    run_id: str | None
    step: int
    finished: bool
    metrics: dict[str, Any]
    model_dir: Path | None


@dataclass
class _Progress:
    step: int = 0
    epoch: int = 0
    batch: int = 0  # next step index inside `epoch`
    loss_sum: float = 0.0  # train loss since the last log
    loss_count: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def _eval_windows(ds, split: str, num_timepoints: int, max_windows: int | None):
    """Tiled windows of a split (the first `max_windows`), or None when the split has no recordings."""
    from torch.utils.data import Subset

    if not ds.recording_ids(split):
        LOG.warning("pretrain: the %s split has no recordings; it is not evaluated", split)
        return None
    windows = ds.windows(split, num_timepoints, mode="tiled")
    return Subset(windows, range(min(max_windows, len(windows)))) if max_windows else windows


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "signal_vectors": torch.stack([it["signal_vectors"] for it in items]),
        "xyz_vectors": torch.stack([it["xyz_vectors"] for it in items]),
        "recording_id": [it["recording_id"] for it in items],
        "start": [int(it["start"]) for it in items],
    }


def run_pretrain(cfg: PretrainConfig, resume: bool = False, stop_at_step: int | None = None) -> PretrainResult:
    """Train (or with `resume` continue) a BrainLM MAE; `stop_at_step` checkpoints and returns early (time-boxed jobs)."""
    from brainmm.io import main_process_lock

    with distributed(cfg.train.device) as info, main_process_lock(cfg.output_dir, info.is_main):
        return _run(cfg, resume, stop_at_step, info)


def _run(cfg: PretrainConfig, resume: bool, stop_at_step: int | None, info: DistInfo) -> PretrainResult:
    from brainmm.data.fmri import FmriDataset, check_compatible
    from brainmm.runtime import log_to_file, progress, seed_everything

    t = cfg.train
    if info.is_main:
        check_tracking(cfg.tracking)
    if not cfg.data.dataset:
        raise BrainmmError("pretrain config field 'data.dataset': expected an ingested fMRI dataset folder, got nothing")
    dataset = Path(cfg.data.dataset).expanduser()
    if not dataset.is_dir():
        raise BrainmmError(f"pretrain config field 'data.dataset': {dataset} is not a folder "
                           "(expected a dataset made by `brainmm fmri ingest`)")
    ds = FmriDataset.load(dataset)
    run_dir = Path(cfg.output_dir)
    check_run_dir(run_dir, cfg, resume, "pretrain")
    mc = model_config(cfg.model, ds.num_parcels, ds.num_timepoints)
    if not cfg.model.init_from:  # a checkpoint's sizes are checked against its header and the memory when it loads
        check_model_budget(mc)
    check_compatible(ds, mc.num_brain_voxels, mc.num_timepoints_per_voxel)
    num_t = mc.num_timepoints_per_voxel

    if t.batch_size % info.world_size:
        raise BrainmmError(f"pretrain config field 'train.batch_size': {t.batch_size} is not divisible by the "
                           f"{info.world_size} processes (it is the global batch)")
    per_rank = t.batch_size // info.world_size
    micro = t.micro_batch_size or per_rank
    if per_rank % micro:
        raise BrainmmError(f"pretrain config field 'train.micro_batch_size': {micro} must divide the per-process "
                           f"batch {per_rank} (= batch_size {t.batch_size} / {info.world_size} processes)")
    accum = per_rank // micro
    train_windows = ds.windows("train", num_t, mode="random", seed=t.seed)
    n_items = len(train_windows) * cfg.data.windows_per_recording
    if n_items < t.batch_size:
        raise BrainmmError(
            f"pretrain config field 'train.batch_size': {t.batch_size} is more than the {n_items} training windows "
            f"per epoch ({len(train_windows)} recordings x data.windows_per_recording "
            f"{cfg.data.windows_per_recording}); lower it or raise data.windows_per_recording"
        )
    lr = t.base_lr * t.batch_size / REFERENCE_BATCH
    warmup_steps = math.ceil(t.warmup_ratio * t.max_steps)

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        log_to_file(run_dir)
        save_config(cfg, run_dir / "config.yaml")
    barrier()
    mean = parcel_means(ds, "train")
    val = _eval_windows(ds, "val", num_t, cfg.eval.max_windows)
    test = _eval_windows(ds, "test", num_t, cfg.eval.max_windows)

    seed_everything(t.seed)
    core = build_model(cfg.model, mc).to(info.device)
    model: nn.Module = core
    if info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            core, device_ids=[info.device] if info.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups(core, lr, t.weight_decay), lr=lr, betas=tuple(t.betas), eps=t.eps)
    scheduler = warmup_cosine(optimizer, warmup_steps, t.max_steps, t.min_lr_ratio)
    runner = LoopRunner("pretrain", run_dir / "checkpoints", info, core, optimizer, scheduler, _Progress(),
                        log_every=t.log_every, checkpoint_every=t.checkpoint_every, config=dump_yaml(cfg),
                        hint="lower train.base_lr or check these recordings", keep=t.keep_checkpoints)
    if resume:
        runner.resume(reseed=lambda step: seed_everything(t.seed + 7919 * step + info.rank))
    elif info.world_size > 1:
        seed_everything(t.seed + info.rank)  # distinct masks/dropout per rank; DDP synced the weights
    prog = runner.prog

    def run_eval(split: str, windows) -> dict[str, float]:
        metrics = evaluate(core, windows, mean, cfg.eval, info, t.precision)
        if info.is_main:
            LOG.info("pretrain: step %d %s masked_mse %.4f (mean baseline %.4f, interpolation %.4f), r2 %.4f",
                     prog.step, split, metrics["masked_mse"], metrics["baseline_mean_mse"],
                     metrics["baseline_interp_mse"], metrics["r2"])
        return metrics

    num_params = sum(p.numel() for p in core.parameters())
    tags = {"model": "brainlm_mae", "init_from": cfg.model.init_from or "scratch", "seed": str(t.seed)}
    with tracked_run(cfg.tracking, run_dir, "pretrain", resume, config=cfg, tags=tags, enabled=info.is_main) as run:
        if info.is_main and not resume:
            import mlflow

            mlflow.log_params({
                "pretrain.lr": lr, "pretrain.base_lr": t.base_lr, "pretrain.global_batch_size": t.batch_size,
                "pretrain.world_size": info.world_size, "pretrain.micro_batch_size": micro,
                "pretrain.grad_accum_steps": accum, "pretrain.warmup_steps": warmup_steps,
                "pretrain.num_parameters": num_params, "precision": resolve_precision(t.precision, info.device), "data.hash": ds.manifest["data_hash"][:16],
                **{f"data.{s}_recordings": len(ds.recording_ids(s)) for s in ("train", "val", "test")},
                **{f"brainlm.{k}": mc.to_dict()[k] for k in ("hidden_size", "num_hidden_layers",
                   "timepoint_patching_size", "num_brain_voxels", "num_timepoints_per_voxel")},
            })
            LOG.info("pretrain: %d parameters, lr %.3g (base_lr %.3g x global batch %d / %d), %d steps",
                     num_params, lr, t.base_lr, t.batch_size, REFERENCE_BATCH, t.max_steps)
        target = t.max_steps if stop_at_step is None else min(stop_at_step, t.max_steps)
        bar = progress(range(prog.step, target), desc="pretrain", total=target - prog.step, unit="step")
        bar_iter = iter(bar) if info.is_main else None
        epoch: dict[str, Any] = {}

        def start_epoch(number: int, first: int) -> int:
            steps = epoch_micro_batches(n_items, t.batch_size, micro, t.seed, number, info)
            epoch["batches"] = iter(DataLoader(
                TrainWindows(train_windows, cfg.data.windows_per_recording, number),
                batch_sampler=[m for s in steps[first:] for m in s], num_workers=cfg.data.num_workers,
                collate_fn=_collate, generator=torch.Generator(), pin_memory=info.device.type == "cuda",
            ))
            return len(steps)

        def step(b: int) -> float:
            lr_now = optimizer.param_groups[0]["lr"]
            loss = _train_step(model, core, optimizer, [next(epoch["batches"]) for _ in range(accum)], t, info, runner)
            scheduler.step()
            prog.loss_sum += loss
            prog.loss_count += 1
            if bar_iter is not None:
                next(bar_iter, None)
            return lr_now

        def log(lr_now: float) -> None:
            local = torch.tensor(prog.loss_sum / prog.loss_count, dtype=torch.float64, device=info.device)
            mean_loss = float(all_reduce_sum(local)) / info.world_size
            run.log({"pretrain/train/loss": mean_loss, "pretrain/lr": lr_now, "pretrain/epoch": float(prog.epoch)},
                    prog.step)
            prog.loss_sum, prog.loss_count = 0.0, 0

        def after_step(_: float) -> None:
            if cfg.eval.every and prog.step % cfg.eval.every == 0 and val is not None:
                metrics = run_eval("val", val)
                prog.history.append({"step": float(prog.step), **{f"val/{k}": v for k, v in metrics.items()}})
                run.log({f"pretrain/val/{k}": v for k, v in metrics.items()}, prog.step)

        runner.run(start_epoch, step, log=log, after_step=after_step, max_steps=target)
        if prog.step < t.max_steps:
            LOG.info("pretrain: stopped at step %d of %d; continue with --resume", prog.step, t.max_steps)
            return PretrainResult(run_dir, run.run_id, prog.step, False, {}, None)
        result = _finish(cfg, core, ds, val, test, run, prog, run_eval, lr, info)
    return result


def _train_step(model: nn.Module, core: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list[dict],
                t: PretrainTrainConfig, info: DistInfo, runner: LoopRunner) -> float:
    """One optimizer step over the micro-batches (gradient accumulation); returns the mean loss of this rank."""
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=info.device)
    for i, batch in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1 or info.world_size == 1
        ctx = contextlib.nullcontext() if sync else model.no_sync()
        with ctx:
            with autocast(t.precision, info.device):
                out = model(signal_vectors=batch["signal_vectors"].to(info.device, non_blocking=True),
                            xyz_vectors=batch["xyz_vectors"].to(info.device, non_blocking=True), loss_only=True)
            loss = out.loss.float()
            runner.check_finite(loss, "loss", _recordings(batch))
            (loss / len(micro_batches)).backward()
        total += loss.detach()
    norm = torch.nn.utils.clip_grad_norm_(core.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"))
    runner.check_finite(norm, "gradient norm", _recordings(micro_batches[-1]))
    optimizer.step()
    return float(total) / len(micro_batches)


def _recordings(batch: dict) -> Callable[[], str]:
    """The part of a non-finite error that names the recordings of every rank's batch (a collective)."""

    def detail() -> str:
        ids = sorted({r for ids in gather_objects(list(batch["recording_id"])) for r in ids})
        return f"recording ids in the batch: {ids[:20]}"

    return detail


def _finish(cfg: PretrainConfig, core: nn.Module, ds, val, test, run, prog: _Progress, run_eval, lr: float,
            info: DistInfo) -> PretrainResult:
    """Final val (unless just done) and test evaluation, figure, model folder, metrics.json, MLflow artifacts."""
    from brainmm.data.fmri.provenance import PRETRAINING_FILE, pretraining_record
    from brainmm.io import atomic_dir, atomic_write_json

    run_dir = Path(cfg.output_dir)
    final: dict[str, Any] = {"steps": prog.step, "epochs": prog.epoch, "lr": lr, "base_lr": cfg.train.base_lr,
                             "global_batch_size": cfg.train.batch_size, "history": prog.history}
    for split, windows in (("val", val), ("test", test)):
        if windows is None:
            continue
        last = prog.history[-1] if prog.history else {}
        if split == "val" and last.get("step") == float(prog.step):
            metrics = {k[len("val/"):]: v for k, v in last.items() if k.startswith("val/")}
        else:
            metrics = run_eval(split, windows)
        final[split] = metrics
        run.log({f"pretrain/{split}/{k}": v for k, v in metrics.items()}, prog.step)
    model_dir = run_dir / "model"
    if info.is_main:
        with atomic_dir(model_dir, overwrite=True) as tmp, quiet_transformers():
            core.save_pretrained(tmp)
            atomic_write_json(tmp / PRETRAINING_FILE, pretraining_record(ds))  # checked by `brainmm embed`
        atomic_write_json(run_dir / "metrics.json", final)
        if run.run_id is not None:
            import mlflow

            if val is not None:
                import matplotlib.pyplot as plt

                example = example_window(core, val, cfg.eval, info.device, cfg.train.precision)
                fig = reconstruction_figure(example, cfg.eval.figure_parcels, ds.manifest.get("parcel_labels"), ds.tr)
                mlflow.log_figure(fig, "pretrain/reconstruction_val.png")
                plt.close(fig)
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
            mlflow.log_artifact(str(run_dir / "metrics.json"), artifact_path="pretrain")
        LOG.info("pretrain: wrote %s", run_dir)
    barrier()
    return PretrainResult(run_dir, run.run_id, prog.step, True, final, model_dir)
