"""Tower kind `genotype_mlp`: a genotype MLP (ContIG-style `encoders.genotype.GenotypeEncoder`) on a dosage-matrix
table (`brainmm genetics matrix`), input scaling fitted on the training subjects; its module is
`brainmm.align.tower_models.GenotypeTower`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from brainmm.align.towers import GeneticsTowerConfig, TowerKind, check_trainable, register_tower
from brainmm.errors import BrainmmError

Trainable = Literal["frozen", "last_n", "full"]


@dataclass
class GenotypeMLPTowerConfig(GeneticsTowerConfig):
    """One genetics modality of kind genotype_mlp: a GenotypeEncoder on dosages.

    The MLP fields are those of `GenotypeEncoderConfig`; with `checkpoint` the architecture, weights and input
    scaling come from that folder instead (the MLP fields are then not used).
    """

    kind: str = "genotype_mlp"
    checkpoint: str = ""  # GenotypeEncoder folder (save_pretrained) to start from; "" = a fresh encoder
    n_snps: int = 0  # 0 = the dosage table's width (given: must equal it)
    hidden_sizes: list[int] = field(default_factory=lambda: [1024])
    output_size: int = 512
    activation: Literal["relu", "gelu"] = "relu"
    norm: Literal["batchnorm", "layernorm", "none"] = "batchnorm"
    dropout: float = 0.1
    trainable: Trainable = "full"
    last_n: int = 0  # with trainable: last_n, the last N Linear blocks train (the output Linear is one)
    lr: float | None = None  # tower learning rate (null: train.lr)


@register_tower("genotype_mlp", sides=("genetics",), config=GenotypeMLPTowerConfig)
class GenotypeMLPKind(TowerKind):
    """A genotype MLP (ContIG-style) on a dosage-matrix table; input scaling fitted on the train split."""

    @property
    def tower_class(self) -> type:  # type: ignore[override]
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
        check_trainable(cfg.trainable, cfg.last_n, cfg.lr, where)

    def build_genetics(self, cfg: Any, modality: str, table: Any, train_rows: list[int]) -> Any:
        import torch

        from brainmm.align.tower_models import build_genotype_tower, check_dosages, set_trainable

        g, where = cfg.towers.genetics_tower(modality), f"towers.genetics.{modality}"
        check_dosages(table.vectors, cfg.data.genetics[modality], f"align config field '{where}'")
        train_dosages = torch.from_numpy(table.vectors[train_rows])  # every training subject of the table
        tower = build_genotype_tower(g, table.dim, train_dosages, where, cfg.data.genetics[modality])
        set_trainable(tower, g.trainable, g.last_n, where)
        return tower

    def save(self, cfg: Any, name: str, tower: Any, data: Any, folder: Path) -> dict[str, str] | None:
        g = cfg.towers.genetics_tower(name)
        tower.save(folder / name, {"trainable": g.trainable, "dosages": cfg.data.genetics[name]})
        return {"kind": self.name, "trainable": g.trainable, "path": f"towers/{name}"}

    def load(self, folder: Path) -> Any:
        from brainmm.align.tower_models import GenotypeTower

        return GenotypeTower.load(folder)

    def describe(self, cfg: Any, data: Any, name: str) -> str:
        g, t = cfg.towers.genetics_tower(name), data.genetics[name]
        what = f"genotype MLP ({g.checkpoint or f'hidden {g.hidden_sizes}, output {g.output_size}'}; {g.trainable})"
        return (f"- genetics `{name}`: {what} on dosages `{cfg.data.genetics[name]}` ({t.dim} SNPs, {len(t.ids)} "
                "subjects, input scaling fitted on the train split)")

    def export(self, module: Any) -> Any:
        from brainmm.align.tower_models import DosageMLP

        return DosageMLP(module.encoder)
