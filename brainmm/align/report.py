"""What an align run leaves behind: towers, heads, shared-space embeddings, metrics.json, model card."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignment import (
    DistInfo,
    DualEncoder,
)
from alignment.stats import stat_name
from brainmm.align.config import AlignConfig
from brainmm.align.data import AlignData
from brainmm.align.io import project_table, save_heads
from brainmm.align.project import evaluate_split, project, project_brain_features
from brainmm.align.towers import tower_kind
from brainmm.config import dump_yaml
from brainmm.embeddings import EmbeddingTable
from brainmm.io import atomic_write_json, atomic_write_text

LOG = logging.getLogger("brainmm.align")


@dataclass
class AlignResult:
    """What `run_align` produced."""

    run_dir: Path
    run_id: str | None
    metrics: dict[str, Any]
    heads: Path
    embeddings: dict[str, dict[str, Path]]


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch: int = 0  # next batch index inside `epoch`
    done: bool = False
    best_score: float = -1.0
    best_step: int = 0
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)



def tower_summary(cfg: AlignConfig, modalities: list[str]) -> str:
    """`brain:brainlm/last_n,genotype:genotype_mlp/full` (model towers only), or `tables`."""
    sides = [("brain", cfg.towers.brain)] + [(m, cfg.towers.genetics_tower(m)) for m in modalities]
    return ",".join(f"{name}:{tower_kind(t.kind).summary(t)}" for name, t in sides
                    if tower_kind(t.kind).has_model) or "tables"


def _save_towers(cfg: AlignConfig, core: DualEncoder, data: AlignData, run_dir: Path) -> dict[str, dict[str, str]]:
    """Write towers/<name>/ for every model tower (through its kind); returns the heads.json records."""
    sides = [("brain", cfg.towers.brain.kind, core.brain_tower)]
    sides += [(m, cfg.towers.genetics_tower(m).kind, core.genetics_towers[m]) for m in data.genetics]
    records: dict[str, dict[str, str]] = {}
    for name, kind, tower in sides:
        record = tower_kind(kind).save(cfg, name, tower, data, run_dir / "towers")
        if record is not None:
            records[name] = record
    return records


def _brain_embeddings(cfg: AlignConfig, core: DualEncoder, data: AlignData, split: str) -> EmbeddingTable | None:
    """Shared-space brain embeddings of every brain row of `split` (a brain tower: its kind's input provider)."""
    brain = data.brain
    rows = [i for i, s in enumerate(brain.subjects) if data.split_of.get(s) == split]
    if not rows:
        return None
    ids = [brain.ids[i] for i in rows]
    if brain.vectors is not None:
        z = project(core, "brain", torch.from_numpy(brain.vectors[rows]))
    else:
        inputs = data.brain_side.inputs(split, ids, data.precision)
        z = project_brain_features(core, inputs.features(core.brain_tower))
    meta = {k: v for k, v in brain.meta.items() if k != "subject_id"}
    if "subject_id" in brain.meta or brain.ids != brain.subjects:  # keep the row -> subject map of the subset
        meta["subject_id"] = {brain.ids[i]: brain.subjects[i] for i in rows}
    return EmbeddingTable(ids, z.numpy(), meta)


def finalize(cfg: AlignConfig, core: DualEncoder, data: AlignData, prog: Progress, run_dir: Path,
              run_id: str | None, info: DistInfo) -> AlignResult:
    """Write heads, towers, projected embeddings of every split, metrics and model card; log them as artifacts."""
    from brainmm.data.splits import SPLITS

    heads = run_dir / "heads.safetensors"
    embeddings: dict[str, dict[str, Path]] = {s: {} for s in SPLITS}
    metrics = {
        "best_step": prog.best_step, "best_epoch": prog.best_epoch, "steps": prog.step, "epochs": prog.epoch,
        "stopped_early": prog.stopped_early, "counts": data.counts,
        "val": evaluate_split(core, data.splits["val"], ci=True),  # the best epoch's heads, with CIs
        "history": prog.history,
    }
    if not info.is_main:
        if info.world_size > 1:
            torch.distributed.barrier()
        return AlignResult(run_dir, run_id, metrics, heads, embeddings)
    core.eval()
    towers = _save_towers(cfg, core, data, run_dir)
    save_heads(core, run_dir, {"brainmm_version": _version(), "run_id": run_id, "towers": towers,
                               "precision": data.precision})
    common = {"model": "brainmm.align", "space": "shared", "run_id": run_id}
    brain_source = cfg.data.brain or data.brain.source
    for split in SPLITS:
        table = _brain_embeddings(cfg, core, data, split)
        if table is not None:
            table.meta.update({**common, "modality": "brain", "split": split, "source": brain_source})
            embeddings[split]["brain"] = table.save(run_dir / "embeddings" / split / "brain")
        for m, gtable in data.genetics.items():
            subjects = data.genetics_subjects[m]
            rows = [i for i, s in enumerate(subjects) if data.split_of.get(s) == split]
            if not rows:
                continue
            part = gtable.subset([gtable.ids[i] for i in rows])
            if "subject_id" in gtable.meta:  # keep the row -> subject map aligned with the subset
                part.meta["subject_id"] = {gtable.ids[i]: subjects[i] for i in rows}
            meta = {**common, "modality": m, "split": split, "source": cfg.data.genetics[m]}
            embeddings[split][m] = project_table(core, part, m, meta).save(run_dir / "embeddings" / split / m)
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "model_card.md", _model_card(cfg, data, metrics, core))
    import mlflow

    for name in ("heads.safetensors", "heads.json", "metrics.json", "model_card.md"):
        mlflow.log_artifact(str(run_dir / name), artifact_path="align")
    if towers:
        mlflow.log_artifacts(str(run_dir / "towers"), artifact_path="align/towers")
    mlflow.set_tags({"align.best_step": str(prog.best_step), "align.stopped_early": str(prog.stopped_early)})
    LOG.info("align: wrote %s (best val score %.4f at step %d)", run_dir, prog.best_score, prog.best_step)
    if info.world_size > 1:
        torch.distributed.barrier()
    return AlignResult(run_dir, run_id, metrics, heads, embeddings)


def _version() -> str:
    from brainmm import __version__

    return __version__


def _tower_lines(cfg: AlignConfig, data: AlignData) -> list[str]:
    """Model-card lines describing the brain side and each genetics modality."""
    lines = [tower_kind(cfg.towers.brain.kind).describe(cfg, data, "brain")]
    return lines + [tower_kind(cfg.towers.genetics_tower(m).kind).describe(cfg, data, m) for m in data.genetics]


def _model_card(cfg: AlignConfig, data: AlignData, metrics: dict[str, Any], core: DualEncoder) -> str:
    """Markdown: data, split sizes, config, validation metrics with chance levels."""
    c = data.counts
    lines = [
        f"# brainmm align: {cfg.name}", "",
        f"Projector heads mapping brain and genetics inputs into a shared {core.embed_dim}-D space "
        f"({cfg.loss.kind} loss). Rebuild with `brainmm.align.load_heads(<run folder>)` (heads) or "
        "`load_model(<run folder>)` (heads + towers).", "",
        "## Data", "",
        *_tower_lines(cfg, data),
    ]
    if cfg.confounds.enabled:
        r2 = ", ".join(f"{k} {v:.3f}" for k, v in c.get("confounds_r2", {}).items())
        lines.append(f"- confounds: inputs residualised on {', '.join(cfg.confounds.columns)} (least squares "
                     "fitted on the train subjects; categorical covariates and ancestry clusters as strata in "
                     "location and scale on both sides, numeric covariates on the brain side only, genetic PCs on the "
                     f"genetics side only; R^2 of the inputs: {r2})")
    lines += [f"- split table: `{cfg.data.split}`", "", "## Split sizes", "",
              "| split | pairs (brain rows) | subjects |", "|---|---|---|"]
    lines += [f"| {s} | {c[f'{s}_pairs']} | {c[f'{s}_subjects']} |" for s in ("train", "val", "test")]
    lines += ["", "## Validation retrieval (best epoch; used for model selection)", "",
              "These val numbers chose the epoch (and early stopping), so they are optimistic: report the test split "
              "(`brainmm evaluate`). "
              f"Best step {metrics['best_step']} (epoch {metrics['best_epoch']}); stopped early: "
              f"{metrics['stopped_early']}. Recordings of one subject are averaged; chance R@k = k/N.", "",
              "| direction | R@1 [95% CI] | chance R@1 | R@10 [95% CI] | chance R@10 | median rank (chance) |",
              "|---|---|---|---|---|---|"]
    val = metrics["val"]

    def cell(d: str, key: str) -> str:
        name = f"{d}/{key}"
        return f"{val[name]:.3f} [{val[stat_name(name, 'ci_low')]:.3f}, {val[stat_name(name, 'ci_high')]:.3f}]"

    for d in sorted({k.split("/")[0] for k in val if "/" in k}):
        lines.append(f"| {d} | {cell(d, 'R_at_1')} | {val[stat_name(d + '/R_at_1', 'chance')]:.3f} | {cell(d, 'R_at_10')} | "
                     f"{val[stat_name(d + '/R_at_10', 'chance')]:.3f} | {val[d + '/median_rank']:.0f} "
                     f"({val[stat_name(d + '/median_rank', 'chance')]:.0f}) |")
    lines += ["", "## Config", "", "```yaml", dump_yaml(cfg).rstrip(), "```", ""]
    return "\n".join(lines)

