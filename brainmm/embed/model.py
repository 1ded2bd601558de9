"""A frozen BrainLM tower for embedding: either architecture, one `encode` call, and a content hash of its files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brainmm.errors import BrainmmError
from brainmm.io import sha256_file

KINDS = {"brainlm_mae": "Nystromformer BrainLM", "vit_mae": "ViT-MAE BrainLM"}
VIT_POOLINGS = ("cls", "mean")


def read_model_config(folder: str | Path) -> dict[str, Any]:
    """The checkpoint's config.json, checked to be a BrainLM model type."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise BrainmmError(f"embed config field 'model': {folder} has no config.json (expected a BrainLM checkpoint "
                           "folder with config.json and model.safetensors)")
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise BrainmmError(f"BrainLM checkpoint {path}: not valid JSON ({err})") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in KINDS:
        raise BrainmmError(f"BrainLM checkpoint {path}: model_type {kind!r}, expected one of {sorted(KINDS)}")
    return config


def default_window(config: dict[str, Any]) -> int:
    """The window length a checkpoint takes when `num_timepoints` is null (from its config.json alone)."""
    if config["model_type"] == "vit_mae":
        from encoders.brainlm.vit import NUM_TIMEPOINTS

        return NUM_TIMEPOINTS
    from encoders.brainlm import BrainLMConfig

    return int(config.get("num_timepoints_per_voxel", BrainLMConfig().num_timepoints_per_voxel))


def _weight_files(folder: Path) -> list[Path]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            return [index] + [folder / s for s in shards]
    raise BrainmmError(f"BrainLM checkpoint {folder}: no weights (model.safetensors or pytorch_model.bin)")


def model_hash(folder: str | Path) -> str:
    """SHA-256 over the checkpoint's config (canonical JSON) and the bytes of every weight file."""
    folder = Path(folder)
    h = hashlib.sha256(json.dumps(read_model_config(folder), sort_keys=True).encode())
    for f in _weight_files(folder):
        if not f.is_file():
            raise BrainmmError(f"BrainLM checkpoint {folder}: weight file {f.name} is missing")
        h.update(f.name.encode() + sha256_file(f).encode())
    return h.hexdigest()


@dataclass
class FrozenBrainLM:
    """An eval-mode BrainLM encoder and the input layout it needs."""

    kind: str  # "brainlm_mae" or "vit_mae"
    model: torch.nn.Module
    num_parcels: int
    num_timepoints: int  # default window length
    parcel_order: str | None  # "y" for ViT-MAE (parcels sorted by Y), None: any order
    patch_size: int | None  # time patch of the Nystromformer model (windows must be a multiple)

    @property
    def dim(self) -> int:
        """Embedding width (hidden size)."""
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, signal: torch.Tensor, xyz: torch.Tensor, pooling: str) -> torch.Tensor:
        """[B, V, T] windows (+ [B, V, 3] coordinates) -> [B, H] float32, no masking."""
        if self.kind == "vit_mae":
            from encoders.brainlm.preprocessing import VIT_SCALE

            return self.model.encode(signal / VIT_SCALE, pooling=pooling).float()
        return self.model.encode(signal, xyz, pooling=pooling).float()


def load_brainlm_encoder(checkpoint: str | Path,
                         where: str = "align config field 'towers.brain.checkpoint'") -> Any:
    """The BrainLM encoder (decoder dropped) of a `brainlm_mae` checkpoint folder, float32, eval mode: the one
    loader of Nystromformer BrainLM checkpoints (align towers, frozen embedding).

    `where` starts every error message (which field or file named the checkpoint).
    """
    from encoders.brainlm import BrainLMModel
    from encoders.brainlm.loading import checkpoint_model_type
    from encoders.errors import EncoderInputError
    from encoders.weights import quiet_transformers

    try:
        model_type = checkpoint_model_type(checkpoint)
        if model_type != "brainlm_mae":
            raise BrainmmError(
                f"{where}: {checkpoint} is a {model_type} BrainLM; the brainlm tower runs "
                "brainlm_mae (Nystromformer) checkpoints; embed ViT-MAE models first and use towers.brain.kind: table"
            )
        with quiet_transformers():
            model = BrainLMModel.from_pretrained(checkpoint)
    except EncoderInputError as err:
        raise BrainmmError(f"{where}: {err}") from None
    return model.float().eval()


def load_frozen_brainlm(folder: str | Path, device: torch.device, pooling: str) -> FrozenBrainLM:
    """Load a BrainLM checkpoint folder (either architecture) for embedding, in eval mode on `device`."""
    config = read_model_config(folder)
    if config["model_type"] == "vit_mae":
        from encoders.brainlm.vit import NUM_PARCELS, NUM_TIMEPOINTS, BrainLMViTForPretraining

        if pooling not in VIT_POOLINGS:
            raise BrainmmError(f"embed config field 'pooling': {pooling!r} is not available for a ViT-MAE BrainLM "
                               f"checkpoint; expected one of {VIT_POOLINGS}")
        model = BrainLMViTForPretraining.from_pretrained(folder)
        frozen = FrozenBrainLM("vit_mae", model, NUM_PARCELS, NUM_TIMEPOINTS, "y", None)
    else:
        # the encoder only: a pretraining checkpoint's decoder is skipped
        model = load_brainlm_encoder(folder, where="embed config field 'model'")
        c = model.config
        frozen = FrozenBrainLM("brainlm_mae", model, c.num_brain_voxels, c.num_timepoints_per_voxel, None,
                               c.timepoint_patching_size)
    frozen.model.requires_grad_(False).eval().to(device)
    return frozen
