"""Typed config of the align towers (`towers.brain`, `towers.genetics.<modality>`), importable without torch: the
CLI reads and checks a config before any model code loads. Each kind's config class lives in its module under
`brainmm.align.kinds`; `kind` chooses it when a config is read."""

from __future__ import annotations

from dataclasses import dataclass, field

from brainmm.align.kinds.brainlm import BrainLMTowerConfig, BrainTrainable  # noqa: F401 (re-exported)
from brainmm.align.kinds.genotype_mlp import GenotypeMLPTowerConfig, Trainable  # noqa: F401 (re-exported)
from brainmm.align.kinds.table import TableTowerConfig
from brainmm.align.towers import BrainTowerConfig, GeneticsTowerConfig, TowerConfig  # noqa: F401 (re-exported)


def _brain_default() -> BrainTowerConfig:
    """kind table, with the BrainLM settings spelled out (inactive; `towers.brain.kind=brainlm` uses them)."""
    return BrainLMTowerConfig(kind="table")


@dataclass
class TowersConfig:
    """`towers.brain` and `towers.genetics.<modality>` (modalities not listed use their table as is)."""

    brain: BrainTowerConfig = field(default_factory=_brain_default)
    genetics: dict[str, GeneticsTowerConfig] = field(default_factory=dict)

    def genetics_tower(self, modality: str) -> GeneticsTowerConfig:
        """The tower config of a modality (a table tower when it is not listed)."""
        return self.genetics.get(modality) or TableTowerConfig()
