"""Tower registry of the align stage: one registration per tower kind (`table`, `brainlm`, `genotype_mlp`).

Each `TowerKind` knows how to build its side for training, save and load its tower folder, describe it in the
model card and export it; the rest of brainmm looks kinds up here (`tower_kind(name)`) instead of testing strings.

    @register_tower("my_kind", sides=("genetics",))
    class MyKind(TowerKind): ...
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from brainmm.errors import BrainmmError

if TYPE_CHECKING:  # the registry imports no torch: configs are checked before any model code loads
    from torch import nn

    from brainmm.align.tower_models import BrainDataset

LOG = logging.getLogger("brainmm.align")
_REGISTRY: dict[str, TowerKind] = {}


@dataclass
class BrainSide:
    """What building the brain side gives: precomputed rows (or a trainable tower's recordings), the tower, the
    fMRI dataset it reads (None for tables)."""

    rows: Any | None = None  # brainmm.align.data.BrainRows; None: read cfg.data.brain
    tower: nn.Module | None = None
    dataset: BrainDataset | None = None


class TowerKind(ABC):
    """One tower kind. Subclasses override the hooks of the sides they serve; `table` is the no-model kind."""

    name: ClassVar[str] = ""
    sides: ClassVar[tuple[str, ...]] = ()
    has_model: ClassVar[bool] = True

    def check(self, cfg: Any, side: str, where: str) -> None:
        """Field checks of a tower section (`towers.brain`, `towers.genetics.<m>`) that need no files (default: none)."""
        return None

    def build_brain(self, cfg: Any, device: str) -> BrainSide:
        """The brain side of a run (inputs, tower) from the align config."""
        raise BrainmmError(f"tower kind {self.name!r} cannot be the brain tower")

    def build_genetics(self, cfg: Any, modality: str, table: Any, train_rows: list[int]) -> nn.Module | None:
        """The tower of one genetics modality (None: the table's vectors go to the head directly)."""
        raise BrainmmError(f"tower kind {self.name!r} cannot be a genetics tower")

    def save(self, cfg: Any, name: str, tower: nn.Module | None, data: Any, folder: Path) -> dict[str, str] | None:
        """Write the tower folder of side `name`; returns its heads.json record (None: nothing to save)."""
        return None

    def load(self, folder: Path) -> nn.Module:
        """Read a tower folder written by `save`, in eval mode."""
        raise BrainmmError(f"tower kind {self.name!r} has no tower folder")

    @abstractmethod
    def describe(self, cfg: Any, data: Any, name: str) -> str:
        """The model-card line of side `name`."""

    def export(self, module: nn.Module) -> nn.Module:
        """The tower as an exportable module (default: itself)."""
        return module


def register_tower(name: str, sides: tuple[str, ...]):
    """Class decorator: register a TowerKind subclass under `name` for the given sides ('brain', 'genetics')."""

    def wrap(cls: type[TowerKind]) -> type[TowerKind]:
        if name in _REGISTRY:
            raise ValueError(f"tower kind {name!r} is already registered by {type(_REGISTRY[name]).__module__}")
        cls.name, cls.sides = name, tuple(sides)
        _REGISTRY[name] = cls()
        return cls

    return wrap


def tower_kind(name: str, side: str | None = None) -> TowerKind:
    """The registered kind `name` (checked to serve `side` when given)."""
    kind = _REGISTRY.get(name)
    if kind is None or (side is not None and side not in kind.sides):
        names = sorted(k for k, v in _REGISTRY.items() if side is None or side in v.sides)
        raise BrainmmError(f"tower kind {name!r}: expected one of {names}")
    return kind


def list_towers(side: str | None = None) -> list[str]:
    """Names of the registered kinds (serving `side` when given)."""
    return sorted(k for k, v in _REGISTRY.items() if side is None or side in v.sides)


def kind_of(module: nn.Module) -> TowerKind | None:
    """The registered kind whose tower class `module` is (None for heads-only modules)."""
    for kind in _REGISTRY.values():
        cls = getattr(kind, "tower_class", None)
        if cls is not None and isinstance(module, cls):
            return kind
    return None


def check_towers(towers: Any) -> None:
    """Check every tower section of a `TowersConfig` through its kind."""
    tower_kind(towers.brain.kind, "brain").check(towers.brain, "brain", "towers.brain")
    for m, tower in towers.genetics.items():
        tower_kind(tower.kind, "genetics").check(tower, "genetics", f"towers.genetics.{m}")


def _check_trainable(trainable: str, last_n: int, lr: float | None, where: str) -> None:
    if trainable == "last_n" and last_n < 1:
        raise BrainmmError(f"align config field '{where}.last_n': trainable: last_n needs last_n >= 1, got {last_n}")
    if trainable != "last_n" and last_n != 0:
        raise BrainmmError(f"align config field '{where}.last_n': only used with trainable: last_n (got trainable: "
                           f"{trainable}); remove it or set trainable: last_n")
    if lr is not None and not lr > 0:
        raise BrainmmError(f"align config field '{where}.lr': expected > 0 or null (= train.lr), got {lr}")


# ------------------------------------------------------------------------------------------------ kinds


@register_tower("table", sides=("brain", "genetics"))
class TableTower(TowerKind):
    """No model: an embedding table's vectors feed the head."""

    has_model = False

    def check(self, cfg: Any, side: str, where: str) -> None:
        if side == "brain":
            given = [k for k in ("checkpoint", "dataset") if getattr(cfg, k)]
            if cfg.trainable != "frozen":
                given.append("trainable")
            if given:
                raise BrainmmError(f"align config field '{where}.{given[0]}': a table tower has no model to load or "
                                   "train; set kind: brainlm to use a BrainLM checkpoint")
        elif cfg.checkpoint:
            raise BrainmmError(f"align config field '{where}.checkpoint': a table tower has no model; set "
                               "kind: genotype_mlp")

    def build_brain(self, cfg: Any, device: str) -> BrainSide:
        return BrainSide()

    def build_genetics(self, cfg: Any, modality: str, table: Any, train_rows: list[int]) -> nn.Module | None:
        return None

    def describe(self, cfg: Any, data: Any, name: str) -> str:
        c = data.counts
        if name == "brain":
            return (f"- brain table: `{cfg.data.brain}` ({data.brain.dim}-D, {c['brain_rows']} rows, "
                    f"{c['brain_subjects']} subjects, model `{data.brain.meta.get('model', 'unknown')}`)")
        t = data.genetics[name]
        return (f"- genetics `{name}`: `{cfg.data.genetics[name]}` ({t.dim}-D, {len(t.ids)} subjects, model "
                f"`{t.meta.get('model', 'unknown')}`)")


@register_tower("brainlm", sides=("brain",))
class BrainLMKind(TowerKind):
    """A BrainLM encoder (Nystromformer or ViT-MAE, from the checkpoint's model_type) on an fMRI dataset: frozen
    (its embeddings computed once), last N blocks, full, or LoRA adapters (peft)."""

    @property
    def tower_class(self) -> type:
        """The tower module class (for `kind_of`)."""
        from brainmm.align.tower_models import BrainLMTower

        return BrainLMTower

    def check(self, cfg: Any, side: str, where: str) -> None:
        from encoders.brainlm.lora import require_peft
        from encoders.errors import EncoderInputError

        for name in ("checkpoint", "dataset"):
            if not getattr(cfg, name):
                raise BrainmmError(f"align config field '{where}.{name}': kind brainlm needs it, got nothing")
        if cfg.num_timepoints < 0:
            raise BrainmmError(f"align config field '{where}.num_timepoints': expected >= 0 (0 = the dataset's), "
                               f"got {cfg.num_timepoints}")
        if cfg.eval_batch_size < 1:
            raise BrainmmError(f"align config field '{where}.eval_batch_size': expected >= 1, got {cfg.eval_batch_size}")
        _check_trainable(cfg.trainable, cfg.last_n, cfg.lr, where)
        try:
            cfg.lora.check()
            if cfg.trainable == "lora":
                require_peft()
        except EncoderInputError as err:
            raise BrainmmError(f"align config field '{where}.lora': {err}") from None
        if cfg.trainable != "lora" and cfg.lora != type(cfg.lora)():
            raise BrainmmError(f"align config field '{where}.lora': only used with trainable: lora (got trainable: "
                               f"{cfg.trainable}); remove it or set trainable: lora")

    def build_brain(self, cfg: Any, device: str) -> BrainSide:
        from brainmm.align.data import BrainRows, check_table_finite
        from brainmm.align.tower_models import (
            build_brainlm_tower,
            check_brainlm_pooling,
            check_split_agrees,
            frozen_brain_table,
            open_brain_dataset,
        )

        b = cfg.towers.brain
        check_brainlm_pooling(b)
        dataset = open_brain_dataset(b)
        if not cfg.data.split:
            raise BrainmmError("align config field 'data.split': expected the split table CSV (e.g. the fMRI "
                               f"dataset's {Path(b.dataset) / 'split.csv'}), got nothing")
        check_split_agrees(dataset, cfg.data.split)
        source = f"BrainLM {b.checkpoint} on {b.dataset}"
        if b.trainable == "frozen":
            table = frozen_brain_table(b, dataset, device, cfg.train.precision)  # the precision the training core uses
            check_table_finite(table, f"frozen BrainLM embeddings ({source})")
            return BrainSide(BrainRows.from_table(table, source), None, dataset)
        tower = build_brainlm_tower(b, dataset)
        LOG.info("align: BrainLM tower (%s) %s, %d trainable tensors", tower.model_type, b.trainable,
                 len(tower.trainable_names()))
        meta = {"model": str(b.checkpoint), "model_type": tower.model_type, "pooling": b.pooling,
                "dataset": str(b.dataset), "num_timepoints": dataset.num_timepoints}
        rows = BrainRows(dataset.recording_ids, dataset.subjects, None, tower.out_dim, meta, source)
        return BrainSide(rows, tower, dataset)

    def save(self, cfg: Any, name: str, tower: nn.Module | None, data: Any, folder: Path) -> dict[str, str] | None:
        from brainmm.align.tower_models import BrainLMTower, build_brainlm_tower, save_brainlm_tower

        b = cfg.towers.brain
        if not isinstance(tower, BrainLMTower):  # frozen: the heads were trained on its cached embeddings
            tower = build_brainlm_tower(b, data.brain_dataset)
        save_brainlm_tower(tower, folder / name, {"trainable": b.trainable, "dataset": str(Path(b.dataset).resolve())})
        return {"kind": self.name, "trainable": b.trainable, "path": f"towers/{name}"}

    def load(self, folder: Path) -> nn.Module:
        from brainmm.embed.model import load_brainlm_tower

        return load_brainlm_tower(folder)

    def describe(self, cfg: Any, data: Any, name: str) -> str:
        c, b = data.counts, cfg.towers.brain
        train_how = ("heads trained on its tiled-window means, computed once" if b.trainable == "frozen" else
                     "one random window per recording per step; evaluation: mean over tiled windows")
        trainable = {"last_n": f"last {b.last_n} blocks + final LayerNorm",
                     "lora": f"LoRA rank {b.lora.rank}, alpha {b.lora.alpha:g} on "
                             f"{b.lora.target_modules or 'the attention projections'}"}.get(b.trainable, b.trainable)
        model_type = data.brain.meta.get("model_type", "BrainLM")
        return (f"- brain tower: BrainLM `{b.checkpoint}` ({model_type}; {trainable}, {b.pooling} pooling, windows of "
                f"{data.brain.meta.get('num_timepoints', data.brain_dataset.num_timepoints)} time points; "
                f"{train_how}) on fMRI dataset `{b.dataset}` ({data.brain.dim}-D, {c['brain_rows']} recordings, "
                f"{c['brain_subjects']} subjects); saved as what changed + the base checkpoint's sha256")


@register_tower("genotype_mlp", sides=("genetics",))
class GenotypeMLPKind(TowerKind):
    """A genotype MLP (ContIG-style) on a dosage-matrix table; input scaling fitted on the train split."""

    @property
    def tower_class(self) -> type:
        """The tower module class (for `kind_of`)."""
        from brainmm.align.tower_models import GenotypeTower

        return GenotypeTower

    def check(self, cfg: Any, side: str, where: str) -> None:
        if cfg.n_snps < 0:
            raise BrainmmError(f"align config field '{where}.n_snps': expected >= 0 (0 = the table's width), "
                               f"got {cfg.n_snps}")
        if cfg.trainable == "frozen" and not cfg.checkpoint:
            raise BrainmmError(f"align config field '{where}.trainable': a frozen genotype_mlp needs a trained "
                               "'checkpoint' (a frozen random MLP learns nothing)")
        _check_trainable(cfg.trainable, cfg.last_n, cfg.lr, where)

    def build_genetics(self, cfg: Any, modality: str, table: Any, train_rows: list[int]) -> nn.Module | None:
        import torch

        from brainmm.align.tower_models import build_genotype_tower, check_dosages, set_trainable

        g, where = cfg.towers.genetics_tower(modality), f"towers.genetics.{modality}"
        check_dosages(table.vectors, cfg.data.genetics[modality], f"align config field '{where}'")
        train_dosages = torch.from_numpy(table.vectors[train_rows])  # every training subject of the table
        tower = build_genotype_tower(g, table.dim, train_dosages, where, cfg.data.genetics[modality])
        set_trainable(tower, g.trainable, g.last_n, where)
        return tower

    def save(self, cfg: Any, name: str, tower: nn.Module | None, data: Any, folder: Path) -> dict[str, str] | None:
        g = cfg.towers.genetics_tower(name)
        tower.save(folder / name, {"trainable": g.trainable, "dosages": cfg.data.genetics[name]})
        return {"kind": self.name, "trainable": g.trainable, "path": f"towers/{name}"}

    def load(self, folder: Path) -> nn.Module:
        from brainmm.align.tower_models import GenotypeTower

        return GenotypeTower.load(folder)

    def describe(self, cfg: Any, data: Any, name: str) -> str:
        g, t = cfg.towers.genetics_tower(name), data.genetics[name]
        what = f"genotype MLP ({g.checkpoint or f'hidden {g.hidden_sizes}, output {g.output_size}'}; {g.trainable})"
        return (f"- genetics `{name}`: {what} on dosages `{cfg.data.genetics[name]}` ({t.dim} SNPs, {len(t.ids)} "
                "subjects, input scaling fitted on the train split)")

    def export(self, module: nn.Module) -> nn.Module:
        from brainmm.align.tower_models import DosageMLP

        return DosageMLP(module.encoder)
