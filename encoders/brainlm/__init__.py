"""BrainLM: the Nystromformer masked autoencoder (old_13M) and the padded ViT-MAE variant (111M/650M).

`BrainLMForPretraining` / `BrainLMModel` load original `brainlm_mae` checkpoint folders; `BrainLMViTForPretraining`
loads the `vit_mae` ones (prepare its input with `vit_preprocess`). All have `encode(...) -> [B, H]`.
`BrainLMTower` / `load_tower` / `save_finetuned` / `load_finetuned`: either architecture as a fine-tunable
alignment tower (frozen, last N blocks, full, LoRA through peft), saving only what changed.
"""

from encoders.brainlm.configuration import BrainLMConfig
from encoders.brainlm.finetune import load_finetuned, load_tower, save_finetuned
from encoders.brainlm.lora import LoraSettings
from encoders.brainlm.modeling import (
    BrainLMForPretraining,
    BrainLMModel,
    BrainLMModelOutput,
    BrainLMPretrainingOutput,
)
from encoders.brainlm.pooling import POOLINGS, pool_latent
from encoders.brainlm.preprocessing import VIT_SCALE, sort_parcels_by_y, vit_preprocess
from encoders.brainlm.tower import BrainLMTower
from encoders.brainlm.vit import BrainLMViTForPretraining, BrainLMViTPretrainingOutput

__all__ = [
    "POOLINGS",
    "VIT_SCALE",
    "BrainLMConfig",
    "BrainLMForPretraining",
    "BrainLMModel",
    "BrainLMModelOutput",
    "BrainLMPretrainingOutput",
    "BrainLMTower",
    "BrainLMViTForPretraining",
    "BrainLMViTPretrainingOutput",
    "LoraSettings",
    "load_finetuned",
    "load_tower",
    "pool_latent",
    "save_finetuned",
    "sort_parcels_by_y",
    "vit_preprocess",
]
