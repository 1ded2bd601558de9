"""`brainmm align`: align brain and genetics inputs in one shared space (projector heads, optionally towers).

Inputs: the brain side is a brain EmbeddingTable (keyed by subject, or by recording with a `subject_id` map in its
meta) or a brain tower of a registered kind, e.g. BrainLM on an fMRI dataset (`towers.brain`); one or more genetics EmbeddingTables keyed by subject
(one per modality; a dosage matrix can feed a genotype MLP tower, `towers.genetics.<modality>`); the split table.
Outputs in the run folder: config.yaml, heads.safetensors + heads.json, towers/<brain|modality>/ (trained towers),
metrics.json, model_card.md, brainmm.log, checkpoints/step-*.pt and the shared-space embeddings of every split under
embeddings/<split>/<brain|modality>.{safetensors,json}.
"""


from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignment import (
    AlignmentLoss,
    DistInfo,
    DualEncoder,
    all_reduce_mean,
    epoch_batches,
    warmup_cosine,
)
from brainmm.align.config import AlignConfig
from brainmm.align.confounds import input_adjuster
from brainmm.align.data import AlignData, first_rows, load_align_data
from brainmm.align.project import evaluate_split, tower_outputs
from brainmm.align.report import AlignResult, Progress, finalize, tower_summary
from brainmm.align.tower_models import tower_param_groups
from brainmm.align.towers import tower_kind
from brainmm.config import dump_yaml, save_config
from brainmm.distributed import distributed
from brainmm.errors import BrainmmError
from brainmm.train.common import check_run_dir, check_tracking, tracked_run
from brainmm.train.runner import LoopRunner
from encoders.brainlm.tower import dropout_seed
from encoders.precision import autocast, resolve_precision

LOG = logging.getLogger("brainmm.align")
CHECKPOINTS = "checkpoints"  # step-numbered checkpoints (CheckpointDir) in the run folder


def _batch_subjects(subjects: list[str], batch: torch.Tensor) -> Callable[[], str]:
    """The part of a non-finite error that names this step's batch (its subjects)."""
    return lambda: f"batch subject ids {[subjects[i] for i in batch.tolist()]}"


def _train_step(model: nn.Module, core: DualEncoder, loss_fn: AlignmentLoss, optimizer: torch.optim.Optimizer,
                scheduler: Any, batch: tuple, precision: str, grad_clip: float, info: DistInfo,
                check: Callable[[torch.Tensor, str], None]) -> tuple[torch.Tensor, dict]:
    """One optimiser step; returns the (rank-local) loss and per-modality terms; `check(value, what)` raises on a
    non-finite loss or gradient norm (before the optimiser steps: the weights stay finite)."""
    brain, genetics, masks, labels = batch
    with autocast(precision, info.device):
        out = model(brain, genetics)
    result = loss_fn(out, labels, masks)
    check(result.loss, "loss")
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    check(norm, "gradient norm")
    optimizer.step()
    scheduler.step()
    core.clamp_logit_scale()
    return result.loss.detach(), {m: t.detach() for m, t in result.terms.items()}


def _build(cfg: AlignConfig, info: DistInfo) -> tuple[AlignData, DualEncoder, dict[str, float]]:
    """Inputs, towers (frozen / last N / full) and the dual encoder with fitted standardisers, on the device.

    Returns the data, the model and the learning rate of each tower ('brain' and modality names).
    """
    from brainmm.runtime import seed_everything
    towers = cfg.towers
    brain_kind = tower_kind(towers.brain.kind, "brain")
    seed_everything(cfg.train.seed)  # the brain tower's own initialisation (LoRA A matrices) is seeded too
    side = brain_kind.build_brain(cfg, cfg.train.device)
    brain_rows, brain_tower = side.rows, side.tower
    adjusted: dict[str, Any] = {}
    adjust = input_adjuster(cfg.confounds, adjusted) if cfg.confounds.enabled else None
    data = load_align_data(cfg.data, brain_rows, cfg.train.seed if cfg.train.shuffle_pairs else None, adjust)
    if adjusted:
        data.counts["confounds_r2"] = {side: v["r2"] for side, v in adjusted.items()}
    if cfg.train.shuffle_pairs:
        LOG.info("align: train.shuffle_pairs: every train subject is paired with another train subject's genetics "
                 "(seed %d); val and test keep their true pairs", cfg.train.seed)
    LOG.info("align data: %s", ", ".join(f"{key} {value}" for key, value in data.counts.items()))
    train = data.splits["train"]
    data.brain_side = side
    data.precision = resolve_precision(cfg.train.precision, info.device)  # once per run: every pass uses this value
    if brain_tower is not None and side.inputs is not None:  # the kind's input provider (e.g. BrainLM windows)
        for name in ("train", "val"):
            split = data.splits[name]
            split.windows = side.inputs(name, split.row_ids, data.precision)

    seed_everything(cfg.train.seed)  # model init must not depend on what loading the data drew (e.g. a DataLoader)
    genetics_towers: dict[str, nn.Module] = {}
    for m, table in data.genetics.items():
        train_rows = [i for i, s in enumerate(data.genetics_subjects[m]) if data.split_of.get(s) == "train"]
        tower = tower_kind(towers.genetics_tower(m).kind, "genetics").build_genetics(cfg, m, table, train_rows)
        if tower is None:
            continue
        genetics_towers[m] = tower
        fill = torch.from_numpy(table.vectors[train_rows]).mean(0)  # rows of subjects without this modality
        for split in data.splits.values():
            split.genetics[m][~split.masks[m]] = fill

    dims = {m: (genetics_towers[m].out_dim if m in genetics_towers else t.dim) for m, t in data.genetics.items()}
    _check_head_budget(cfg, data.brain.dim, dims)
    core = DualEncoder(data.brain.dim, dims, cfg.head, brain_tower=brain_tower, genetics_towers=genetics_towers,
                       init_logit_scale=cfg.loss.logit_scale_init(), init_logit_bias=cfg.loss.logit_bias_init())
    core.to(info.device).train()
    if cfg.head.standardize:  # statistics of the training split's (initial) tower outputs
        brain_h = train.windows.features(brain_tower) if train.windows is not None else train.brain
        core.brain_head.fit_standardizer(brain_h)
        for m in data.genetics:
            x = train.genetics[m][first_rows(train, m)]
            core.genetics_heads[m].fit_standardizer(tower_outputs(core.genetics_towers[m], x))
    if cfg.head.init == "cca":
        _init_from_cca(core, data)
    if not cfg.loss.learnable_temperature:
        core.logit_scale.requires_grad_(False)  # PML losses use their fixed temperature
    torch.manual_seed(dropout_seed(cfg.train.seed, info.rank))  # every torchrun rank draws its own dropout masks
    tower_lr = {"brain": brain_kind.tower_lr(towers.brain) or cfg.train.lr}
    tower_lr.update({m: tower_kind(towers.genetics_tower(m).kind).tower_lr(towers.genetics_tower(m)) or cfg.train.lr
                     for m in data.genetics})
    return data, core, tower_lr


def _check_head_budget(cfg: AlignConfig, brain_dim: int, dims: dict[str, int]) -> None:
    """Refuse heads whose training state (weights, gradients, two AdamW moments) cannot fit, before allocating."""
    from brainmm.memory import check_param_budget

    with torch.device("meta"):  # shapes only: nothing is allocated
        heads = DualEncoder(brain_dim, dims, cfg.head)
    n = sum(p.numel() for p in heads.parameters())
    check_param_budget(n, f"align config field 'head' (hidden_dim {cfg.head.hidden_dim}, out_dim {cfg.head.out_dim})",
                       copies=4)


def _init_from_cca(core: DualEncoder, data: AlignData) -> None:
    """head.init cca: both linear heads start from the train-fitted PCA -> CCA solution (sizes chosen on val)."""
    from alignment.heads import init_heads_from_cca

    towers = [core.brain_tower, *core.genetics_towers.values()]
    if not all(isinstance(t, nn.Identity) for t in towers) or len(data.genetics) != 1:
        raise BrainmmError("align config field 'head.init': 'cca' needs table inputs on both sides (no brain or "
                           "genetics tower, e.g. towers.genetics.<modality>.kind table) and one genetics modality")
    (m,) = data.genetics
    pairs = {}
    for name in ("train", "val"):
        split = data.splits[name]
        keep = split.masks[m]
        pairs[name] = (split.brain[keep], split.genetics[m][keep])
    sel = init_heads_from_cca(core.brain_head, core.genetics_heads[m], pairs["train"], pairs["val"])
    LOG.info("align: heads start from CCA (PCA %d / %d, %d pairs; val MRR %.3f)", sel["pca_brain"],
             sel["pca_genetics"], sel["components"], sel["val_mrr"])


def run_align(cfg: AlignConfig, resume: bool = False) -> AlignResult:
    """Train the heads (or continue with `resume`), then write heads, metrics, model card and embeddings."""
    from brainmm.io import main_process_lock

    with distributed(cfg.train.device) as info, main_process_lock(cfg.output_dir, info.is_main):
        return _run(cfg, resume, info)


def _run(cfg: AlignConfig, resume: bool, info: DistInfo) -> AlignResult:
    """`run_align` inside the process group."""
    from brainmm.runtime import log_to_file, progress

    if info.is_main:  # an unreachable tracking server fails here, in seconds, before any data is read
        check_tracking(cfg.tracking)
    run_dir = Path(cfg.output_dir)
    check_run_dir(run_dir, cfg, resume, "align")
    if info.is_main:  # the log of a run refused for bad input is removed again by the CLI (runtime.discard_new_log)
        log_to_file(run_dir)
    data, core, tower_lr = _build(cfg, info)
    if info.is_main:  # written once the inputs are known to be good: a refused run leaves no files
        save_config(cfg, run_dir / "config.yaml")
    modalities = list(data.genetics)
    train, val = data.splits["train"], data.splits["val"]
    model: nn.Module = core
    if info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(core, device_ids=[info.device] if info.device.type == "cuda" else None)
    loss_fn = AlignmentLoss(cfg.loss, modalities, core.embed_dim, info.rank, info.world_size).to(info.device)
    groups = tower_param_groups(core, cfg.train.lr, cfg.train.weight_decay, tower_lr)
    # fused: one pass over each tensor (1.7x a whole step of a 20,000-variant head on CPU, one-off measurement)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, betas=tuple(cfg.train.betas), eps=cfg.train.eps, fused=fused or None)
    steps_per_epoch = len(train) // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise BrainmmError(
            f"align config field 'train.batch_size': {cfg.train.batch_size} is larger than the {len(train)} "
            "training pairs; lower it"
        )
    total_steps = steps_per_epoch * cfg.train.epochs
    scheduler = warmup_cosine(optimizer, cfg.train.warmup_steps, total_steps, cfg.train.min_lr_ratio)
    train_brain = None if train.brain is None else train.brain.to(info.device)
    train_labels = train.labels.to(info.device)
    train_gen = {m: g.to(info.device) for m, g in train.genetics.items()}
    train_masks = {m: k.to(info.device) for m, k in train.masks.items()}
    any_missing = any(not bool(k.all()) for k in train.masks.values())
    use_labels = data.recording_keyed or not cfg.loss.learnable_temperature

    runner = LoopRunner("align", run_dir / CHECKPOINTS, info, core, optimizer, scheduler, Progress(),
                        log_every=cfg.train.log_every, checkpoint_every=cfg.train.checkpoint_every,
                        config=dump_yaml(cfg), hint="lower train.lr or check these subjects' embeddings")
    best_state = None
    if resume:
        def restore(ckpt: dict[str, Any]) -> None:
            nonlocal best_state
            loss_fn.load_state_dict(ckpt["loss"])
            best_state = ckpt["best_model"]

        runner.resume(restore, lambda step: torch.manual_seed(dropout_seed(cfg.train.seed + 7919 * step, info.rank)))

    tags = {"brainmm.run_dir": str(run_dir.resolve()), "loss": cfg.loss.kind,
            "embed_dim": str(core.embed_dim), "seed": str(cfg.train.seed), "genetics": ",".join(modalities),
            "towers": tower_summary(cfg, modalities), "shuffle_pairs": str(cfg.train.shuffle_pairs)}
    with tracked_run(cfg.tracking, run_dir, "align", resume, config=cfg, tags=tags, enabled=info.is_main,
                     run_name=cfg.name) as run:
        if info.is_main and not resume:
            import mlflow

            mlflow.log_params({**{f"data.{k}": v for k, v in data.counts.items()},
                               "precision": data.precision})

        prog = runner.prog
        if cfg.head.init == "cca" and not resume:  # epoch 0 = the CCA solution: val selection keeps or improves it
            prog.best_score = evaluate_split(core, val)["score"]
            best_state = {k: v.detach().clone() for k, v in core.state_dict().items()}
            LOG.info("align: CCA start, val score (mean R@1) %.4f", prog.best_score)
        first_epoch, epoch = prog.epoch, {"batches": []}

        def start_epoch(number: int, first: int) -> int:
            batches, dropped = epoch_batches(len(train), cfg.train.batch_size, cfg.train.seed, number,
                                             info.world_size, info.rank)
            if number == first_epoch and dropped:  # the same count every epoch (different pairs): say it once
                LOG.info("align: each epoch drops %d of %d training pairs (incomplete last global batch of %d; "
                         "reshuffled every epoch)", dropped, len(train), cfg.train.batch_size)
            epoch["batches"] = batches
            return len(batches)

        def step(b: int) -> tuple[torch.Tensor, dict]:
            rows = epoch["batches"][b]
            idx = rows.to(info.device)
            if train.windows is not None:  # the tower kind's inputs (BrainLM: random windows of seed, epoch)
                brain = train.windows.batch(rows.tolist(), prog.epoch).to(info.device, non_blocking=True)
            else:
                brain = train_brain[idx]
            batch = (brain, {m: g[idx] for m, g in train_gen.items()},
                     {m: k[idx] for m, k in train_masks.items()} if any_missing else None,
                     train_labels[idx] if use_labels else None)
            detail = _batch_subjects(train.subjects, rows)
            return _train_step(model, core, loss_fn, optimizer, scheduler, batch, data.precision, cfg.train.grad_clip,
                               info, lambda value, what: runner.check_finite(value, what, detail))

        def log(out: tuple[torch.Tensor, dict]) -> None:
            loss, terms = out
            values = {"align/train/loss": all_reduce_mean(loss)}
            if len(terms) > 1:
                values.update({f"align/train/loss/{m}": all_reduce_mean(t) for m, t in terms.items()})
            if info.is_main:
                scale = float(core.logit_scale.detach().exp())
                metrics = {k: float(v) for k, v in values.items()}
                metrics.update({"align/train/logit_scale": scale, "align/train/temperature": 1.0 / scale,
                                "align/train/epoch": float(prog.epoch)})
                metrics.update({f"align/train/lr/{g['name']}": g["lr"] for g in optimizer.param_groups
                                if not g["name"].endswith("no_decay")})
                run.log(metrics, prog.step)

        def validate() -> float:
            val_metrics = evaluate_split(core, val)
            prog.history.append({"epoch": float(prog.epoch), "step": float(prog.step), **val_metrics})
            if info.is_main:
                run.log({f"align/val/{k}": v for k, v in val_metrics.items()}, prog.step)
                better = val_metrics["score"] > prog.best_score  # the console shows the improvements only
                LOG.log(logging.INFO if better else logging.DEBUG, "align: epoch %d step %d val score (mean R@1) %.4f%s",
                        prog.epoch, prog.step, val_metrics["score"], " (new best)" if better else "")
            return val_metrics["score"]

        def keep_best() -> None:
            nonlocal best_state
            best_state = {k: v.detach().clone() for k, v in core.state_dict().items()}

        runner.run(start_epoch, step, log=log, validate=validate, on_best=keep_best, max_epochs=cfg.train.epochs,
                   patience=cfg.train.patience,
                   bar=lambda r: progress(r, desc=f"align epoch {prog.epoch}", total=len(r)),
                   extra_state=lambda: {"loss": loss_fn.state_dict(), "best_model": best_state, "run_id": run.run_id})

        if best_state is not None:
            core.load_state_dict(best_state)
        result = finalize(cfg, core, data, prog, run_dir, run.run_id, info)
    return result

