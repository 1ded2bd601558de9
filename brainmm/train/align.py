"""`brainmm align`: align brain and genetics inputs in one shared space (projector heads, optionally towers).

Inputs: the brain side is a brain EmbeddingTable (keyed by subject, or by recording with a `subject_id` map in its
meta) or a BrainLM tower on an fMRI dataset (`towers.brain`); one or more genetics EmbeddingTables keyed by subject
(one per modality; a dosage matrix can feed a genotype MLP tower, `towers.genetics.<modality>`); the split table.
Outputs in the run folder: config.yaml, heads.safetensors + heads.json, towers/<brain|modality>/ (trained towers),
metrics.json, model_card.md, brainmm.log, checkpoints/last.pt and the shared-space embeddings of every split under
embeddings/<split>/<brain|modality>.{safetensors,json}.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignment import (
    AlignmentLoss,
    DistInfo,
    DualEncoder,
    HeadConfig,
    LossConfig,
    all_reduce_mean,
    epoch_batches,
    init_distributed,
    warmup_cosine,
)
from brainmm.config import dump_yaml, save_config
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.io import atomic_file, atomic_write_json, atomic_write_text
from brainmm.tracking import TrackingConfig
from brainmm.train.common import (
    MetricLogger,
    capture_rng_state,
    check_run_dir,
    check_tracking,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from brainmm.train.towers import (
    BrainDataset,
    BrainLMTower,
    BrainWindows,
    GenotypeTower,
    Tower,
    TowersConfig,
    build_genotype_tower,
    check_dosages,
    check_split_agrees,
    frozen_brain_table,
    load_brainlm_encoder,
    open_brain_dataset,
    set_trainable,
    tower_param_groups,
)

LOG = logging.getLogger("brainmm.align")
CHECKPOINT = Path("checkpoints") / "last.pt"
_MODALITY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


# ----------------------------------------------------------------------------------------------- config


@dataclass
class AlignDataConfig:
    """Input tables: brain table stem (empty with a BrainLM tower), genetics table stems by modality, split CSV."""

    brain: str = ""
    genetics: dict[str, str] = field(default_factory=dict)
    split: str = ""


@dataclass
class AlignTrainConfig:
    """Optimisation. `batch_size` is the global batch (split evenly over torchrun processes)."""

    batch_size: int = 64
    epochs: int = 100
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # AdamW (beta1, beta2)
    eps: float = 1e-6
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    amp: bool = True  # bf16 autocast, used on GPU only
    device: str = "auto"
    seed: int = 0
    log_every: int = 10  # steps between train-metric logs
    checkpoint_every: int = 100  # steps between checkpoints (one is also written when training ends)
    patience: int = 10  # epochs without a better validation score before stopping; 0 = never stop early
    shuffle_pairs: bool = False  # pair each train subject with another's genetics (seeded derangement): a null run


@dataclass
class AlignConfig:
    """The `brainmm align` stage."""

    name: str = "align"
    output_dir: str = "runs/align"
    data: AlignDataConfig = field(default_factory=AlignDataConfig)
    head: HeadConfig = field(default_factory=lambda: HeadConfig(standardize=True))
    towers: TowersConfig = field(default_factory=TowersConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: AlignTrainConfig = field(default_factory=AlignTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        """Cross-field checks (input paths are checked when the run starts)."""
        t = self.train
        positive = {"train.batch_size": t.batch_size, "train.epochs": t.epochs, "train.log_every": t.log_every,
                    "train.checkpoint_every": t.checkpoint_every}
        for name, value in positive.items():
            if value < 1:
                raise BrainmmError(f"align config field '{name}': expected an integer >= 1, got {value}")
        if t.batch_size < 2:
            raise BrainmmError(f"align config field 'train.batch_size': a contrastive loss needs >= 2, got {t.batch_size}")
        checks = [("train.lr", t.lr > 0, "> 0"), ("train.weight_decay", t.weight_decay >= 0, ">= 0"),
                  ("train.eps", t.eps > 0, "> 0"), ("train.warmup_steps", t.warmup_steps >= 0, ">= 0"),
                  ("train.grad_clip", t.grad_clip >= 0, ">= 0"), ("train.patience", t.patience >= 0, ">= 0"),
                  ("train.min_lr_ratio", 0 <= t.min_lr_ratio <= 1, "in [0, 1]"),
                  ("train.betas", len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "two numbers in [0, 1)")]
        for name, ok, expected in checks:
            if not ok:
                raise BrainmmError(f"align config field '{name}': expected {expected}, got {_field(self, name)!r}")
        for modality in self.data.genetics:
            if not _MODALITY_NAME.match(modality) or modality == "brain":
                raise BrainmmError(
                    f"align config field 'data.genetics.{modality}': modality names must be identifiers "
                    "(letters, digits, _) other than 'brain'"
                )
        self.towers.validate()
        for modality in self.towers.genetics:
            if modality not in self.data.genetics:
                raise BrainmmError(
                    f"align config field 'towers.genetics.{modality}': no such modality in data.genetics "
                    f"({sorted(self.data.genetics)})"
                )
        if self.towers.brain.kind == "brainlm" and self.data.brain:
            raise BrainmmError(
                "align config field 'data.brain': with towers.brain.kind: brainlm the recordings come from "
                f"towers.brain.dataset; leave data.brain empty (got {self.data.brain!r})"
            )


def _field(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


# ------------------------------------------------------------------------------------------------- data


def table_subjects(table: EmbeddingTable, where: str) -> list[str]:
    """Subject of every row: the ids themselves, or meta['subject_id'] (a {row id: subject} map or a list)."""
    mapping = table.meta.get("subject_id")
    if mapping is None:
        return list(table.ids)
    if isinstance(mapping, dict):
        missing = [i for i in table.ids if i not in mapping]
        if missing:
            raise BrainmmError(f"{where}: meta.subject_id has no subject for rows {missing[:5]}")
        return [str(mapping[i]) for i in table.ids]
    if isinstance(mapping, list) and len(mapping) == len(table.ids):
        return [str(s) for s in mapping]
    raise BrainmmError(f"{where}: meta.subject_id must map every row id to a subject (a dict, or a list of {len(table.ids)})")


def _load_table(path: str, where: str) -> EmbeddingTable:
    if not path:
        raise BrainmmError(f"align config field '{where}': expected the path of an embedding table, got nothing")
    table = EmbeddingTable.load(path)
    _check_finite(table, f"embedding table {path} ({where})")
    return table


def _check_finite(table: EmbeddingTable, what: str) -> None:
    bad = ~np.isfinite(table.vectors).all(axis=1)
    if bad.any():
        ids = [table.ids[i] for i in np.flatnonzero(bad)[:5]]
        raise BrainmmError(f"{what}: {int(bad.sum())} rows with NaN/inf values, e.g. {ids}")


@dataclass
class BrainRows:
    """The brain side's rows: ids (recordings or subjects), their subjects, and input vectors when precomputed
    (a table or frozen-tower embeddings); `vectors` is None when a trainable tower reads fMRI windows."""

    ids: list[str]
    subjects: list[str]
    vectors: np.ndarray | None
    dim: int  # width of the brain tower's output (= the table's width for tables)
    meta: dict[str, Any]
    source: str  # what the rows come from (a table path, or checkpoint on dataset)

    @classmethod
    def from_table(cls, table: EmbeddingTable, source: str) -> BrainRows:
        """Rows of an embedding table (subjects from its ids or meta.subject_id)."""
        return cls(list(table.ids), table_subjects(table, f"brain table {source}"), table.vectors, table.dim,
                   dict(table.meta), source)


@dataclass
class SplitData:
    """Row-aligned training pairs of one split: one row per brain row whose subject has some genetics."""

    row_ids: list[str]
    subjects: list[str]
    brain: torch.Tensor | None  # input vectors; None when `windows` feeds a BrainLM tower
    genetics: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    labels: torch.Tensor  # subject index (unique over all splits)
    windows: BrainWindows | None = None

    def __len__(self) -> int:
        return len(self.row_ids)


@dataclass
class AlignData:
    """Everything the driver needs from the inputs and the split."""

    brain: BrainRows
    genetics: dict[str, EmbeddingTable]
    genetics_subjects: dict[str, list[str]]
    split_of: dict[str, str]
    splits: dict[str, SplitData]
    recording_keyed: bool
    counts: dict[str, Any]
    brain_dataset: BrainDataset | None = None  # the fMRI dataset of a BrainLM tower


def load_align_data(cfg: AlignDataConfig, brain: BrainRows | None = None,
                    shuffle_seed: int | None = None) -> AlignData:
    """Read the tables and the split, check overlap and leakage, and build row-aligned pairs per split.

    `brain` replaces the `cfg.brain` table (frozen-tower embeddings, or the recordings of a trainable tower).
    `shuffle_seed` (a shuffled-pair null run) pairs every train subject with the genetics of another train subject
    (a seeded permutation without fixed points, per modality); val and test keep their true pairs.
    """
    from brainmm.data.splits import SPLITS, load_split

    if not cfg.genetics:
        raise BrainmmError("align config field 'data.genetics': expected at least one genetics table (name: path)")
    if not cfg.split:
        raise BrainmmError("align config field 'data.split': expected the split table CSV, got nothing")
    split = load_split(cfg.split)  # raises on subjects/groups in two splits
    split_of = dict(zip(split["subject_id"].astype(str), split["split"]))
    if brain is None:
        brain = BrainRows.from_table(_load_table(cfg.brain, "data.brain"), cfg.brain)
    brain_subjects = brain.subjects
    recording_keyed = len(set(brain_subjects)) < len(brain_subjects) or brain_subjects != brain.ids
    genetics: dict[str, EmbeddingTable] = {}
    genetics_subjects: dict[str, list[str]] = {}
    gen_row: dict[str, dict[str, int]] = {}
    brain_set = set(brain_subjects)
    for m, path in cfg.genetics.items():
        table = _load_table(path, f"data.genetics.{m}")
        subjects = table_subjects(table, f"genetics table {path}")
        if len(set(subjects)) != len(subjects):
            raise BrainmmError(f"genetics table {path} ('{m}'): expected one row per subject, found repeated subjects")
        common = brain_set & set(subjects)
        if not common:
            raise BrainmmError(
                f"genetics table {path} ('{m}') and brain table {brain.source} share no subject id: "
                f"{len(brain_set)} brain subjects (e.g. {sorted(brain_set)[:3]}), {len(subjects)} genetics subjects "
                f"(e.g. {sorted(subjects)[:3]}); check that both are keyed by the same subject ids"
            )
        genetics[m], genetics_subjects[m] = table, subjects
        gen_row[m] = {s: i for i, s in enumerate(subjects)}
    if shuffle_seed is not None:
        for k, m in enumerate(genetics):
            gen_row[m] = _shuffled_train_rows(gen_row[m], brain_set, split_of, shuffle_seed + k, m)
    not_in_split = sorted({s for s in brain_set if s not in split_of})
    if len(not_in_split) == len(brain_set):
        raise BrainmmError(
            f"split table {cfg.split}: none of the {len(brain_set)} brain subjects is listed "
            f"(e.g. {sorted(brain_set)[:3]} vs {split['subject_id'].head(3).tolist()})"
        )
    if not_in_split:
        LOG.warning("align: %d brain subjects are not in the split table and are left out (e.g. %s)",
                    len(not_in_split), not_in_split[:3])
    label_of = {s: i for i, s in enumerate(sorted(brain_set))}
    splits: dict[str, SplitData] = {}
    counts: dict[str, Any] = {"brain_rows": len(brain.ids), "brain_subjects": len(brain_set),
                              "subjects_not_in_split": len(not_in_split)}
    for name in SPLITS:
        rows = [i for i, s in enumerate(brain_subjects)
                if split_of.get(s) == name and any(s in gen_row[m] for m in genetics)]
        subjects = [brain_subjects[i] for i in rows]
        gen, masks = {}, {}
        for m, table in genetics.items():
            present = np.array([s in gen_row[m] for s in subjects], dtype=bool)
            vectors = np.zeros((len(rows), table.dim), dtype=np.float32)
            if present.any():
                vectors[present] = table.vectors[[gen_row[m][s] for s, p in zip(subjects, present) if p]]
            gen[m], masks[m] = torch.from_numpy(vectors), torch.from_numpy(present)
        vectors = None if brain.vectors is None else torch.from_numpy(brain.vectors[rows])
        splits[name] = SplitData([brain.ids[i] for i in rows], subjects, vectors, gen, masks,
                                 torch.tensor([label_of[s] for s in subjects], dtype=torch.long))
        counts[f"{name}_pairs"] = len(rows)
        counts[f"{name}_subjects"] = len(set(subjects))
    if len(splits["train"]) < 2:
        raise BrainmmError(f"align: the train split has {len(splits['train'])} brain rows with genetics; need >= 2")
    if counts["val_subjects"] < 2:
        raise BrainmmError(
            f"align: the val split has {counts['val_subjects']} subjects with brain and genetics; validation "
            "retrieval (early stopping) needs >= 2"
        )
    return AlignData(brain, genetics, genetics_subjects, split_of, splits, recording_keyed, counts)


def _shuffled_train_rows(rows: dict[str, int], brain_subjects: set[str], split_of: dict[str, str], seed: int,
                         modality: str) -> dict[str, int]:
    """Subject -> genetics row with the rows of the train subjects (those with brain data) deranged, seeded."""
    from alignment.baselines import shuffled_pairs

    train = sorted(s for s in rows if split_of.get(s) == "train" and s in brain_subjects)
    if len(train) < 2:
        raise BrainmmError(f"align config field 'train.shuffle_pairs': modality {modality!r} has {len(train)} train "
                           "subjects with brain data; need >= 2 to shuffle the pairs")
    perm = shuffled_pairs(len(train), seed)
    out = dict(rows)
    out.update({s: rows[train[j]] for s, j in zip(train, perm)})
    return out


def _first_rows(data: SplitData, modality: str) -> list[int]:
    """One row per subject that has `modality` (the first), in row order."""
    seen: dict[str, int] = {}
    for i, (s, present) in enumerate(zip(data.subjects, data.masks[modality].tolist())):
        if present:
            seen.setdefault(s, i)
    return list(seen.values())


# ------------------------------------------------------------------------------------------ projection


@torch.no_grad()
def project(model: DualEncoder, modality: str, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Shared-space (L2-normalised) embeddings of inputs `x` for 'brain' or a genetics modality, in eval mode."""
    was_training = model.training
    model.eval()
    device = model.logit_scale.device
    encode = model.encode_brain if modality == "brain" else (lambda t: model.encode_genetics(modality, t))
    out = [encode(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


@torch.no_grad()
def project_brain_features(model: DualEncoder, h: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Shared-space embeddings of brain tower outputs `h` [N, D] (the head only), in eval mode."""
    was_training = model.training
    model.eval()
    device = model.logit_scale.device
    out = [F.normalize(model.brain_head(h[i : i + batch_size].to(device)), dim=-1).float().cpu()
           for i in range(0, h.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


@torch.no_grad()
def tower_outputs(tower: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Outputs of a (table: identity) tower for inputs `x`, in eval mode, on CPU."""
    if isinstance(tower, nn.Identity):
        return x
    was_training = tower.training
    tower.eval()
    device = next(tower.parameters()).device
    out = [tower(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    tower.train(was_training)
    return torch.cat(out)


def brain_shared(model: DualEncoder, data: SplitData) -> torch.Tensor:
    """Shared-space brain embeddings of a split's rows (BrainLM tower: mean over each recording's tiled windows)."""
    if data.windows is None:
        return project(model, "brain", data.brain)
    return project_brain_features(model, data.windows.features(model.brain_tower))


def _subject_mean(z: torch.Tensor, subjects: list[str]) -> tuple[list[str], torch.Tensor]:
    """Average the normalised rows of each subject (several recordings) and renormalise."""
    order = sorted(set(subjects))
    index = {s: i for i, s in enumerate(order)}
    rows = torch.tensor([index[s] for s in subjects])
    summed = torch.zeros(len(order), z.shape[1]).index_add_(0, rows, z)
    return order, torch.nn.functional.normalize(summed, dim=-1)


def evaluate_split(model: DualEncoder, data: SplitData, ci: bool = False) -> dict[str, float]:
    """Retrieval brain <-> each genetics modality over the subjects of one split (recordings averaged).

    Uses `alignment.retrieval` (open_clip definitions, pessimistic ties) with exact chance levels for N subjects;
    `ci` adds 95% bootstrap intervals over subjects (`<metric>_ci_low`, `<metric>_ci_high`).
    """
    from alignment.retrieval import bootstrap_rank_metrics, chance_metrics, pair_ranks, rank_metrics

    subjects, brain = _subject_mean(brain_shared(model, data), data.subjects)
    row_of = {s: i for i, s in enumerate(data.subjects)}  # last row of each subject (genetics rows are equal)
    metrics: dict[str, float] = {}
    scores = []
    for m in model.modalities:
        keep = [i for i, s in enumerate(subjects) if bool(data.masks[m][row_of[s]])]
        if len(keep) < 2:
            continue
        genetics = project(model, m, data.genetics[m][[row_of[subjects[i]] for i in keep]])
        chance = chance_metrics(len(keep))
        for direction, ranks in zip((f"brain_to_{m}", f"{m}_to_brain"), pair_ranks(brain[keep], genetics)):
            for key, value in rank_metrics(ranks).items():
                metrics[f"{direction}/{key}"] = value
                metrics[f"{direction}/chance_{key}"] = chance[key]
            if ci:
                for key, (low, high) in bootstrap_rank_metrics(ranks, n_boot=1000, seed=0).items():
                    metrics[f"{direction}/{key}_ci_low"], metrics[f"{direction}/{key}_ci_high"] = low, high
        scores.append(0.5 * (metrics[f"brain_to_{m}/R_at_1"] + metrics[f"{m}_to_brain/R_at_1"]))
    metrics["score"] = float(np.mean(scores)) if scores else float("nan")
    return metrics


# ------------------------------------------------------------------------------------------------ heads


def save_heads(model: DualEncoder, run_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """heads.safetensors (weights, standardisers, temperature) + heads.json (how to rebuild them)."""
    from safetensors.torch import save_file

    weights = {k: v.cpu() for k, v in model.heads_state_dict().items()}
    with atomic_file(run_dir / "heads.safetensors", suffix=".safetensors") as tmp:
        save_file(weights, str(tmp))
    atomic_write_json(run_dir / "heads.json", {"format": "brainmm.align.heads/1", **model.heads_config(), **(extra or {})})
    return run_dir / "heads.safetensors"


def load_heads(run_dir: str | Path) -> DualEncoder:
    """Rebuild the trained heads of an align run folder (identity towers), in eval mode."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg_path, weights_path = run_dir / "heads.json", run_dir / "heads.safetensors"
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise BrainmmError(f"align heads {p}: not found (expected heads.json and heads.safetensors in {run_dir})")
    model = DualEncoder.from_heads_config(json.loads(cfg_path.read_text()), load_file(str(weights_path)))
    return model.eval()


def project_table(model: DualEncoder, table: EmbeddingTable, modality: str, meta: dict[str, Any] | None = None) -> EmbeddingTable:
    """Project a brain ('brain') or genetics (modality name) table into the shared space, keeping its ids.

    The inputs are what the model's tower takes: embeddings for table towers, dosages for a genotype tower.
    """
    z = project(model, modality, torch.from_numpy(table.vectors))
    return EmbeddingTable(table.ids, z.numpy(), {**table.meta, **(meta or {})})


def load_towers(run_dir: str | Path) -> dict[str, Tower]:
    """The BrainLM / genotype towers of an align run folder ('brain' and modality names), in eval mode.

    Trained towers are read from `towers/<name>/`; a frozen BrainLM tower from the checkpoint its tower.json names.
    Sides that used a table have no tower and are left out.
    """
    run_dir = Path(run_dir)
    path = run_dir / "heads.json"
    if not path.is_file():
        raise BrainmmError(f"align heads {path}: not found (expected an align run folder)")
    towers: dict[str, Tower] = {}
    for name, record in json.loads(path.read_text()).get("towers", {}).items():
        folder = run_dir / record["path"]
        towers[name] = BrainLMTower.load(folder) if record["kind"] == "brainlm" else GenotypeTower.load(folder)
    return towers


def load_model(run_dir: str | Path) -> DualEncoder:
    """Heads and towers of an align run folder (`load_heads` + `load_towers`), in eval mode.

    Inputs are then what the towers take: fMRI windows for a BrainLM tower (use `project_fmri`), dosages for a
    genotype tower, embeddings for table sides.
    """
    model = load_heads(run_dir)
    for name, tower in load_towers(run_dir).items():
        if name == "brain":
            model.brain_tower = tower
        else:
            model.genetics_towers[name] = tower
    return model.eval()


def project_fmri(model: DualEncoder, dataset: str | Path, split: str | None = None,
                 batch_size: int = 64) -> EmbeddingTable:
    """Shared-space embeddings of an fMRI dataset's recordings (one split or all) through the model's BrainLM tower:
    the tower's output averaged over each recording's tiled windows, then the brain head."""
    from brainmm.data.fmri import FmriDataset, check_compatible

    tower = model.brain_tower
    if not isinstance(tower, BrainLMTower):
        raise BrainmmError("project_fmri: the model has no BrainLM brain tower (load it with load_model(run_dir))")
    ds = check_compatible(FmriDataset.load(dataset), tower.encoder.config.num_brain_voxels, tower.num_timepoints)
    if ds.coords.shape != tuple(tower.xyz.shape) or not np.allclose(ds.coords, tower.xyz.cpu().numpy(), atol=1e-3):
        raise BrainmmError(f"fMRI dataset {ds.path}: its parcel coordinates differ from those the tower was trained "
                           "with (another atlas or parcel order?)")
    windows = ds.windows(split, tower.num_timepoints, mode="tiled")
    z = project_brain_features(model, tower.tiled_features(windows, batch_size=batch_size))
    subjects = dict(zip(windows.recording_ids, windows.subject_ids))
    meta = {"model": "brainmm.align", "space": "shared", "modality": "brain", "source": str(dataset),
            "split": split or "all", "subject_id": subjects}
    return EmbeddingTable(windows.recording_ids, z.numpy(), meta)


# ------------------------------------------------------------------------------------------------ metrics


# ------------------------------------------------------------------------------------------------ driver


@dataclass
class AlignResult:
    """What `run_align` produced."""

    run_dir: Path
    run_id: str | None
    metrics: dict[str, Any]
    heads: Path
    embeddings: dict[str, dict[str, Path]]


@dataclass
class _Progress:
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


def _train_step(model: nn.Module, core: DualEncoder, loss_fn: AlignmentLoss, optimizer: torch.optim.Optimizer,
                scheduler: Any, batch: tuple, amp: bool, grad_clip: float, info: DistInfo) -> tuple[torch.Tensor, dict]:
    """One optimiser step; returns the (rank-local) loss and per-modality terms; raises on a non-finite loss."""
    brain, genetics, masks, labels = batch
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and info.device.type == "cuda"
                else contextlib.nullcontext())
    with autocast:
        out = model(brain, genetics)
    result = loss_fn(out, labels, masks)
    finite = torch.isfinite(result.loss.detach()).float()
    if info.world_size > 1:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if not bool(finite):
        raise FloatingPointError
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
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
    brain_cfg = towers.brain
    brain_rows, brain_tower, brain_data = None, None, None
    if brain_cfg.kind == "brainlm":
        encoder = load_brainlm_encoder(brain_cfg.checkpoint)
        brain_data = open_brain_dataset(brain_cfg, encoder)
        if not cfg.data.split:
            raise BrainmmError("align config field 'data.split': expected the split table CSV (e.g. the fMRI "
                               f"dataset's {Path(brain_cfg.dataset) / 'split.csv'}), got nothing")
        check_split_agrees(brain_data, cfg.data.split)
        source = f"BrainLM {brain_cfg.checkpoint} on {brain_cfg.dataset}"
        if brain_cfg.trainable == "frozen":
            table = frozen_brain_table(brain_cfg, brain_data, cfg.train.device)
            _check_finite(table, f"frozen BrainLM embeddings ({source})")
            brain_rows = BrainRows.from_table(table, source)
        else:
            brain_tower = BrainLMTower(encoder, brain_data.dataset.coords, brain_cfg.pooling, brain_data.num_timepoints)
            trainable = set_trainable(brain_tower, brain_cfg.trainable, brain_cfg.last_n, "towers.brain")
            LOG.info("align: BrainLM tower %s, %d trainable tensors", brain_cfg.trainable, len(trainable))
            if brain_cfg.gradient_checkpointing:
                encoder.activation_checkpointing_enable()
            meta = {"model": str(brain_cfg.checkpoint), "pooling": brain_cfg.pooling, "dataset": str(brain_cfg.dataset),
                    "num_timepoints": brain_data.num_timepoints}
            brain_rows = BrainRows(brain_data.recording_ids, brain_data.subjects, None, brain_tower.out_dim, meta, source)
    data = load_align_data(cfg.data, brain_rows, cfg.train.seed if cfg.train.shuffle_pairs else None)
    if cfg.train.shuffle_pairs:
        LOG.info("align: train.shuffle_pairs: every train subject is paired with another train subject's genetics "
                 "(seed %d); val and test keep their true pairs", cfg.train.seed)
    LOG.info("align data: %s", ", ".join(f"{key} {value}" for key, value in data.counts.items()))
    train = data.splits["train"]
    data.brain_dataset = brain_data
    if brain_tower is not None:
        for name in ("train", "val"):
            split = data.splits[name]
            split.windows = BrainWindows(brain_data, name, split.row_ids, cfg.train.seed, brain_cfg.eval_batch_size,
                                         cfg.train.amp)

    seed_everything(cfg.train.seed)  # model init must not depend on what loading the data drew (e.g. a DataLoader)
    genetics_towers: dict[str, GenotypeTower] = {}
    for m, table in data.genetics.items():
        gcfg = towers.genetics_tower(m)
        if gcfg.kind == "table":
            continue
        where = f"towers.genetics.{m}"
        check_dosages(table.vectors, cfg.data.genetics[m], f"align config field '{where}'")
        train_rows = [i for i, s in enumerate(data.genetics_subjects[m]) if data.split_of.get(s) == "train"]
        train_dosages = torch.from_numpy(table.vectors[train_rows])  # every training subject of the table
        tower = build_genotype_tower(gcfg, table.dim, train_dosages, where, cfg.data.genetics[m])
        set_trainable(tower, gcfg.trainable, gcfg.last_n, where)
        genetics_towers[m] = tower
        fill = train_dosages.mean(0)  # placeholder rows of subjects without this modality: the training mean
        for split in data.splits.values():
            split.genetics[m][~split.masks[m]] = fill

    dims = {m: (genetics_towers[m].out_dim if m in genetics_towers else t.dim) for m, t in data.genetics.items()}
    core = DualEncoder(data.brain.dim, dims, cfg.head, brain_tower=brain_tower, genetics_towers=genetics_towers,
                       init_logit_scale=cfg.loss.logit_scale_init(), init_logit_bias=cfg.loss.logit_bias_init())
    core.to(info.device).train()
    if cfg.head.standardize:  # statistics of the training split's (initial) tower outputs
        brain_h = train.windows.features(brain_tower) if train.windows is not None else train.brain
        core.brain_head.fit_standardizer(brain_h)
        for m in data.genetics:
            x = train.genetics[m][_first_rows(train, m)]
            core.genetics_heads[m].fit_standardizer(tower_outputs(core.genetics_towers[m], x))
    if not cfg.loss.learnable_temperature:
        core.logit_scale.requires_grad_(False)  # PML losses use their fixed temperature
    tower_lr = {"brain": brain_cfg.lr or cfg.train.lr}
    tower_lr.update({m: towers.genetics_tower(m).lr or cfg.train.lr for m in data.genetics})
    return data, core, tower_lr


def run_align(cfg: AlignConfig, resume: bool = False) -> AlignResult:
    """Train the heads (or continue with `resume`), then write heads, metrics, model card and embeddings."""
    from brainmm import tracking
    from brainmm.runtime import log_to_file, progress

    info = init_distributed(cfg.train.device)
    if info.is_main:  # an unreachable tracking server fails here, in seconds, before any data is read
        check_tracking(cfg.tracking)
    run_dir = Path(cfg.output_dir)
    check_run_dir(run_dir, cfg, resume, "align", markers=(str(CHECKPOINT), "metrics.json"))
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
    optimizer = torch.optim.AdamW(tower_param_groups(core, cfg.train.lr, cfg.train.weight_decay, tower_lr),
                                  betas=tuple(cfg.train.betas), eps=cfg.train.eps)
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

    prog, run_id, best_state = _Progress(), None, None
    if resume:
        if not (run_dir / CHECKPOINT).is_file():
            raise BrainmmError(f"align --resume: no checkpoint at {run_dir / CHECKPOINT}; run without --resume to "
                               "start this run")
        ckpt = load_checkpoint(run_dir / CHECKPOINT, info.device)
        core.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        loss_fn.load_state_dict(ckpt["loss"])
        prog = _Progress(**ckpt["progress"])
        run_id, best_state = ckpt["run_id"], ckpt["best_model"]
        restore_rng_state(ckpt["rng"])
        LOG.info("align: resumed from %s at step %d (epoch %d, batch %d)", run_dir / CHECKPOINT, prog.step,
                 prog.epoch, prog.batch)

    def checkpoint() -> None:
        if info.is_main:
            save_checkpoint(run_dir / CHECKPOINT, {
                "model": core.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "loss": loss_fn.state_dict(), "rng": capture_rng_state(), "progress": vars(prog).copy(),
                "best_model": best_state, "run_id": run_id, "config": dump_yaml(cfg),
            })
        if info.world_size > 1:
            torch.distributed.barrier()

    tags = {"brainmm.stage": "align", "brainmm.run_dir": str(run_dir.resolve()), "loss": cfg.loss.kind,
            "embed_dim": str(core.embed_dim), "seed": str(cfg.train.seed), "genetics": ",".join(modalities),
            "towers": _tower_summary(cfg, modalities), "shuffle_pairs": str(cfg.train.shuffle_pairs)}
    run_ctx = (tracking.start_run(cfg.tracking, run_name=cfg.name, run_id=run_id, tags=None if resume else tags)
               if info.is_main else contextlib.nullcontext())
    with run_ctx as run:
        if info.is_main:
            run_id = run.info.run_id
            atomic_write_json(run_dir / "run.json", {"mlflow_run_id": run_id, "tracking_uri": _tracking_uri()})
            if not resume:
                tracking.log_config(cfg)
                import mlflow

                mlflow.log_params({f"data.{k}": v for k, v in data.counts.items()})
        mlog = MetricLogger(run_id if info.is_main else None, resume)

        first_epoch = prog.epoch
        while not prog.done:
            batches, dropped = epoch_batches(len(train), cfg.train.batch_size, cfg.train.seed, prog.epoch,
                                             info.world_size, info.rank)
            if prog.epoch == first_epoch and dropped:  # the same count every epoch (different pairs): say it once
                LOG.info("align: each epoch drops %d of %d training pairs (incomplete last global batch of %d; "
                         "reshuffled every epoch)", dropped, len(train), cfg.train.batch_size)
            for b in progress(range(prog.batch, len(batches)), desc=f"align epoch {prog.epoch}",
                              total=len(batches) - prog.batch):
                idx = batches[b].to(info.device)
                if train.windows is not None:  # random windows of (seed, epoch, recording) for the BrainLM tower
                    brain = train.windows.batch(batches[b].tolist(), prog.epoch).to(info.device, non_blocking=True)
                else:
                    brain = train_brain[idx]
                batch = (brain, {m: g[idx] for m, g in train_gen.items()},
                         {m: k[idx] for m, k in train_masks.items()} if any_missing else None,
                         train_labels[idx] if use_labels else None)
                try:
                    loss, terms = _train_step(model, core, loss_fn, optimizer, scheduler, batch, cfg.train.amp,
                                              cfg.train.grad_clip, info)
                except FloatingPointError:
                    ids = [train.subjects[i] for i in batches[b].tolist()]
                    raise BrainmmError(
                        f"align: non-finite loss at step {prog.step + 1} (epoch {prog.epoch}); batch subject ids "
                        f"{ids}; nothing was saved for this step (the last checkpoint, if any, is "
                        f"{run_dir / CHECKPOINT}); lower train.lr or check these subjects' embeddings"
                    ) from None
                prog.step += 1
                prog.batch = b + 1
                if prog.step % cfg.train.log_every == 0:
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
                        mlog.log(metrics, prog.step)
                if prog.step % cfg.train.checkpoint_every == 0 and prog.batch < len(batches):
                    checkpoint()
            val_metrics = evaluate_split(core, val)
            prog.history.append({"epoch": float(prog.epoch), "step": float(prog.step), **val_metrics})
            if info.is_main:
                mlog.log({f"align/val/{k}": v for k, v in val_metrics.items()}, prog.step)
                better = val_metrics["score"] > prog.best_score  # the console shows the improvements only
                LOG.log(logging.INFO if better else logging.DEBUG, "align: epoch %d step %d val score (mean R@1) %.4f%s",
                        prog.epoch, prog.step, val_metrics["score"], " (new best)" if better else "")
            if val_metrics["score"] > prog.best_score:
                prog.best_score, prog.best_step, prog.best_epoch, prog.bad_epochs = (
                    val_metrics["score"], prog.step, prog.epoch, 0)
                best_state = {k: v.detach().clone() for k, v in core.state_dict().items()}
            else:
                prog.bad_epochs += 1
            prog.epoch += 1
            prog.batch = 0
            if cfg.train.patience and prog.bad_epochs >= cfg.train.patience:
                prog.stopped_early = True
                LOG.info("align: early stop after epoch %d (no better val score for %d epochs)", prog.epoch - 1,
                         prog.bad_epochs)
            prog.done = prog.stopped_early or prog.epoch >= cfg.train.epochs
            if prog.done or prog.step % cfg.train.checkpoint_every == 0:
                checkpoint()

        if best_state is not None:
            core.load_state_dict(best_state)
        result = _finalize(cfg, core, data, prog, run_dir, run_id, info)
    return result


def _tower_summary(cfg: AlignConfig, modalities: list[str]) -> str:
    """`brain:brainlm/last_n,genotype:genotype_mlp/full` (model towers only), or `tables`."""
    sides = [("brain", cfg.towers.brain)] + [(m, cfg.towers.genetics_tower(m)) for m in modalities]
    return ",".join(f"{name}:{t.kind}/{t.trainable}" for name, t in sides if t.kind != "table") or "tables"


def _tracking_uri() -> str:
    """The active tracking URI, with a relative sqlite path made absolute (run.json must not depend on the cwd)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def _save_towers(cfg: AlignConfig, core: DualEncoder, data: AlignData, run_dir: Path) -> dict[str, dict[str, str]]:
    """Write towers/<name>/ for every model tower (a frozen BrainLM one names its checkpoint); returns the records."""
    records: dict[str, dict[str, str]] = {}
    brain_cfg = cfg.towers.brain
    if brain_cfg.kind == "brainlm":
        meta = {"trainable": brain_cfg.trainable, "checkpoint": str(Path(brain_cfg.checkpoint).resolve()),
                "dataset": str(Path(brain_cfg.dataset).resolve())}
        tower = core.brain_tower
        if not isinstance(tower, BrainLMTower):  # frozen: the heads were trained on its cached embeddings
            tower = BrainLMTower(load_brainlm_encoder(brain_cfg.checkpoint), data.brain_dataset.dataset.coords,
                                 brain_cfg.pooling, data.brain_dataset.num_timepoints)
        tower.save(run_dir / "towers" / "brain", meta, weights=brain_cfg.trainable != "frozen")
        records["brain"] = {"kind": "brainlm", "trainable": brain_cfg.trainable, "path": "towers/brain"}
    for m, tower in core.genetics_towers.items():
        if isinstance(tower, GenotypeTower):
            gcfg = cfg.towers.genetics_tower(m)
            tower.save(run_dir / "towers" / m, {"trainable": gcfg.trainable, "dosages": cfg.data.genetics[m]})
            records[m] = {"kind": "genotype_mlp", "trainable": gcfg.trainable, "path": f"towers/{m}"}
    return records


def _brain_embeddings(cfg: AlignConfig, core: DualEncoder, data: AlignData, split: str) -> EmbeddingTable | None:
    """Shared-space brain embeddings of every brain row of `split` (BrainLM tower: tiled windows, mean per recording)."""
    brain = data.brain
    rows = [i for i, s in enumerate(brain.subjects) if data.split_of.get(s) == split]
    if not rows:
        return None
    ids = [brain.ids[i] for i in rows]
    if brain.vectors is not None:
        z = project(core, "brain", torch.from_numpy(brain.vectors[rows]))
    else:
        windows = BrainWindows(data.brain_dataset, split, ids, cfg.train.seed, cfg.towers.brain.eval_batch_size,
                               cfg.train.amp)
        z = project_brain_features(core, windows.features(core.brain_tower))
    meta = {k: v for k, v in brain.meta.items() if k != "subject_id"}
    if "subject_id" in brain.meta or brain.ids != brain.subjects:  # keep the row -> subject map of the subset
        meta["subject_id"] = {brain.ids[i]: brain.subjects[i] for i in rows}
    return EmbeddingTable(ids, z.numpy(), meta)


def _finalize(cfg: AlignConfig, core: DualEncoder, data: AlignData, prog: _Progress, run_dir: Path,
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
    save_heads(core, run_dir, {"brainmm_version": _version(), "run_id": run_id, "towers": towers})
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
    c, b = data.counts, cfg.towers.brain
    if b.kind == "brainlm":
        train_how = ("heads trained on its tiled-window means, computed once" if b.trainable == "frozen" else
                     "one random window per recording per step; evaluation: mean over tiled windows")
        trainable = f"last {b.last_n} layers + final LayerNorm" if b.trainable == "last_n" else b.trainable
        lines = [f"- brain tower: BrainLM `{b.checkpoint}` ({trainable}, {b.pooling} pooling, windows of "
                 f"{data.brain.meta.get('num_timepoints', data.brain_dataset.num_timepoints)} time points; "
                 f"{train_how}) on fMRI dataset `{b.dataset}` ({data.brain.dim}-D, {c['brain_rows']} recordings, "
                 f"{c['brain_subjects']} subjects)"]
    else:
        lines = [f"- brain table: `{cfg.data.brain}` ({data.brain.dim}-D, {c['brain_rows']} rows, "
                 f"{c['brain_subjects']} subjects, model `{data.brain.meta.get('model', 'unknown')}`)"]
    for m, t in data.genetics.items():
        g = cfg.towers.genetics_tower(m)
        if g.kind == "genotype_mlp":
            what = f"genotype MLP ({g.checkpoint or f'hidden {g.hidden_sizes}, output {g.output_size}'}; {g.trainable})"
            lines.append(f"- genetics `{m}`: {what} on dosages `{cfg.data.genetics[m]}` ({t.dim} SNPs, {len(t.ids)} "
                         "subjects, input scaling fitted on the train split)")
        else:
            lines.append(f"- genetics `{m}`: `{cfg.data.genetics[m]}` ({t.dim}-D, {len(t.ids)} subjects, model "
                         f"`{t.meta.get('model', 'unknown')}`)")
    return lines


def _model_card(cfg: AlignConfig, data: AlignData, metrics: dict[str, Any], core: DualEncoder) -> str:
    """Markdown: data, split sizes, config, validation metrics with chance levels."""
    c = data.counts
    lines = [
        f"# brainmm align: {cfg.name}", "",
        f"Projector heads mapping brain and genetics inputs into a shared {core.embed_dim}-D space "
        f"({cfg.loss.kind} loss). Rebuild with `brainmm.train.align.load_heads(<run folder>)` (heads) or "
        "`load_model(<run folder>)` (heads + towers).", "",
        "## Data", "",
        *_tower_lines(cfg, data),
    ]
    lines += [f"- split table: `{cfg.data.split}`", "", "## Split sizes", "",
              "| split | pairs (brain rows) | subjects |", "|---|---|---|"]
    lines += [f"| {s} | {c[f'{s}_pairs']} | {c[f'{s}_subjects']} |" for s in ("train", "val", "test")]
    lines += ["", "## Validation retrieval (best epoch)", "",
              f"Best step {metrics['best_step']} (epoch {metrics['best_epoch']}); stopped early: "
              f"{metrics['stopped_early']}. Recordings of one subject are averaged; chance R@k = k/N.", "",
              "| direction | R@1 [95% CI] | chance R@1 | R@10 [95% CI] | chance R@10 | median rank (chance) |",
              "|---|---|---|---|---|---|"]
    val = metrics["val"]

    def cell(d: str, key: str) -> str:
        return f"{val[f'{d}/{key}']:.3f} [{val[f'{d}/{key}_ci_low']:.3f}, {val[f'{d}/{key}_ci_high']:.3f}]"

    for d in sorted({k.split("/")[0] for k in val if "/" in k}):
        lines.append(f"| {d} | {cell(d, 'R_at_1')} | {val[d + '/chance_R_at_1']:.3f} | {cell(d, 'R_at_10')} | "
                     f"{val[d + '/chance_R_at_10']:.3f} | {val[d + '/median_rank']:.0f} "
                     f"({val[d + '/chance_median_rank']:.0f}) |")
    lines += ["", "## Config", "", "```yaml", dump_yaml(cfg).rstrip(), "```", ""]
    return "\n".join(lines)

