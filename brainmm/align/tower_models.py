"""Towers for `brainmm align`, built from the `towers` config section: BrainLM on fMRI windows, a genotype MLP on
dosages, or `table` (precomputed embeddings, identity tower); what each trains (frozen / last N blocks / full / LoRA).

- `BrainLMTower` (`encoders.brainlm.tower`): a BrainLM encoder of either architecture (Nystromformer `brainlm_mae`
  or ViT-MAE `vit_mae`) that embeds `[B, V, T]` windows of one fMRI dataset (its parcel coordinates are held by the
  tower). Training reads one random window per recording per step; evaluation averages the embeddings of the tiled
  windows of each recording (`BrainWindows`). Saved as what fine-tuning changed + the base checkpoint's hash.
- A frozen BrainLM tower is never run during training: `frozen_brain_table` gets the embedding of every recording
  (tiled windows, mean per recording) from the `brainmm embed` stage's cache (keyed by model hash, dataset hash,
  pooling and window length; computed once), and the heads train on that table.
- `GenotypeTower`: `encoders.genotype.GenotypeEncoder` on a dosage-matrix table (`brainmm genetics matrix`), input
  scaling fitted on the training subjects.
"""

from __future__ import annotations

import math
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from brainmm.align.tower_config import (  # noqa: F401 (re-exported)
    BrainTowerConfig,
    BrainTrainable,
    GeneticsTowerConfig,
    TowersConfig,
    Trainable,
)
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.io import atomic_dir, atomic_write_json
from brainmm.train.common import eval_mode
from encoders.brainlm.tower import BrainLMTower
from encoders.precision import autocast, resolve_precision
from encoders.weights import quiet_transformers, read_json

if TYPE_CHECKING:
    from brainmm.data.fmri import FmriDataset, FmriWindows
    from encoders.genotype import GenotypeEncoder

TOWER_FILE = "tower.json"


# ----------------------------------------------------------------------------------------------- config


# ------------------------------------------------------------------------------------------ freezing


class Tower(nn.Module, ABC):
    """A tower with repeated `blocks()` (for last-N fine-tuning); frozen batch norms stay in eval mode."""

    @abstractmethod
    def blocks(self) -> list[nn.Module]:
        """The repeated blocks, input side first."""

    def final_modules(self) -> list[nn.Module]:
        """Modules after the last block that train with any last-N setting (e.g. a final LayerNorm)."""
        return []

    def train(self, mode: bool = True) -> Tower:
        """Like nn.Module.train, but batch norms whose parameters are all frozen keep their running statistics."""
        from alignment.model import keep_frozen_in_eval

        super().train(mode)
        keep_frozen_in_eval(m for m in self.modules()
                            if isinstance(m, nn.modules.batchnorm._BatchNorm) and list(m.parameters()))
        return self


def set_trainable(tower: Tower, trainable: str, last_n: int, where: str) -> list[str]:
    """Freeze the tower, unfreeze its last `last_n` blocks (+ final modules), or all of it; returns trainable names."""
    from alignment import set_tower_trainable

    blocks = tower.blocks()
    if trainable == "last_n" and last_n > len(blocks):
        raise BrainmmError(f"align config field '{where}.last_n': {last_n} is more than the {len(blocks)} blocks "
                           f"of this tower ({type(tower).__name__})")
    set_tower_trainable(tower, {"frozen": 0, "full": None}.get(trainable, last_n), lambda _: blocks)
    if trainable == "last_n":
        for module in tower.final_modules():
            module.requires_grad_(True)
    tower.train(tower.training)  # re-apply the frozen-batch-norm rule
    return [n for n, p in tower.named_parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------------- BrainLM


def tiled_features(tower: BrainLMTower, windows: FmriWindows, positions: Sequence[int] | None = None,
                   batch_size: int = 64, precision: str = "fp32") -> torch.Tensor:
    """Mean tower embedding over the tiled windows of each recording at `positions` of `windows` (default: all).

    Runs in eval mode without gradients (the mode is restored); returns float32 `[len(positions), H]` on CPU.
    """
    if windows.mode != "tiled":
        raise BrainmmError(f"tiled_features: expected tiled windows, got mode {windows.mode!r}")
    positions = list(range(len(windows.recording_ids))) if positions is None else list(positions)
    slot = {p: i for i, p in enumerate(positions)}
    items = [j for j in range(len(windows)) if int(windows.items[j, 0]) in slot]
    device = tower.coords.device
    sums = torch.zeros(len(positions), tower.out_dim, dtype=torch.float64, device=device)
    counts = torch.zeros(len(positions), dtype=torch.float64, device=device)
    with eval_mode(tower):
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            signal = torch.stack([windows[j]["signal_vectors"] for j in chunk]).to(device, non_blocking=True)
            with autocast(precision, device):
                h = tower(signal)
            rows = torch.tensor([slot[int(windows.items[j, 0])] for j in chunk], device=device)
            sums.index_add_(0, rows, h.double())  # on the device: no host sync per batch
            counts.index_add_(0, rows, torch.ones(len(chunk), dtype=torch.float64, device=device))
    return (sums / counts.clamp_min(1).unsqueeze(1)).float().cpu()


def check_brainlm_pooling(cfg: BrainTowerConfig) -> str:
    """`towers.brain.pooling` must exist for the checkpoint's architecture; returns its model_type."""
    from brainmm.embed.model import read_model_config
    from encoders.brainlm.tower import POOLINGS

    model_type = read_model_config(cfg.checkpoint, "align config field 'towers.brain.checkpoint'")["model_type"]
    if cfg.pooling not in POOLINGS[model_type]:
        raise BrainmmError(f"align config field 'towers.brain.pooling': {cfg.pooling!r} is not available for a "
                           f"{model_type} BrainLM ({cfg.checkpoint}); expected one of {list(POOLINGS[model_type])}")
    return model_type


def build_brainlm_tower(cfg: BrainTowerConfig, data: BrainDataset) -> BrainLMTower:
    """The align tower of `towers.brain` (either architecture, its trainable mode set) on `data`'s parcels."""
    from encoders.brainlm.finetune import load_tower
    from encoders.errors import EncoderInputError

    where = "align config field 'towers.brain"
    check_brainlm_pooling(cfg)
    try:
        with quiet_transformers():
            tower = load_tower(cfg.checkpoint, data.dataset.coords, cfg.pooling)
    except EncoderInputError as err:
        raise BrainmmError(f"{where}.checkpoint': {err}") from None
    depth = len(tower.blocks())
    if cfg.trainable == "last_n" and cfg.last_n > depth:
        raise BrainmmError(f"{where}.last_n': {cfg.last_n} is more than the {depth} blocks of the "
                           f"{tower.model_type} encoder in {cfg.checkpoint}")
    try:
        tower.set_trainable(cfg.trainable, cfg.last_n, cfg.lora if cfg.trainable == "lora" else None)
    except EncoderInputError as err:
        raise BrainmmError(f"{where}.{'lora' if cfg.trainable == 'lora' else 'trainable'}': {err}") from None
    tower.gradient_checkpointing(cfg.gradient_checkpointing)
    tower.num_timepoints = data.num_timepoints
    return tower.eval()


def save_brainlm_tower(tower: BrainLMTower, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write what fine-tuning changed (`encoders.brainlm.finetune.save_finetuned`: the trainable tensors, the base
    folder and its weights hash) and tower.json (kind, window length, `meta`), as one atomic folder."""
    from encoders.brainlm.finetune import save_finetuned

    folder = Path(folder)
    with atomic_dir(folder, overwrite=True) as tmp:
        save_finetuned(tower, tmp)
        atomic_write_json(tmp / TOWER_FILE, {"kind": "brainlm", "model_type": tower.model_type,
                                             "pooling": tower.pooling,
                                             "num_timepoints": int(getattr(tower, "num_timepoints", 0)), **meta})
    return folder


@dataclass
class BrainDataset:
    """The fMRI dataset of a BrainLM tower, checked against the model, and the window length."""

    dataset: FmriDataset
    num_timepoints: int

    @property
    def recording_ids(self) -> list[str]:
        """Every recording, storage order."""
        return self.dataset.recording_ids()

    @property
    def subjects(self) -> list[str]:
        """Subject of every recording, storage order."""
        return [str(s) for s in self.dataset.recordings["subject_id"]]


def open_brain_dataset(cfg: BrainTowerConfig) -> BrainDataset:
    """Load `towers.brain.dataset` and check it fits the checkpoint (parcels, window length, time patch).

    A ViT-MAE checkpoint takes windows of exactly 424 parcels x 200 time points (its tower sorts the parcels by Y
    itself, so any parcel order of the dataset works); a Nystromformer one the parcel count of its config and
    windows that are a multiple of its time patch.
    """
    from brainmm.data.fmri import FmriDataset, check_compatible
    from brainmm.embed.model import read_model_config
    from encoders.brainlm import BrainLMConfig
    from encoders.brainlm.vit import NUM_PARCELS, NUM_TIMEPOINTS

    config = read_model_config(cfg.checkpoint, "align config field 'towers.brain.checkpoint'")
    vit = config["model_type"] == "vit_mae"
    if vit and cfg.num_timepoints not in (0, NUM_TIMEPOINTS):
        raise BrainmmError(f"align config field 'towers.brain.num_timepoints': a ViT-MAE BrainLM ({cfg.checkpoint}) "
                           f"takes windows of exactly {NUM_TIMEPOINTS} time points, got {cfg.num_timepoints}")
    defaults = BrainLMConfig()
    parcels = NUM_PARCELS if vit else int(config.get("num_brain_voxels", defaults.num_brain_voxels))
    try:
        ds = FmriDataset.load(cfg.dataset)
        t = NUM_TIMEPOINTS if vit else (cfg.num_timepoints or ds.num_timepoints)
        check_compatible(ds, parcels, t)
    except BrainmmError as err:
        what = f" (a ViT-MAE BrainLM takes windows of {NUM_PARCELS} parcels x {NUM_TIMEPOINTS} time points)" if vit else ""
        raise BrainmmError(f"align config field 'towers.brain.dataset': {err}{what}") from None
    patch = None if vit else int(config.get("timepoint_patching_size", defaults.timepoint_patching_size))
    if patch and t % patch:
        raise BrainmmError(f"align config field 'towers.brain.num_timepoints': windows of {t} time points are not a "
                           f"multiple of the checkpoint's timepoint_patching_size={patch}")
    return BrainDataset(ds, t)


def check_split_agrees(data: BrainDataset, split_path: str | Path) -> None:
    """The align split must put every shared subject where the dataset's split did (its statistics are train-fitted)."""
    from brainmm.data.splits import load_split

    ours = load_split(split_path)
    mine = dict(zip(ours["subject_id"].astype(str), ours["split"]))
    theirs = data.dataset.split
    bad = [(s, sp, mine[s]) for s, sp in zip(theirs["subject_id"].astype(str), theirs["split"])
           if s in mine and mine[s] != sp]
    if bad:
        s, sp, other = bad[0]
        raise BrainmmError(
            f"data.split {split_path} and the split of fMRI dataset {data.dataset.path} disagree for {len(bad)} "
            f"subject(s), e.g. {s!r} is '{other}' here and '{sp}' in the dataset, whose normalisation statistics were "
            f"fitted on its train split; ingest with --split-from {split_path} (or use the dataset's split.csv)"
        )


class BrainWindows:
    """Some recordings (`recording_ids`) of one split: a random window each per step, or all tiled windows.

    Random windows come from `FmriDataset.windows(split, mode="random", seed)`: the window of a recording depends
    only on (seed, epoch, the recording's position in the split), never on batch order or process.
    """

    def __init__(self, data: BrainDataset, split: str | None, recording_ids: Sequence[str], seed: int,
                 batch_size: int = 64, precision: str = "fp32") -> None:
        self.random = data.dataset.windows(split, data.num_timepoints, mode="random", seed=seed)
        self.tiled = data.dataset.windows(split, data.num_timepoints, mode="tiled", seed=seed)
        position = {r: i for i, r in enumerate(self.random.recording_ids)}
        self.positions = [position[r] for r in recording_ids]
        self.batch_size, self.precision = batch_size, precision  # tiled embedding: windows per pass, train.precision

    def __len__(self) -> int:
        return len(self.positions)

    def batch(self, rows: Sequence[int], epoch: int) -> torch.Tensor:
        """Random windows `[B, V, T]` of the recordings at `rows` for `epoch`."""
        self.random.set_epoch(epoch)
        return torch.stack([self.random[self.positions[r]]["signal_vectors"] for r in rows])

    def features(self, tower: BrainLMTower) -> torch.Tensor:
        """Tower embeddings `[rows, H]`: the mean over each recording's tiled windows (eval mode, no gradients)."""
        return tiled_features(tower, self.tiled, self.positions, self.batch_size, self.precision)


def tower_precision(precision: str, device: str = "auto") -> str:
    """The embed `precision` that matches the training core's `autocast(precision, device)` on `device`."""
    from brainmm.distributed import resolve_device

    return resolve_precision(precision, resolve_device(device))


def frozen_brain_table(cfg: BrainTowerConfig, data: BrainDataset, device: str = "auto",
                       precision: str = "auto") -> EmbeddingTable:
    """Embeddings of every recording of `data` by the frozen `cfg.checkpoint`, from the `brainmm embed` cache.

    One vector per recording: the mean over its tiled windows (the embedding the trainable tower uses for
    evaluation). `brainmm.embed.run_brain_embed` computes it once (every torchrun rank a slice) and caches it under
    `cfg.cache_dir` by model hash, dataset hash, pooling and window length; later runs read it without running the
    model. Keyed by recording, with `meta.subject_id`. Call it on every rank.
    """
    from brainmm.distributed import broadcast_object
    from brainmm.embed import EmbedConfig, run_brain_embed

    with tempfile.TemporaryDirectory() as tmp:  # run_brain_embed also publishes a copy; the cache entry is what we read
        result = run_brain_embed(EmbedConfig(
            model=str(cfg.checkpoint), dataset=str(cfg.dataset), pooling=cfg.pooling,
            num_timepoints=data.num_timepoints, batch_size=cfg.eval_batch_size, device=device,
            precision=tower_precision(precision, device), cache_dir=cfg.cache_dir or None, out=str(Path(tmp) / "brain")))
    entry = broadcast_object(None if result is None else str(result.cache_entry))  # rank 0 has the result
    return EmbeddingTable.load(Path(entry) / "recordings")


# ------------------------------------------------------------------------------------------- genotype


class GenotypeTower(Tower):
    """`GenotypeEncoder` on dosages `[B, n_snps]` in [0, 2] -> `[B, output_size]`."""

    def __init__(self, encoder: GenotypeEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    @property
    def out_dim(self) -> int:
        """Embedding width."""
        return int(self.encoder.output_size)

    def blocks(self) -> list[nn.Module]:
        """One block per Linear layer with what follows it (activation, norm, dropout); the output Linear is last."""
        groups: list[list[nn.Module]] = []
        for module in self.encoder.mlp:
            if isinstance(module, nn.Linear) or not groups:
                groups.append([])
            groups[-1].append(module)
        return [nn.ModuleList(g) for g in groups]

    def forward(self, dosages: torch.Tensor) -> torch.Tensor:
        """dosages `[B, n_snps]` -> `[B, output_size]`."""
        return self.encoder(dosages)

    def save(self, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write the encoder (save_pretrained, input scaling included) and tower.json, atomically."""
        folder = Path(folder)
        with atomic_dir(folder, overwrite=True) as tmp:
            with quiet_transformers():
                self.encoder.save_pretrained(tmp)
            atomic_write_json(tmp / TOWER_FILE, {"kind": "genotype_mlp", **(meta or {})})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> GenotypeTower:
        """Rebuild a tower written by `save` (eval mode)."""
        from brainmm.embed.model import read_tower_file

        read_tower_file(Path(folder), "genotype_mlp")
        return cls(load_genotype_encoder(folder, f"tower {folder}")).eval()


def load_genotype_encoder(folder: str | Path, where: str) -> GenotypeEncoder:
    """A saved GenotypeEncoder folder (local files only), float32; `where` starts every error message."""
    from encoders.brainlm.checkpoint import check_memory_budget, planned_shapes
    from encoders.errors import EncoderInputError
    from encoders.genotype import GenotypeEncoder

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise BrainmmError(f"{where}: {folder} is not a GenotypeEncoder folder (no config.json)")
    try:
        read_json(folder / "config.json")  # bad JSON, nesting too deep: one line
        with quiet_transformers():
            config = GenotypeEncoder.config_class.from_pretrained(folder, local_files_only=True)
            planned = planned_shapes(GenotypeEncoder, config)  # on the meta device: nothing allocated
            check_memory_budget(sum(math.prod(shape) * size for shape, size in planned.values()),
                                "the genotype tower its config.json describes")
            return GenotypeEncoder.from_pretrained(folder, local_files_only=True).float()
    except (EncoderInputError, OSError) as err:
        raise BrainmmError(f"{where}: cannot load {folder} ({err})") from None
    except Exception as err:  # noqa: BLE001 (a config field of the wrong type fails anywhere in transformers/torch)
        raise BrainmmError(f"{where}: cannot load {folder}: its config.json does not describe a GenotypeEncoder "
                           f"({err.__class__.__name__}: {' '.join(str(err).split())[:200]})") from None


def check_dosages(vectors: np.ndarray, table: str, where: str) -> None:
    """A genotype_mlp input must be a dosage matrix: finite values in [0, 2]."""
    if vectors.size == 0:
        return
    low, high = float(vectors.min()), float(vectors.max())
    if low < 0 or high > 2:
        raise BrainmmError(f"{where}: genotype_mlp needs a dosage matrix (values in [0, 2], `brainmm genetics "
                           f"matrix`), but table {table} has values in [{low:g}, {high:g}]")


def build_genotype_tower(cfg: GeneticsTowerConfig, n_snps: int, train_dosages: torch.Tensor, where: str,
                         table: str) -> GenotypeTower:
    """A fresh encoder (input scaling fitted on `train_dosages`, the training subjects) or one from `checkpoint`."""
    from encoders.genotype import GenotypeEncoder, GenotypeEncoderConfig

    if cfg.n_snps and cfg.n_snps != n_snps:
        raise BrainmmError(f"align config field '{where}.n_snps': {cfg.n_snps}, but the dosage table {table} has "
                           f"{n_snps} columns")
    if cfg.checkpoint:
        encoder = load_genotype_encoder(cfg.checkpoint, f"align config field '{where}.checkpoint'")
        got = encoder.config.n_snps
        if got != n_snps or encoder.config.n_scores:
            raise BrainmmError(f"align config field '{where}.checkpoint': the encoder in {cfg.checkpoint} takes "
                               f"n_snps={got} (+ n_scores={encoder.config.n_scores}), but the dosage table {table} "
                               f"has {n_snps} columns")
    else:
        encoder = GenotypeEncoder(GenotypeEncoderConfig(
            n_snps=n_snps, hidden_sizes=cfg.hidden_sizes, output_size=cfg.output_size, activation=cfg.activation,
            norm=cfg.norm, dropout=cfg.dropout))
        encoder.fit_input_scaling(train_dosages)
    return GenotypeTower(encoder)


# ------------------------------------------------------------------------------------------ optimizer


def tower_param_groups(core: nn.Module, lr: float, weight_decay: float,
                       tower_lr: dict[str, float]) -> list[dict[str, Any]]:
    """`alignment.param_groups` with the tower groups split per tower (`tower_<name>[_no_decay]`) at their own lr.

    `tower_lr` maps "brain" and modality names to learning rates; the decay rule is the library's (no weight
    decay on norms, biases and the temperature).
    """
    from alignment import param_groups

    owner = {id(p): "brain" for p in core.brain_tower.parameters()}
    for m, tower in core.genetics_towers.items():
        owner.update({id(p): m for p in tower.parameters()})
    groups: list[dict[str, Any]] = []
    for group in param_groups(core, lr, weight_decay):
        if not group["name"].startswith("towers"):
            groups.append(group)
            continue
        suffix = group["name"][len("towers"):]
        split: dict[str, list[nn.Parameter]] = {}
        for p in group["params"]:
            split.setdefault(owner[id(p)], []).append(p)
        groups += [{**group, "name": f"tower_{name}{suffix}", "params": params, "lr": tower_lr.get(name, lr)}
                   for name, params in split.items()]
    return groups


class DosageMLP(nn.Module):
    """A genotype tower's inference path (input scaling, then the MLP) without the encoder's data-dependent input
    checks, which torch.export cannot trace; callers pass dosages in [0, 2] without NaN."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, dosages: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_unchecked(dosages)
