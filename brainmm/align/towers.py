"""Tower registry of the align stage: every kind (`table`, `brainlm`, `genotype_mlp`) is one module of
`brainmm.align.kinds` holding its config class, input provider, build, save/load, describe and projection.

The rest of brainmm looks kinds up here (`tower_kind(name)`) instead of testing kind strings; a config section's
`kind` chooses its config class when the config is read (`TowerConfig.config_variant`). A new kind is one module:

    @dataclass
    class MyConfig(BrainTowerConfig):
        kind: str = "my_kind"
        width: int = 8

    @register_tower("my_kind", sides=("brain",), config=MyConfig)
    class MyKind(TowerKind): ...
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from brainmm.config import ConfigError, to_dict
from brainmm.errors import BrainmmError

if TYPE_CHECKING:  # the registry imports no torch: configs are checked before any model code loads
    import torch
    from torch import nn

    from brainmm.embeddings import EmbeddingTable

LOG = logging.getLogger("brainmm.align")
_REGISTRY: dict[str, TowerKind] = {}


# ---------------------------------------------------------------------------------------------- configs


@dataclass
class TowerConfig:
    """Base of every kind's config class; `kind` chooses the class when a config is read."""

    kind: str = "table"
    side: ClassVar[str] = ""

    @classmethod
    def config_variant(cls, value: Any, where: str) -> tuple[type, Any]:
        """The config class of `value`'s kind among this side's kinds, and the mapping to build it from.

        A model kind drops the settings of another kind of its side that are that kind's defaults (the spelled-out
        defaults of a config written before kinds owned their configs); the no-model kind (`table`) keeps a model
        kind's settings, inactive, in that kind's class (a later `kind` override then uses them).
        """
        if isinstance(value, TowerConfig) or not isinstance(value, dict):
            return (type(value) if isinstance(value, TowerConfig) else cls), value
        names = list_towers(cls.side, registered=True)
        name = value.get("kind", cls.kind)
        if name not in names:
            raise ConfigError(f"config field '{where}.kind': expected one of {', '.join(map(repr, names))}, got "
                              f"{str(name)[:100]!r}")
        kind = _REGISTRY[name]
        foreign = set(value) - _field_names(kind.config_class)
        if not foreign:
            return kind.config_class, value
        others = [_REGISTRY[n].config_class for n in names if _REGISTRY[n].config_class is not kind.config_class]
        if not kind.has_model:
            for other in others:
                if foreign <= _field_names(other):
                    return other, {**value, "kind": name}
            return kind.config_class, value  # from_dict names the unknown keys
        kept = {k: v for k, v in value.items()
                if k not in foreign or not any(to_dict(o()).get(k, _MISSING) == v for o in others)}
        return kind.config_class, kept


_MISSING = object()


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


@dataclass
class BrainTowerConfig(TowerConfig):
    """`towers.brain`: the config class of a brain-side kind."""

    side: ClassVar[str] = "brain"


@dataclass
class GeneticsTowerConfig(TowerConfig):
    """`towers.genetics.<modality>`: the config class of a genetics-side kind."""

    side: ClassVar[str] = "genetics"


# ----------------------------------------------------------------------------------------------- kinds


class BrainInputs(Protocol):
    """What the loop, the report and projection iterate for a brain tower: the rows of one split."""

    def __len__(self) -> int: ...

    def batch(self, rows: Sequence[int], epoch: int) -> torch.Tensor:
        """Tower inputs of the rows at positions `rows` for training step(s) of `epoch`."""

    def features(self, tower: nn.Module) -> torch.Tensor:
        """Tower outputs `[rows, H]` of every row (eval mode, no gradients), for evaluation and outputs."""


@dataclass
class BrainSide:
    """What building the brain side gives: precomputed rows (or a trainable tower's rows), the tower, the kind's own
    state (e.g. the fMRI dataset), and `inputs(split, row_ids, precision)` giving the rows' `BrainInputs` (None:
    the rows' vectors are the tower's inputs)."""

    rows: Any | None = None  # brainmm.align.data.BrainRows; None: read cfg.data.brain
    tower: nn.Module | None = None
    state: Any = None
    inputs: Callable[[str, Sequence[str], str], BrainInputs] | None = None


class TowerKind(ABC):
    """One tower kind. Subclasses override the hooks of the sides they serve; `table` is the no-model kind."""

    name: ClassVar[str] = ""
    sides: ClassVar[tuple[str, ...]] = ()
    has_model: ClassVar[bool] = True
    pipeline_stages: ClassVar[tuple[str, ...]] = ()  # pipeline stages that make the tower (BrainLM: pretrain, embed)
    config_class: ClassVar[type] = TowerConfig
    tower_class: ClassVar[type | None] = None  # for `kind_of` (set lazily by kinds whose class needs torch)

    def check(self, cfg: Any, side: str, where: str) -> None:
        """Field checks of a tower section (`towers.brain`, `towers.genetics.<m>`) that need no files (default: none)."""
        return None

    def build_brain(self, cfg: Any, device: str) -> BrainSide:
        """The brain side of a run (rows, tower, input provider) from the align config."""
        raise BrainmmError(f"tower kind {self.name!r} cannot be the brain tower")

    def build_genetics(self, cfg: Any, modality: str, table: Any, train_rows: list[int]) -> nn.Module | None:
        """The tower of one genetics modality (None: the table's vectors go to the head directly)."""
        raise BrainmmError(f"tower kind {self.name!r} cannot be a genetics tower")

    def save(self, cfg: Any, name: str, tower: nn.Module | None, data: Any, folder: Path) -> dict[str, str] | None:
        """Write the tower folder of side `name` (`write_tower_file`); returns its heads.json record (None: nothing)."""
        return None

    def load(self, folder: Path) -> nn.Module:
        """Read a tower folder written by `save`, in eval mode."""
        raise BrainmmError(f"tower kind {self.name!r} has no tower folder")

    @abstractmethod
    def describe(self, cfg: Any, data: Any, name: str) -> str:
        """The model-card line of side `name`."""

    def summary(self, cfg: Any) -> str:
        """`<kind>/<what trains>` for the run's `towers` tag."""
        return f"{self.name}/{getattr(cfg, 'trainable', 'full')}"

    def tower_lr(self, cfg: Any) -> float | None:
        """The tower's own learning rate (None: train.lr)."""
        return getattr(cfg, "lr", None)

    def export(self, module: nn.Module) -> nn.Module:
        """The tower as an exportable module (default: itself)."""
        return module

    def input_features(self, run_dir: Path, cfg: Any) -> Callable[[], tuple[EmbeddingTable, str]] | None:
        """For evaluation of an align run without a brain input table: a function giving the brain tower's input
        features of every row (the table the head takes, and where it came from); None: not available."""
        return None

    def pipeline_inputs(self, cfg: Any, model: str, dataset: str, given: Callable[[str], str]) -> None:
        """`brainmm run`: fill this brain kind's empty inputs from earlier stages (the BrainLM checkpoint `model`, the
        fMRI `dataset`); given paths go through `given` (default: nothing to fill)."""
        return None

    def project(self, model: Any, source: str | Path, split: str | None, batch_size: int,
                precision: str) -> EmbeddingTable:
        """Shared-space brain embeddings of new data `source` (one split or all) through the model's brain tower."""
        raise BrainmmError(f"tower kind {self.name!r}: no projection of new brain data")


def register_tower(name: str, sides: tuple[str, ...], config: type | None = None):
    """Class decorator: register a TowerKind subclass under `name` for the given sides ('brain', 'genetics'), with
    its config class (a dataclass subclass of BrainTowerConfig / GeneticsTowerConfig whose `kind` defaults to
    `name`)."""

    def wrap(cls: type[TowerKind]) -> type[TowerKind]:
        _ensure_kinds()  # a name of a shipped kind stays taken
        if name in _REGISTRY:
            raise ValueError(f"tower kind {name!r} is already registered by {type(_REGISTRY[name]).__module__}")
        cls.name, cls.sides = name, tuple(sides)
        if config is not None:
            cls.config_class = config
        _REGISTRY[name] = cls()
        return cls

    return wrap


def unregister_tower(name: str) -> None:
    """Remove kind `name` from the registry (tests and plugins that registered it)."""
    _REGISTRY.pop(name, None)


def _ensure_kinds() -> None:
    import brainmm.align.kinds  # noqa: F401 (registers the shipped kinds)


def tower_kind(name: str, side: str | None = None) -> TowerKind:
    """The registered kind `name` (checked to serve `side` when given)."""
    _ensure_kinds()
    kind = _REGISTRY.get(name)
    if kind is None or (side is not None and side not in kind.sides):
        raise BrainmmError(f"tower kind {name!r}: expected one of {list_towers(side)}")
    return kind


def list_towers(side: str | None = None, registered: bool = False) -> list[str]:
    """Names of the registered kinds serving `side` when given (sorted; `registered`: the no-model kind first, then
    in registration order)."""
    _ensure_kinds()
    names = [k for k, v in _REGISTRY.items() if side is None or side in v.sides]
    return sorted(names, key=lambda k: _REGISTRY[k].has_model) if registered else sorted(names)


def kind_of(module: nn.Module) -> TowerKind | None:
    """The registered kind whose tower class `module` is (None for heads-only modules)."""
    _ensure_kinds()
    for kind in _REGISTRY.values():
        cls = kind.tower_class
        if cls is not None and isinstance(module, cls):
            return kind
    return None


def check_towers(towers: Any) -> None:
    """Check every tower section of a `TowersConfig` through its kind."""
    tower_kind(towers.brain.kind, "brain").check(towers.brain, "brain", "towers.brain")
    for m, tower in towers.genetics.items():
        tower_kind(tower.kind, "genetics").check(tower, "genetics", f"towers.genetics.{m}")


def check_trainable(trainable: str, last_n: int, lr: float | None, where: str) -> None:
    """`trainable`, `last_n` and `lr` of a model tower agree."""
    if trainable == "last_n" and last_n < 1:
        raise BrainmmError(f"align config field '{where}.last_n': trainable: last_n needs last_n >= 1, got {last_n}")
    if trainable != "last_n" and last_n != 0:
        raise BrainmmError(f"align config field '{where}.last_n': only used with trainable: last_n (got trainable: "
                           f"{trainable}); remove it or set trainable: last_n")
    if lr is not None and not lr > 0:
        raise BrainmmError(f"align config field '{where}.lr': expected > 0 or null (= train.lr), got {lr}")
