"""Shared training utilities: RNG state, atomic checkpoints, warmup + cosine LR, resumable metrics (torchrun helpers: `brainmm.distributed`).

Every training driver uses these so that `--resume` means the same thing everywhere: the newest readable
checkpoint restores model, optimizer, scheduler, RNG and data position, and the same MLflow run continues
without logging any (metric, step) pair twice.

    with distributed(cfg.device) as info:                   # torchrun: gloo on CPU, NCCL on GPU
        check_run_dir(run_dir, cfg, resume, "pretrain")
        ckpts = CheckpointDir(run_dir / "checkpoints")
        state = ckpts.load_latest() if resume else None      # {"model": ..., "rng": capture_rng_state(), ...}
        with tracked_run(cfg.tracking, run_dir, "pretrain", resume, config=cfg, enabled=info.is_main) as run:
            run.log({"pretrain/train/loss": 0.5}, step=10)
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from alignment.optim import WarmupCosine, warmup_cosine
from brainmm.errors import BrainmmError
from brainmm.interrupts import deferred_interrupts
from brainmm.io import atomic_file, atomic_write_json

LOG = logging.getLogger("brainmm.train")

__all__ = [
    "CheckpointDir",
    "MetricLogger",
    "TrackedRun",
    "WarmupCosine",
    "batched_outputs",
    "check_finite",
    "capture_rng_state",
    "check_run_dir",
    "check_tracking",
    "eval_mode",
    "load_checkpoint",
    "load_matching_state",
    "rank_rng_states",
    "restore_rank_rng",
    "restore_rng_state",
    "save_checkpoint",
    "tracked_run",
    "warmup_cosine",
]

# ------------------------------------------------------------------------------------------------ RNG


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back a state from `capture_rng_state` (CUDA states only when this machine has as many GPUs)."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def rank_rng_states() -> list[dict[str, Any]]:
    """Every rank's `capture_rng_state()`, in rank order (a collective: call it on every rank)."""
    from brainmm.distributed import gather_objects

    return gather_objects(capture_rng_state())


def restore_rank_rng(states: list[dict[str, Any]] | dict[str, Any], rank: int, world_size: int, stage: str,
                     reseed: Callable[[], None]) -> None:
    """Give this rank its own saved RNG stream from `rank_rng_states()`; with another process count, warn and
    `reseed()` (a checkpoint of a single process may hold one state as a dict)."""
    states = [states] if isinstance(states, dict) else states
    if len(states) == world_size:
        restore_rng_state(states[rank])
    else:
        LOG.warning("%s: the checkpoint has RNG states of %d processes, this job has %d; reseeding", stage,
                    len(states), world_size)
        reseed()


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples; a round trip through some serialisers gives lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# ------------------------------------------------------------------------------------ precision, finiteness

def check_finite(value: torch.Tensor, world_size: int, message: Callable[[], str]) -> None:
    """Raise one BrainmmError(message()) on every rank when `value` is NaN/inf on any of them."""
    ok = torch.isfinite(value.detach()).all().float().reshape(1)
    if world_size > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if not bool(ok):
        raise BrainmmError(message())


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`module` in eval mode, without gradients, for the block; its training mode is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def batched_outputs(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device,
                    batch_size: int = 4096) -> list[torch.Tensor]:
    """`fn` over row batches of `x` moved to `device`; each output as float32 on the CPU (call inside `eval_mode`)."""
    return [fn(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]


# -------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` with torch.save via a temp file + rename; refuses non-finite floats in `state["model"]`."""
    path = Path(path)
    bad = [k for k, v in (state.get("model") or {}).items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise BrainmmError(f"checkpoint {path}: refusing to write non-finite weights (e.g. {bad[:3]})")
    with atomic_file(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain values only: weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise BrainmmError(f"checkpoint {path}: not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise BrainmmError(f"checkpoint {path}: unreadable ({err.__class__.__name__}: {err})") from None


class CheckpointDir:
    """Step-numbered checkpoints (`step-000000100.pt`) in one folder; the newest `keep` (>= 2) are kept.

    Each file is written atomically, and the previous one stays until a newer one is complete, so a crash
    mid-save (or a damaged newest file) still leaves a usable checkpoint: `load_latest` falls back to it.
    """

    _NAME = re.compile(r"^step-(\d+)\.pt$")

    def __init__(self, folder: str | Path, keep: int = 2) -> None:
        if keep < 2:
            raise BrainmmError(f"checkpoints to keep: expected >= 2 (the previous one must stay usable), got {keep}")
        self.folder = Path(folder)
        self.keep = int(keep)

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := self._NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write the checkpoint of `step` atomically, then delete all but the newest `keep` (Ctrl-C / SIGTERM wait)."""
        with deferred_interrupts():
            path = save_checkpoint(self.folder / f"step-{int(step):09d}.pt", state)
            for old in self.paths()[: -self.keep]:
                old.unlink(missing_ok=True)
        return path

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The newest readable checkpoint (an unreadable newer one is skipped with a warning)."""
        paths = self.paths()
        if not paths:
            raise BrainmmError(f"--resume: no checkpoint in {self.folder}; run without --resume to start this run")
        for path in reversed(paths):
            try:
                state = load_checkpoint(path, map_location)
            except BrainmmError as err:
                LOG.warning("%s; trying the previous checkpoint", err)
                continue
            LOG.info("resuming from %s", path)
            return state
        raise BrainmmError(f"--resume: none of the {len(paths)} checkpoints in {self.folder} is readable")


def check_run_dir(run_dir: str | Path, config: Any, resume: bool, stage: str,
                  markers: tuple[str, ...] = ("checkpoints", "metrics.json")) -> None:
    """A fresh run needs a run folder without `markers`; a resumed one needs the same resolved config."""
    from brainmm.config import flatten, read_yaml, to_dict
    from brainmm.io import check_output_folder

    run_dir = check_output_folder(run_dir)
    if not resume:
        found = [m for m in markers if (run_dir / m).exists()]
        if found:
            raise BrainmmError(
                f"output_dir {run_dir}: already holds {'an' if stage[0] in 'aeiou' else 'a'} {stage} run ({found[0]}); "
                "pass --resume to continue it, or "
                "choose another output_dir"
            )
        return
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise BrainmmError(f"{stage} --resume: {saved} not found; there is no run to resume in {run_dir}")
    old, new = flatten(read_yaml(saved)), flatten(to_dict(config))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise BrainmmError(
            f"{stage} --resume: the config differs from the saved {saved} in {diff[:8]}; resume with --config {saved}"
        )


def load_matching_state(module: torch.nn.Module, state: dict[str, Any], where: str) -> None:
    """`module.load_state_dict(state)`, or one BrainmmError naming the first tensor whose shape (or presence)
    differs between the checkpoint and the model this run built (e.g. a head size or an input width changed)."""
    own = module.state_dict()
    for name in [*own, *(k for k in state if k not in own)]:
        old, new = state.get(name), own.get(name)
        old_shape = "absent" if old is None else list(getattr(old, "shape", []))
        new_shape = "absent" if new is None else list(new.shape)
        if old_shape != new_shape:
            raise BrainmmError(
                f"{where}: the checkpoint does not fit the model this run builds: tensor {name!r} is {old_shape} in "
                f"the checkpoint, {new_shape} now (a model size in the config or the width "
                "of an input table changed since the checkpoint was written); resume with that run's inputs and "
                "config, or start a new run in another output_dir"
            )
    module.load_state_dict(state)


# ---------------------------------------------------------------------------------------------- tracking


def check_tracking(cfg: Any) -> str:
    """Resolve the tracking URI of a `TrackingConfig` and fail now if its server is unreachable."""
    from brainmm.tracking import check_tracking_server, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.uri)
    check_tracking_server(uri)
    return uri


class MetricLogger:
    """Step metrics to MLflow that never log a (metric, step) pair twice, also across `--resume`.

    On a resumed run the last logged step of every metric is read back from MLflow; later calls skip
    anything at or before it. Disabled (no run id) it does nothing, which is what non-main ranks use.
    """

    def __init__(self, run_id: str | None = None, resumed: bool = False) -> None:
        self.run_id = run_id
        self.last: dict[str, int] = {}
        if run_id is None or not resumed:
            return
        import mlflow

        client = mlflow.MlflowClient()
        for key in client.get_run(run_id).data.metrics:
            self.last[key] = max(m.step for m in client.get_metric_history(run_id, key))

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log the metrics not yet logged at `step` (names sanitised by brainmm.tracking)."""
        if self.run_id is None:
            return
        from brainmm.tracking import log_metrics, sanitize_metric_name

        fresh = {k: float(v) for k, v in metrics.items() if step > self.last.get(sanitize_metric_name(k), -1)}
        if fresh:
            log_metrics(fresh, step=step)
            self.last.update({sanitize_metric_name(k): step for k in fresh})


@dataclass
class TrackedRun:
    """The MLflow run of a training job (run_id None on non-main ranks) and its metric logger."""

    run_id: str | None = None
    logger: MetricLogger = field(default_factory=MetricLogger)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log step metrics (see `MetricLogger`)."""
        self.logger.log(metrics, step)


@contextlib.contextmanager
def tracked_run(
    cfg: Any,
    run_dir: str | Path,
    stage: str,
    resume: bool,
    config: Any = None,
    tags: dict[str, str] | None = None,
    enabled: bool = True,
    run_name: str | None = None,
) -> Iterator[TrackedRun]:
    """Start the MLflow run of `stage` (or continue the one named in `run_dir/run.json` with `resume`).

    A fresh run logs the resolved `config` (params + config.yaml) and `tags`; `run.json` records the run id
    and tracking URI so `--resume` finds it. With `enabled=False` (non-main ranks) nothing is logged.
    """
    if not enabled:
        yield TrackedRun()
        return
    import json

    from brainmm import tracking

    run_dir = Path(run_dir)
    record = run_dir / "run.json"
    run_id = None
    if resume:
        if not record.is_file():
            raise BrainmmError(f"{stage} --resume: {record} not found (it names the MLflow run to continue)")
        run_id = json.loads(record.read_text()).get("mlflow_run_id")
    with tracking.start_run(cfg, run_name=run_name or cfg.run_name or stage, run_id=run_id,
                            tags=None if resume else {"brainmm.stage": stage, **(tags or {})}) as run:
        atomic_write_json(record, {"mlflow_run_id": run.info.run_id, "tracking_uri": _tracking_uri()})
        if not resume and config is not None:
            tracking.log_config(config)
        yield TrackedRun(run.info.run_id, MetricLogger(run.info.run_id, resumed=resume))


def _tracking_uri() -> str:
    """The active tracking URI, with a relative sqlite path made absolute (run.json must not depend on the cwd)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri
