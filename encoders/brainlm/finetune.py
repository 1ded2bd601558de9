"""Build a `BrainLMTower` from a checkpoint folder, and save / re-apply only what fine-tuning changed.

`save_finetuned(tower, folder)` writes `brainlm_finetune.safetensors` (the tensors that require grad: LoRA adapters,
the unfrozen blocks, or everything trainable) and `brainlm_finetune.json` (the base checkpoint folder, the sha256
of its weights file(s), the tower settings and parcel coordinates). `load_finetuned(folder)` loads the base again,
refuses it when its weights hash changed, rebuilds the same tower and loads the saved tensors onto it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from encoders.brainlm.checkpoint import check_checkpoint_folder
from encoders.brainlm.loading import load_brainlm
from encoders.brainlm.lora import LoraSettings
from encoders.brainlm.preprocessing import VIT_SCALE
from encoders.brainlm.tower import BrainLMTower
from encoders.errors import EncoderInputError
from encoders.weights import read_json

MANIFEST = "brainlm_finetune.json"
TENSORS = "brainlm_finetune.safetensors"
FORMAT = 1


@dataclass(frozen=True)
class BaseCheckpoint:
    """The checkpoint folder a tower was built from and the sha256 of its weights file(s)."""

    folder: str
    sha256: str


def weights_files(folder: str | os.PathLike) -> list[Path]:
    """The weights file(s) of a checkpoint folder: one file, or every shard named by its index, sorted."""
    weights = check_checkpoint_folder(folder, None)
    if weights.name.endswith(".index.json"):
        shards = sorted(set(json.loads(weights.read_text()).get("weight_map", {}).values()))
        return [weights.parent / s for s in shards]
    return [weights]


def weights_sha256(folder: str | os.PathLike) -> str:
    """sha256 of the weights file(s) (concatenated in name order; for one file it equals `sha256sum FILE`)."""
    digest = hashlib.sha256()
    for path in weights_files(folder):
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def load_tower(checkpoint: str | os.PathLike, coords: np.ndarray | torch.Tensor, pooling: str = "cls",
               scale: float | None = VIT_SCALE, trainable: str = "frozen", last_n: int = 0,
               lora: LoraSettings | None = None, gradient_checkpointing: bool = False) -> BrainLMTower:
    """A float32 `BrainLMTower` (eval mode) from a local checkpoint folder of either architecture.

    The folder and its weights hash are recorded as `tower.base` (what `save_finetuned` refers to).
    """
    folder = Path(checkpoint).resolve()
    sha = weights_sha256(folder)
    tower = BrainLMTower(load_brainlm(folder).float(), coords, pooling, scale)
    tower.set_trainable(trainable, last_n, lora)
    tower.gradient_checkpointing(gradient_checkpointing)
    tower.base = BaseCheckpoint(str(folder), sha)
    return tower.eval()


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_finetuned(tower: BrainLMTower, folder: str | os.PathLike) -> Path:
    """Write the tower's trainable tensors and its manifest into `folder` (each file written atomically).

    The tower must come from `load_tower` (it needs `tower.base`). Writers that need the whole folder atomic call
    this inside their own temporary folder (brainmm: `brainmm.io.atomic_dir`).
    """
    base = getattr(tower, "base", None)
    if base is None:
        raise EncoderInputError("save_finetuned: the tower has no base checkpoint reference; build it with load_tower")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().cpu().contiguous() for n, p in tower.named_parameters() if p.requires_grad}
    manifest = {"format": FORMAT, "base": {"folder": base.folder, "sha256": base.sha256}, **tower.settings(),
                "coords": tower.coords.double().cpu().tolist(), "tensors": sorted(tensors)}
    _atomic_write(folder / TENSORS, lambda tmp: save_file(tensors, tmp, metadata={"base_sha256": base.sha256}))
    _atomic_write(folder / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    return folder


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a saved fine-tuned tower (EncoderInputError when absent or not one)."""
    path = Path(folder) / MANIFEST
    if not path.is_file() or not (Path(folder) / TENSORS).is_file():
        raise EncoderInputError(f"fine-tuned tower {folder}: expected {MANIFEST} and {TENSORS} (written by "
                                "save_finetuned)")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EncoderInputError(f"{path}: not a brainlm_finetune manifest of format {FORMAT}")
    return manifest


def load_finetuned(folder: str | os.PathLike, base: str | os.PathLike | None = None) -> BrainLMTower:
    """Rebuild a tower saved by `save_finetuned` (eval mode): the base checkpoint + the saved tensors.

    `base` overrides the recorded base folder (e.g. after moving it); its weights must still hash to the recorded
    sha256, else `EncoderInputError` names the folder and both hashes.
    """
    folder = Path(folder)
    info = read_manifest(folder)
    base_folder = Path(base) if base is not None else Path(info["base"]["folder"])
    recorded, found = info["base"]["sha256"], weights_sha256(base_folder)
    if found != recorded:
        raise EncoderInputError(
            f"fine-tuned tower {folder}: base checkpoint {base_folder} has weights sha256 {found}, but the tower was "
            f"fine-tuned from weights with sha256 {recorded}; point it at the original base checkpoint")
    lora = LoraSettings(**info["lora"]) if info["lora"] is not None else None
    tower = load_tower(base_folder, np.asarray(info["coords"]), info["pooling"], info["scale"], info["trainable"],
                       info["last_n"], lora)
    saved = load_file(str(folder / TENSORS))
    params = dict(tower.named_parameters())
    expected = set(tower.trainable_names())
    if set(saved) != expected:
        extra, missing = sorted(set(saved) - expected), sorted(expected - set(saved))
        raise EncoderInputError(f"fine-tuned tower {folder}: {TENSORS} does not fit the tower "
                                f"(unexpected {extra[:5]}, missing {missing[:5]})")
    with torch.no_grad():
        for name, tensor in saved.items():
            if tensor.shape != params[name].shape:
                raise EncoderInputError(f"fine-tuned tower {folder}: tensor {name!r} has shape {list(tensor.shape)}, "
                                        f"the tower needs {list(params[name].shape)}")
            params[name].copy_(tensor)
    return tower.eval()
