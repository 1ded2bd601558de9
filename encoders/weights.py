"""Checks of weight files before a library loads them: one clear `EncoderInputError` instead of a deep traceback.

Safetensors files must parse and hold every tensor's bytes; legacy PyTorch files must load with
`torch.load(weights_only=True)` (no arbitrary pickles). `quiet_transformers` silences transformers' load
reports and progress bars while a checked load runs (the caller reports problems itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from encoders.errors import EncoderInputError

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_WEIGHT_NAMES = ("pytorch_model.bin",)


def read_json(file: str | os.PathLike) -> object:
    """A JSON file's value; EncoderInputError naming the file for bad JSON, bad bytes or nesting too deep to parse."""
    path = Path(file)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise EncoderInputError(f"{path} is not valid JSON: {err}") from None
    except RecursionError:
        raise EncoderInputError(f"{path} is not usable JSON: nested too deeply to parse (expected a flat object of "
                                "settings)") from None
    except OSError as err:
        raise EncoderInputError(f"{path}: unreadable ({err.strerror or err})") from None


def check_safetensors_file(file: str | os.PathLike) -> None:
    """Raise unless the header parses and every tensor's byte range lies inside the file."""
    from safetensors import safe_open

    file = Path(file)
    try:
        with safe_open(str(file), framework="pt") as handle:
            names = list(handle.keys())
            if names:  # touching the last tensor catches a truncated data section
                handle.get_slice(names[-1])
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise EncoderInputError(f"{file} is not a readable safetensors file ({type(err).__name__}: {err})") from None
    with open(file, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_len + end > file.stat().st_size:
        raise EncoderInputError(f"{file} is truncated: its header needs {8 + header_len + end} bytes, the file has "
                                f"{file.stat().st_size}")


def check_torch_file(file: str | os.PathLike) -> None:
    """Raise unless a legacy PyTorch file loads with weights_only=True as a dict (a state dict)."""
    import pickle  # only for its exception type: nothing is unpickled here

    file = Path(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:  # torch's own message is a page long
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" (it needs {found.group(1)})" if found else ""
        raise EncoderInputError(
            f"{file} cannot be read as a PyTorch state dict with weights_only=True: it holds Python objects that "
            f"only unpickling can rebuild{what}, and unpickling runs code; save the weights as safetensors "
            "(or a plain dict of tensors) with a tool you trust"
        ) from None
    except Exception as err:  # corrupt zip, truncated file: user-fixable input problems
        raise EncoderInputError(f"{file} cannot be read as a PyTorch state dict with weights_only=True "
                                f"({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise EncoderInputError(f"{file} must hold a state dict (a dict of tensors), got {type(state).__name__}")


def check_weight_files(folder: str | os.PathLike) -> None:
    """Check every safetensors file and legacy `pytorch_model.bin` directly in a model folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for file in sorted(folder.iterdir()):
        if file.suffix == SAFETENSORS_SUFFIX and file.is_file():
            check_safetensors_file(file)
        elif file.name in TORCH_WEIGHT_NAMES and file.is_file():
            check_torch_file(file)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars while loading (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def available_memory() -> tuple[int, int]:
    """(available, total) bytes of RAM: MemAvailable from /proc/meminfo on Linux, else free/total pages."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, total
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), total
