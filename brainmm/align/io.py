"""Align run folders on disk: heads, towers, whole models, and projections of tables and fMRI datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from alignment import (
    DualEncoder,
)
from brainmm.align.project import project
from brainmm.align.tower_models import tower_precision
from brainmm.align.towers import kind_of, tower_kind
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError

# ------------------------------------------------------------------------------------------------ heads


def save_heads(model: DualEncoder, run_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """heads.safetensors + heads.json of an align run (the format of `DualEncoder.save_pretrained`)."""
    return model.save_pretrained(run_dir, extra)


def load_heads(run_dir: str | Path) -> DualEncoder:
    """Rebuild the trained heads of an align run folder (identity towers), in eval mode."""
    run_dir = Path(run_dir)
    for p in (run_dir / "heads.json", run_dir / "heads.safetensors"):
        if not p.is_file():
            raise BrainmmError(f"align heads {p}: not found (expected heads.json and heads.safetensors in {run_dir})")
    return DualEncoder.from_pretrained(run_dir)


def project_table(model: DualEncoder, table: EmbeddingTable, modality: str, meta: dict[str, Any] | None = None) -> EmbeddingTable:
    """Project a brain ('brain') or genetics (modality name) table into the shared space, keeping its ids.

    The inputs are what the model's tower takes: embeddings for table towers, dosages for a genotype tower.
    """
    z = project(model, modality, torch.from_numpy(table.vectors))
    return EmbeddingTable(table.ids, z.numpy(), {**table.meta, **(meta or {})})


def load_towers(run_dir: str | Path, only: list[str] | None = None) -> dict[str, nn.Module]:
    """The towers of an align run folder ('brain' and modality names), in eval mode, each read by its kind.

    Towers are read from `towers/<name>/` (e.g. a BrainLM tower: its base checkpoint, refused when its weights hash
    changed, + the tensors fine-tuning changed). Sides that used a table have no tower and are left out.
    """
    run_dir = Path(run_dir)
    path = run_dir / "heads.json"
    if not path.is_file():
        raise BrainmmError(f"align heads {path}: not found (expected an align run folder)")
    towers: dict[str, nn.Module] = {}
    for name, record in json.loads(path.read_text()).get("towers", {}).items():
        if only is not None and name not in only:
            continue
        folder = run_dir / record["path"]
        towers[name] = tower_kind(record["kind"]).load(folder)
    return towers


def load_model(run_dir: str | Path) -> DualEncoder:
    """Heads and towers of an align run folder (`load_heads` + `load_towers`), in eval mode.

    Inputs are then what the towers take: new brain data through the brain tower's kind (`project_fmri`, e.g. an
    fMRI dataset for a BrainLM tower), dosages for a genotype tower, embeddings for table sides.
    """
    model = load_heads(run_dir)
    for name, tower in load_towers(run_dir).items():
        if name == "brain":
            model.brain_tower = tower
        else:
            model.genetics_towers[name] = tower
    model.train_precision = run_precision(run_dir)  # project_fmri computes tower features in it
    return model.eval()


def run_precision(run_dir: str | Path) -> str:
    """The compute precision an align run resolved once and recorded in its heads.json (`fp32` / `bf16`); runs
    written before it was recorded: their config's `train.precision`, resolved on this machine."""
    run_dir = Path(run_dir)
    record = json.loads((run_dir / "heads.json").read_text()) if (run_dir / "heads.json").is_file() else {}
    if "precision" in record:
        return str(record["precision"])
    config = run_dir / "config.yaml"
    train = ((yaml.safe_load(config.read_text()) or {}).get("train") or {}) if config.is_file() else {}
    return tower_precision(str(train.get("precision", "auto")), str(train.get("device", "auto")))


def project_fmri(model: DualEncoder, dataset: str | Path, split: str | None = None,
                 batch_size: int = 64, precision: str | None = None) -> EmbeddingTable:
    """Shared-space embeddings of new brain data (one split or all) through the model's brain tower, by its kind (a
    BrainLM tower: an fMRI dataset's recordings, the tower's output averaged over each one's tiled windows, then the
    brain head). `precision` None: the run's (recorded by `load_model`), so the vectors equal the run's own."""
    kind = kind_of(model.brain_tower)
    if kind is None:
        raise BrainmmError("project_fmri: the model has no brain tower (load it with load_model(run_dir))")
    return kind.project(model, dataset, split, batch_size, precision or getattr(model, "train_precision", "auto"))
