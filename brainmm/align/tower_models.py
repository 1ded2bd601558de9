"""Tower modules of `brainmm align` (the kinds themselves live in `brainmm.align.kinds`): `Tower` (blocks for
last-N fine-tuning, frozen batch norms kept in eval mode), `set_trainable`, the genotype MLP tower (`GenotypeTower`:
`encoders.genotype.GenotypeEncoder` on a dosage-matrix table, input scaling fitted on the training subjects), the
per-tower optimiser groups and the precision a frozen tower embeds in.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from brainmm.errors import BrainmmError
from brainmm.io import atomic_dir
from encoders.precision import resolve_precision
from encoders.weights import quiet_transformers, read_json

if TYPE_CHECKING:
    from brainmm.align.kinds.genotype_mlp import GenotypeMLPTowerConfig
    from encoders.genotype import GenotypeEncoder


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


# ----------------------------------------------------------------------------------------- precision


def tower_precision(precision: str, device: str = "auto") -> str:
    """The embed `precision` that matches the training core's `autocast(precision, device)` on `device`."""
    from brainmm.distributed import resolve_device

    return resolve_precision(precision, resolve_device(device))


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
        from brainmm.embed.model import write_tower_file

        folder = Path(folder)
        with atomic_dir(folder, overwrite=True) as tmp:
            with quiet_transformers():
                self.encoder.save_pretrained(tmp)
            write_tower_file(tmp, "genotype_mlp", meta or {})
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


def build_genotype_tower(cfg: GenotypeMLPTowerConfig, n_snps: int, train_dosages: torch.Tensor, where: str,
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
