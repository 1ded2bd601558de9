"""The training loop shared by `brainmm pretrain` and `brainmm align`: checkpoints, resume, per-rank RNG,
log/checkpoint cadence, early stopping on a validation score, the finite loss / gradient check.

A driver builds its model, optimiser and scheduler, makes a `LoopRunner` with its progress record (a dataclass
with at least `step`, `epoch`, `batch`; early stopping also uses `done`, `best_score`, `best_step`, `best_epoch`,
`bad_epochs`, `stopped_early`), and passes its own step function to `run`:

    runner = LoopRunner("align", run_dir / "checkpoints", info, core, optimizer, scheduler, Progress(),
                        log_every=10, checkpoint_every=100, config=dump_yaml(cfg), hint="lower train.lr")
    if resume:
        runner.resume(restore=lambda ckpt: loss_fn.load_state_dict(ckpt["loss"]), reseed=lambda step: ...)
    runner.run(start_epoch, step, log=log, validate=validate, max_epochs=10, patience=3, extra_state=lambda: {...})

Every checkpoint holds `model`, `optimizer`, `scheduler`, `rng` (every rank's `capture_rng_state()`, in rank
order), `progress` (the record's fields), `config` and the driver's `extra_state()`; `--resume` gives each rank its
own saved stream back, so a resumed run draws the batches and masks of an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainmm.distributed import DistInfo, barrier
from brainmm.train.common import (
    CheckpointDir,
    check_finite,
    load_matching_state,
    rank_rng_states,
    restore_rank_rng,
)

LOG = logging.getLogger("brainmm.train")

__all__ = ["LoopRunner"]


class LoopRunner:
    """One training run's loop: resume, steps of epochs, log and checkpoint cadence, validation, early stop."""

    def __init__(self, stage: str, folder: str | Path, info: DistInfo, model: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, progress: Any, *, log_every: int,
                 checkpoint_every: int, config: str, hint: str, keep: int = 2) -> None:
        self.stage, self.info, self.model = stage, info, model
        self.optimizer, self.scheduler, self.prog = optimizer, scheduler, progress
        self.log_every, self.checkpoint_every = int(log_every), int(checkpoint_every)
        self.config, self.hint = config, hint
        self.ckpts = CheckpointDir(folder, keep=keep)
        self.extra_state: Callable[[], dict[str, Any]] = dict

    # ------------------------------------------------------------------------------------ checkpoints

    def resume(self, restore: Callable[[dict[str, Any]], None] | None = None,
               reseed: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Load the newest readable checkpoint: model, optimiser, scheduler, progress, this rank's RNG stream
        (`reseed(step)` when the process count changed) and the driver's part (`restore(checkpoint)`)."""
        ckpt = self.ckpts.load_latest(self.info.device)
        load_matching_state(self.model, ckpt["model"], f"{self.stage} --resume ({self.ckpts.folder})")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if restore is not None:
            restore(ckpt)
        self.prog = type(self.prog)(**ckpt["progress"])
        restore_rank_rng(ckpt["rng"], self.info.rank, self.info.world_size, self.stage,
                         lambda: reseed(self.prog.step) if reseed is not None else None)
        LOG.info("%s: resumed at step %d (epoch %d, batch %d)", self.stage, self.prog.step, self.prog.epoch,
                 self.prog.batch)
        return ckpt

    def checkpoint(self) -> None:
        """Save a checkpoint of the current step (a collective: every rank's RNG state is gathered)."""
        rng = rank_rng_states()  # every rank's own stream (masks, dropout), restored per rank on --resume
        if self.info.is_main:
            self.ckpts.save(self.prog.step, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng, "progress": vars(self.prog).copy(),
                "config": self.config, **self.extra_state(),
            })
        barrier()

    # ------------------------------------------------------------------------------------ finiteness

    def check_finite(self, value: torch.Tensor, what: str, detail: Callable[[], str]) -> None:
        """Stop every rank with one error when `value` (the loss, a gradient norm) of this step is NaN/inf
        anywhere; `detail()` names the batch's items (called only then)."""

        def message() -> str:
            paths = self.ckpts.paths()
            last = paths[-1] if paths else None
            return (f"{self.stage}: non-finite {what} at step {self.prog.step + 1} (epoch {self.prog.epoch}); "
                    f"{detail()}; nothing was saved for this step (the last checkpoint, if any, is {last}); "
                    f"{self.hint}")

        check_finite(value, self.info.world_size, message)

    # ------------------------------------------------------------------------------------------ loop

    def run(self, start_epoch: Callable[[int, int], int], step: Callable[[int], Any], *,
            log: Callable[[Any], None], after_step: Callable[[Any], None] | None = None,
            validate: Callable[[], float] | None = None, on_best: Callable[[], None] | None = None,
            max_steps: int | None = None, max_epochs: int | None = None, patience: int = 0,
            bar: Callable[[range], Iterable[int]] = iter,
            extra_state: Callable[[], dict[str, Any]] = dict) -> None:
        """Train until `max_steps` steps or `max_epochs` epochs (or an early stop after `patience` epochs
        without a better `validate()` score).

        Per epoch `start_epoch(epoch, first_batch)` returns its number of steps; per step `step(batch)` returns
        what `log` (every `log_every` steps) and then `after_step` (every step) receive; `bar` wraps an epoch's
        batch range (a progress bar); checkpoints add `extra_state()` to their keys. A checkpoint is written
        every `checkpoint_every` steps and when the run stops; with `validate`, the one of an epoch's last step
        waits until after the epoch's validation (it then holds the best state and the early-stop count).
        """
        self.extra_state = extra_state
        prog = self.prog
        while not self._stopped(max_steps):
            n = start_epoch(prog.epoch, prog.batch)
            for b in bar(range(prog.batch, n)):
                if self._stopped(max_steps):
                    break
                out = step(b)
                prog.step += 1
                prog.batch = b + 1
                if prog.step % self.log_every == 0:
                    log(out)
                if after_step is not None:
                    after_step(out)
                at_end = max_steps is not None and prog.step >= max_steps
                if (prog.step % self.checkpoint_every == 0 and (validate is None or prog.batch < n)) or (
                        at_end and validate is None):
                    self.checkpoint()
            if validate is not None:
                self._end_epoch(validate(), on_best, max_epochs, patience)
            elif prog.batch >= n:
                prog.epoch, prog.batch = prog.epoch + 1, 0

    def _stopped(self, max_steps: int | None) -> bool:
        return getattr(self.prog, "done", False) or (max_steps is not None and self.prog.step >= max_steps)

    def _end_epoch(self, score: float, on_best: Callable[[], None] | None, max_epochs: int | None,
                   patience: int) -> None:
        """Best-score bookkeeping, early stop and the end-of-epoch checkpoint after a validation."""
        prog = self.prog
        if score > prog.best_score:
            prog.best_score, prog.best_step, prog.best_epoch, prog.bad_epochs = score, prog.step, prog.epoch, 0
            if on_best is not None:
                on_best()
        else:
            prog.bad_epochs += 1
        prog.epoch += 1
        prog.batch = 0
        if patience and prog.bad_epochs >= patience:
            prog.stopped_early = True
            LOG.info("%s: early stop after epoch %d (no better val score for %d epochs)", self.stage,
                     prog.epoch - 1, prog.bad_epochs)
        prog.done = prog.stopped_early or (max_epochs is not None and prog.epoch >= max_epochs)
        if prog.done or prog.step % self.checkpoint_every == 0:
            self.checkpoint()
