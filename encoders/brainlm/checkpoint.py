"""Checked loading of checkpoint folders: clear `EncoderInputError`s instead of deep library tracebacks.

A folder holds `config.json` plus `model.safetensors` (or a sharded index) or a legacy `pytorch_model.bin`,
read with `torch.load(weights_only=True)` only. Loading is local (no network).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import safe_open

from encoders.errors import EncoderInputError
from encoders.weights import (
    available_memory,
    check_safetensors_file,
    check_torch_file,
    quiet_transformers,
    read_json,
)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_checkpoint_folder(path: str | os.PathLike, model_type: str | None, hint: str = "") -> Path:
    """Check `path` has a readable config.json (of `model_type` unless None) and weights; return the weights file."""
    folder = Path(path)
    if not folder.is_dir():
        raise EncoderInputError(f"checkpoint folder {folder} does not exist (expected a local folder with "
                                f"config.json and model.safetensors or pytorch_model.bin)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise EncoderInputError(f"checkpoint folder {folder} has no config.json")
    config = read_json(config_file)
    if not isinstance(config, dict):
        raise EncoderInputError(f"{config_file} must hold a JSON object")
    found_type = config.get("model_type")
    if model_type is not None and found_type is not None and found_type != model_type:
        raise EncoderInputError(f"{config_file} has model_type {found_type!r}, expected {model_type!r}{hint}")
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        present = sorted(p.name for p in folder.iterdir())
        raise EncoderInputError(f"checkpoint folder {folder} has no weights: expected one of {list(WEIGHT_FILES)}, "
                                f"found {present}")
    if weights.name == "model.safetensors":
        check_safetensors_file(weights)
    elif weights.name == "pytorch_model.bin":
        check_torch_file(weights)
    return weights


def check_memory_budget(n_bytes: int, what: str) -> None:
    """Refuse (EncoderInputError naming `what`) to allocate more bytes than the machine has available."""
    available, total = available_memory()
    if n_bytes > available:
        raise EncoderInputError(f"{what} needs about {n_bytes / 1e9:,.1f} GB, more than this machine's available "
                                f"memory ({available / 1e9:,.1f} GB of {total / 1e9:,.1f} GB)")


def planned_shapes(cls, config) -> dict[str, tuple[tuple[int, ...], int]]:
    """{tensor name: (shape, bytes per element)} of `cls(config)`, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        shell = cls(config)
    return {k: (tuple(v.shape), v.element_size()) for k, v in shell.state_dict().items()}


def stored_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (empty for other formats: they are checked after loading)."""
    if weights.suffix != ".safetensors":
        return {}
    with safe_open(str(weights), framework="pt") as handle:
        return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}


def check_planned_model(cls, folder: Path, weights: Path, allow_mismatch: bool) -> None:
    """Before anything is allocated: the config's tensor shapes against the safetensors header, and their bytes
    against the available memory (a `hidden_size: 10000000` would otherwise try to allocate terabytes)."""
    try:
        config = cls.config_class.from_pretrained(folder, local_files_only=True)
        planned = planned_shapes(cls, config)
    except EncoderInputError as err:
        raise EncoderInputError(f"checkpoint {folder / 'config.json'}: {err}") from None
    except Exception as err:  # noqa: BLE001 (a field of the wrong type or value fails anywhere in transformers/torch)
        raise EncoderInputError(f"checkpoint {folder}: config.json does not describe a model this code can build "
                                f"({err.__class__.__name__}: {str(err)[:200]}); check its fields") from None
    if not allow_mismatch:
        stored = stored_shapes(weights)
        bad = sorted(k for k in planned.keys() & stored.keys() if planned[k][0] != stored[k])
        if bad:
            key = bad[0]
            raise EncoderInputError(
                f"checkpoint {folder}: tensor {key!r} has shape {list(stored[key])} but the config gives "
                f"{list(planned[key][0])}" + (f" (and {len(bad) - 1} more mismatched tensor(s))" if len(bad) > 1 else "")
                + f"; `brainmm brainlm inspect {folder}` lists them all"
            )
    n_params = sum(math.prod(shape) for shape, _ in planned.values())
    n_bytes = sum(math.prod(shape) * size for shape, size in planned.values())
    check_memory_budget(n_bytes, f"checkpoint {folder}: the model its config.json describes "
                                 f"({n_params:,} parameters)")


class CheckedFromPretrainedMixin:
    """`from_pretrained` for a local folder: checks files first, then refuses shape mismatches and missing keys.

    Pass `ignore_mismatched_sizes=True` to accept re-initialised mismatched tensors, or `output_loading_info=True`
    to get `(model, info)` and decide about missing keys yourself.
    """

    checkpoint_model_type: str = ""
    checkpoint_hint: str = ""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a local checkpoint folder (see the class docstring for the checks)."""
        folder = Path(pretrained_model_name_or_path) / kwargs.get("subfolder", "")
        weights = check_checkpoint_folder(folder, cls.checkpoint_model_type, cls.checkpoint_hint)
        want_info = kwargs.pop("output_loading_info", False)
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        check_planned_model(cls, folder, weights, allow_mismatch)
        kwargs["local_files_only"] = True
        with quiet_transformers():  # problems are reported below (or returned with output_loading_info)
            model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args,
                                                  output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        if info["mismatched_keys"] and not allow_mismatch:
            key, found, expected = sorted(info["mismatched_keys"])[0]
            more = len(info["mismatched_keys"]) - 1
            raise EncoderInputError(
                f"checkpoint {folder}: tensor {key!r} has shape {list(found)} but the config gives {list(expected)}"
                + (f" (and {more} more mismatched tensor(s))" if more else "")
                + f"; `brainmm brainlm inspect {folder}` lists them all"
            )
        if info["missing_keys"] and not want_info:
            missing = sorted(info["missing_keys"])
            raise EncoderInputError(
                f"checkpoint {folder} lacks {len(missing)} weight(s) the model needs, e.g. {missing[:5]}; "
                f"`brainmm brainlm inspect {folder}` lists them all (from Python, output_loading_info=True loads the "
                "model anyway with those weights freshly initialised)"
            )
        return (model, info) if want_info else model


def checkpoint_keys(weights: Path) -> set[str]:
    """Tensor names stored in a weights file (safetensors header, sharded index, or a weights_only torch load)."""
    if weights.name.endswith(".index.json"):
        return set(json.loads(weights.read_text()).get("weight_map", {}))
    if weights.suffix == ".safetensors":
        with safe_open(str(weights), framework="pt") as handle:
            return set(handle.keys())
    return set(torch.load(weights, map_location="cpu", weights_only=True, mmap=True))
