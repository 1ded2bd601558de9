"""Typed config of the align towers (`towers.brain`, `towers.genetics.<modality>`), importable without torch: the
CLI reads and checks a config before any model code loads (the tower modules are in tower_models.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from encoders.lora_config import LoraSettings

Trainable = Literal["frozen", "last_n", "full"]
BrainTrainable = Literal["frozen", "last_n", "full", "lora"]


@dataclass
class BrainTowerConfig:
    """Brain side: `table` (data.brain, precomputed) or `brainlm` (a checkpoint run on an fMRI dataset's windows)."""

    kind: Literal["table", "brainlm"] = "table"
    checkpoint: str = ""  # BrainLM checkpoint folder (model_type brainlm_mae or vit_mae)
    dataset: str = ""  # fMRI dataset folder (`brainmm fmri ingest`)
    pooling: Literal["cls", "mean", "time_then_voxel"] = "cls"  # ViT-MAE: cls | mean
    num_timepoints: int = 0  # window length; 0 = the dataset's (ViT-MAE: always 200)
    trainable: BrainTrainable = "frozen"
    last_n: int = 0  # with trainable: last_n, the last N encoder layers (+ the final LayerNorm) train
    lora: LoraSettings = field(default_factory=LoraSettings)  # with trainable: lora (rank, alpha, dropout, targets)
    lr: float | None = None  # tower learning rate (null: train.lr)
    gradient_checkpointing: bool = False  # recompute encoder layers in the backward pass (less memory)
    eval_batch_size: int = 64  # windows per forward pass when embedding tiled windows
    cache_dir: str = ""  # `brainmm embed` cache for a frozen tower; "" = <brainmm data dir>/brain-embeddings


@dataclass
class GeneticsTowerConfig:
    """One genetics modality: `table` (precomputed vectors) or `genotype_mlp` (a GenotypeEncoder on dosages).

    The MLP fields are those of `GenotypeEncoderConfig`; with `checkpoint` the architecture, weights and input
    scaling come from that folder instead (the MLP fields are then not used).
    """

    kind: Literal["table", "genotype_mlp"] = "table"
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


@dataclass
class TowersConfig:
    """`towers.brain` and `towers.genetics.<modality>` (modalities not listed use their table as is)."""

    brain: BrainTowerConfig = field(default_factory=BrainTowerConfig)
    genetics: dict[str, GeneticsTowerConfig] = field(default_factory=dict)

    def genetics_tower(self, modality: str) -> GeneticsTowerConfig:
        """The tower config of a modality (a table tower when it is not listed)."""
        return self.genetics.get(modality) or GeneticsTowerConfig()
