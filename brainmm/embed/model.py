"""A frozen BrainLM tower for embedding: either architecture, one `encode` call, and a content hash of its files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from brainmm.errors import BrainmmError
from brainmm.io import sha256_file
from encoders.weights import read_json

if TYPE_CHECKING:
    from encoders.brainlm.tower import BrainLMTower

KINDS = {"brainlm_mae": "Nystromformer BrainLM", "vit_mae": "ViT-MAE BrainLM"}
VIT_POOLINGS = ("cls", "mean")


def read_model_config(folder: str | Path, where: str = "embed config field 'model'") -> dict[str, Any]:
    """The checkpoint's config.json, checked to be a BrainLM model type; `where` starts the error messages."""
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise BrainmmError(f"{where}: checkpoint folder {folder} does not exist")
    if not path.is_file():
        raise BrainmmError(f"{where}: {folder} has no config.json (expected a BrainLM checkpoint folder with "
                           "config.json and model.safetensors, or an align run folder with a BrainLM tower)")
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise BrainmmError(f"BrainLM checkpoint {path}: not valid JSON ({err})") from None
    except RecursionError:
        raise BrainmmError(f"BrainLM checkpoint {path}: nested too deeply to parse (expected a flat JSON object of "
                           "settings)") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(kind, str) or kind not in KINDS:
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
    """SHA-256 over the checkpoint's config (canonical JSON) and the bytes of every weight file; for an align run's
    BrainLM tower, over its saved files (which record the base checkpoint's weights hash)."""
    folder = Path(folder)
    tower = brain_tower_folder(folder)
    if tower is not None:
        check_tower_base(tower)  # the cached rows of a tower whose base changed would not be its embeddings
        h = hashlib.sha256(b"brainmm align brainlm tower")
        for name in (TOWER_FILE, FINETUNE_FILE, "brainlm_finetune.safetensors"):
            h.update(name.encode() + sha256_file(tower / name).encode())
        return h.hexdigest()
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
    parcel_order: str | None  # "y" for a ViT-MAE checkpoint (parcels sorted by Y), None: any order
    patch_size: int | None  # time patch of the Nystromformer model (windows must be a multiple)
    tower: bool = False  # `model` is an align run's BrainLMTower (windows in the dataset's parcel order)

    @property
    def dim(self) -> int:
        """Embedding width (hidden size)."""
        return int(self.model.out_dim if self.tower else self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, signal: torch.Tensor, xyz: torch.Tensor, pooling: str) -> torch.Tensor:
        """[B, V, T] windows (+ [B, V, 3] coordinates) -> [B, H] float32, no masking."""
        if self.tower:  # an align run's BrainLMTower: its own coordinates, parcel order, scaling and pooling
            return self.model(signal).float()
        if self.kind == "vit_mae":
            from encoders.brainlm.preprocessing import VIT_SCALE

            return self.model.encode(signal / VIT_SCALE, pooling=pooling).float()
        return self.model.encode(signal, xyz, pooling=pooling).float()


def load_brainlm_encoder(checkpoint: str | Path,
                         where: str = "align config field 'towers.brain.checkpoint'") -> Any:
    """The BrainLM encoder (decoder dropped) of a `brainlm_mae` checkpoint folder, float32, eval mode (frozen
    embedding; align towers of either architecture load through `encoders.brainlm.finetune`).

    `where` starts every error message (which field or file named the checkpoint).
    """
    from encoders.brainlm import BrainLMModel
    from encoders.brainlm.loading import checkpoint_model_type
    from encoders.errors import EncoderInputError
    from encoders.weights import quiet_transformers

    try:
        model_type = checkpoint_model_type(checkpoint)
        if model_type != "brainlm_mae":
            raise BrainmmError(f"{where}: {checkpoint} is a {model_type} BrainLM, expected a brainlm_mae "
                               "(Nystromformer) checkpoint")
        with quiet_transformers():
            model = BrainLMModel.from_pretrained(checkpoint)
    except EncoderInputError as err:
        raise BrainmmError(f"{where}: {err}") from None
    return model.float().eval()


def load_frozen_brainlm(folder: str | Path, device: torch.device, pooling: str) -> FrozenBrainLM:
    """Load a BrainLM checkpoint folder (either architecture) or an align run's BrainLM tower (`brain_tower_folder`;
    its own pooling) for embedding, in eval mode on `device`."""
    tower_folder = brain_tower_folder(folder)
    if tower_folder is not None:
        tower = load_brainlm_tower(tower_folder)
        patch = None if tower.model_type == "vit_mae" else tower.encoder.config.timepoint_patching_size
        frozen = FrozenBrainLM(tower.model_type, tower, tower.coords.shape[0], tower.num_timepoints, None, patch, True)
        frozen.model.requires_grad_(False).eval().to(device)
        return frozen
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


TOWER_FILE = "tower.json"  # every align tower folder: {"kind": <tower kind>, ...what its kind records}
FINETUNE_FILE = "brainlm_finetune.json"  # what `encoders.brainlm.finetune.save_finetuned` writes: a BrainLM tower


def brain_tower_folder(path: str | Path) -> Path | None:
    """The BrainLM tower folder that `path` names: an align run folder (its `towers/brain`), or a tower folder
    itself (a fine-tuned BrainLM: tower.json + brainlm_finetune.json); None for anything else (e.g. a checkpoint)."""
    path = Path(path)
    heads = path / "heads.json"
    if heads.is_file():
        record = (json.loads(heads.read_text()).get("towers") or {}).get("brain")
        folder = path / record["path"] if record and record.get("path") else None
        if folder is None or not (folder / FINETUNE_FILE).is_file():
            raise BrainmmError(f"align run {path}: its brain side has no BrainLM tower (it was trained on an embedding "
                               "table or another tower kind); embed with the BrainLM checkpoint instead")
        return folder
    if (path / TOWER_FILE).is_file() and (path / FINETUNE_FILE).is_file():
        return path
    return None


def write_tower_file(folder: str | Path, kind: str, meta: dict[str, Any]) -> Path:
    """Write tower.json (`kind` and what the kind records) into a tower folder being written (atomically)."""
    from brainmm.io import atomic_write_json

    return atomic_write_json(Path(folder) / TOWER_FILE, {"kind": kind, **meta})


def read_tower_file(folder: str | Path, kind: str) -> dict[str, Any]:
    """tower.json of a tower folder written by `brainmm align`, checked to be an object of tower kind `kind`."""
    folder = Path(folder)
    path = folder / TOWER_FILE
    if not path.is_file():
        raise BrainmmError(f"tower folder {folder}: no {TOWER_FILE} (expected a tower saved by `brainmm align`)")
    info = read_json(path)
    if not isinstance(info, dict):
        raise BrainmmError(f"tower folder {folder}: {TOWER_FILE} must hold a JSON object")
    if info.get("kind") != kind:
        raise BrainmmError(f"tower folder {folder}: {TOWER_FILE} has kind {info.get('kind')!r}, expected {kind!r}")
    return info


def read_tower_info(folder: str | Path) -> dict[str, Any]:
    """tower.json of a BrainLM tower folder written by `brainmm align`, checked to hold a fine-tuned tower."""
    folder = Path(folder)
    info = read_tower_file(folder, "brainlm")
    if not (folder / FINETUNE_FILE).is_file():
        raise BrainmmError(f"tower folder {folder}: no brainlm_finetune.json (a tower saved by an older brainmm "
                           "align; run the align stage again)")
    return info


def check_tower_base(folder: str | Path) -> None:
    """Refuse a saved tower whose base checkpoint's weights no longer hash to the sha256 it recorded."""
    from encoders.brainlm.finetune import read_manifest, weights_sha256
    from encoders.errors import EncoderInputError

    try:
        base = read_manifest(folder)["base"]
        found = weights_sha256(base["folder"])
    except EncoderInputError as err:
        raise BrainmmError(f"BrainLM tower {folder}: base checkpoint: {err}") from None
    if found != base["sha256"]:
        raise BrainmmError(f"BrainLM tower {folder}: base checkpoint {base['folder']} has weights sha256 {found}, but "
                           f"the tower was fine-tuned from weights with sha256 {base['sha256']}; restore the original "
                           "base checkpoint")


def load_brainlm_tower(folder: str | Path) -> BrainLMTower:
    """A BrainLM tower saved by `brainmm align` (base checkpoint + what fine-tuning changed), float32, eval mode.

    A base checkpoint whose weights no longer hash to the recorded sha256 is refused (one error naming both).
    """
    from encoders.brainlm.finetune import load_finetuned
    from encoders.errors import EncoderInputError
    from encoders.weights import quiet_transformers

    info = read_tower_info(folder)
    try:
        with quiet_transformers():
            tower = load_finetuned(folder)
    except EncoderInputError as err:
        raise BrainmmError(f"BrainLM tower {folder}: {err}") from None
    tower.num_timepoints = int(info.get("num_timepoints") or 0)
    return tower
