"""Tower kind `table`: no model; an embedding table's vectors feed the head (brain: `data.brain`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from brainmm.align.towers import BrainSide, BrainTowerConfig, GeneticsTowerConfig, TowerKind, register_tower
from brainmm.errors import BrainmmError


@dataclass
class TableTowerConfig(BrainTowerConfig, GeneticsTowerConfig):
    """No settings: the table is `data.brain` / `data.genetics.<modality>`. A config of kind table may also carry a
    model kind's settings (inactive, in that kind's class): they must then be that kind's defaults where they would
    load or train a model."""

    kind: str = "table"


@register_tower("table", sides=("brain", "genetics"), config=TableTowerConfig)
class TableTower(TowerKind):
    """No model: an embedding table's vectors feed the head."""

    has_model = False

    def check(self, cfg: Any, side: str, where: str) -> None:
        if side == "brain":
            given = [k for k in ("checkpoint", "dataset") if getattr(cfg, k, "")]
            if getattr(cfg, "trainable", "frozen") != "frozen":
                given.append("trainable")
            if given:
                raise BrainmmError(f"align config field '{where}.{given[0]}': a table tower has no model to load or "
                                   "train; set kind: brainlm to use a BrainLM checkpoint")
        elif getattr(cfg, "checkpoint", ""):
            raise BrainmmError(f"align config field '{where}.checkpoint': a table tower has no model; set "
                               "kind: genotype_mlp")

    def build_brain(self, cfg: Any, device: str) -> BrainSide:
        return BrainSide()

    def build_genetics(self, cfg: Any, modality: str, table: Any, train_rows: list[int]) -> None:
        return None

    def describe(self, cfg: Any, data: Any, name: str) -> str:
        c = data.counts
        if name == "brain":
            return (f"- brain table: `{cfg.data.brain}` ({data.brain.dim}-D, {c['brain_rows']} rows, "
                    f"{c['brain_subjects']} subjects, model `{data.brain.meta.get('model', 'unknown')}`)")
        t = data.genetics[name]
        return (f"- genetics `{name}`: `{cfg.data.genetics[name]}` ({t.dim}-D, {len(t.ids)} subjects, model "
                f"`{t.meta.get('model', 'unknown')}`)")
