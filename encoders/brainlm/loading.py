"""Load any BrainLM checkpoint folder: the class is chosen from `model_type` in its config.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import PreTrainedModel

from encoders.brainlm.checkpoint import check_checkpoint_folder
from encoders.brainlm.modeling import BrainLMForPretraining
from encoders.brainlm.vit import BrainLMViTForPretraining
from encoders.errors import EncoderInputError

MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "brainlm_mae": BrainLMForPretraining,
    "vit_mae": BrainLMViTForPretraining,
}


def checkpoint_model_type(path: str | os.PathLike) -> str:
    """`model_type` of a checkpoint folder ("brainlm_mae" or "vit_mae"), after checking its files."""
    folder = Path(path)
    check_checkpoint_folder(folder, None)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_CLASSES:
        raise EncoderInputError(f"{folder / 'config.json'}: model_type must be one of {sorted(MODEL_CLASSES)}, "
                                f"got {model_type!r}")
    return model_type


def load_brainlm(path: str | os.PathLike, **kwargs) -> PreTrainedModel:
    """`BrainLMForPretraining` or `BrainLMViTForPretraining` from a local folder (kwargs go to from_pretrained)."""
    return MODEL_CLASSES[checkpoint_model_type(path)].from_pretrained(path, **kwargs)
