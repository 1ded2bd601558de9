"""Embedding tables on disk: vectors (safetensors) + a JSON sidecar with ids and provenance.

`<path>.safetensors` holds `vectors` [N, D] (float32); `<path>.json` holds `ids` (row order), `dim`,
and free-form provenance (`model`, `layer`, `pooling`, `data_hash`, `split`, ...): the cache key and the
provenance in one place.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainmm.errors import BrainmmError
from brainmm.io import atomic_file, atomic_write_json


def table_stem(path: str | Path) -> Path:
    """A table path without its .safetensors/.json suffix."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def safetensors_header(rows: int, dim: int, size: int | None = None) -> bytes:
    """Length prefix + JSON header of a safetensors file with one float32 tensor `vectors` [rows, dim]; the JSON is
    space-padded to `size` bytes (default: to a multiple of 8, so the data section starts 8-byte aligned)."""
    header = json.dumps({"vectors": {"dtype": "F32", "shape": [rows, dim], "data_offsets": [0, rows * dim * 4]}},
                        separators=(",", ":")).encode()
    header += b" " * ((size - len(header)) if size else -len(header) % 8)
    return struct.pack("<Q", len(header)) + header


def _mapped(st: Path) -> np.ndarray:
    """The `vectors` tensor of a safetensors file as a read-only np.memmap (header parsed, offsets checked)."""
    with st.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    info = header["vectors"]
    dtype = {"F32": np.float32, "F64": np.float64, "F16": np.float16}[info["dtype"]]
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - begin != int(np.prod(shape)) * np.dtype(dtype).itemsize or 8 + n + end > st.stat().st_size:
        raise ValueError(f"header offsets {begin}..{end} do not match shape {shape} and the file size")
    return np.memmap(st, dtype=dtype, mode="r", offset=8 + n + begin, shape=shape)


def require_table(path: str | Path) -> Path:
    """The stem of a table whose two files exist, else one BrainmmError naming the missing file (no data read:
    commands call this before heavy imports)."""
    stem = table_stem(path)
    for f in (_with(stem, ".safetensors"), _with(stem, ".json")):
        if not f.is_file():
            raise BrainmmError(f"embedding table {f}: not found (expected {stem}.safetensors and {stem}.json)")
    return stem


def _with(stem: Path, ext: str) -> Path:
    return stem.with_name(stem.name + ext)  # keeps dots in table names ("x.pgs" -> "x.pgs.json")


@dataclass
class EmbeddingTable:
    """Row-aligned ids and vectors plus provenance metadata."""

    ids: list[str]
    vectors: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.ids):
            raise BrainmmError(
                f"embedding table: expected vectors of shape [{len(self.ids)}, D] for {len(self.ids)} ids, "
                f"got {list(self.vectors.shape)}"
            )
        if len(set(self.ids)) != len(self.ids):
            dup = sorted({i for i in self.ids if self.ids.count(i) > 1})[:5]
            raise BrainmmError(f"embedding table: duplicate ids {dup}")

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.vectors.shape[1])

    def subset(self, ids: list[str]) -> EmbeddingTable:
        """Rows for `ids`, in that order (all must exist)."""
        index = {k: i for i, k in enumerate(self.ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise BrainmmError(f"embedding table: {len(missing)} ids not found, e.g. {missing[:5]}")
        rows = [index[i] for i in ids]
        return EmbeddingTable(list(ids), self.vectors[rows], dict(self.meta))

    def save(self, path: str | Path) -> Path:
        """Write `<stem>.safetensors` and `<stem>.json` atomically; returns the stem."""
        from safetensors.numpy import save_file

        stem = table_stem(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(_with(stem, ".safetensors"), suffix=".safetensors") as tmp:
            save_file({"vectors": np.ascontiguousarray(self.vectors)}, str(tmp))
        atomic_write_json(_with(stem, ".json"), {"ids": self.ids, "dim": self.dim, "meta": self.meta})
        return stem

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> EmbeddingTable:
        """Read a table written by `save` (other formats: `brainmm.data.genetics.read_precomputed`); `mmap`: the
        vectors as a read-only memory map of the file (a 10,000 x 89,676 connectivity table is 3.6 GB: its pages
        are read as used and can be dropped again, instead of one anonymous copy)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        stem = require_table(path)
        st, js = _with(stem, ".safetensors"), _with(stem, ".json")
        try:
            side = json.loads(js.read_text())
            vectors = _mapped(st) if mmap else load_file(str(st))["vectors"]
        except (json.JSONDecodeError, SafetensorError, KeyError, ValueError, struct.error) as err:
            raise BrainmmError(f"embedding table {stem}: unreadable ({err.__class__.__name__}: {err})") from None
        return cls(side["ids"], vectors, side.get("meta", {}))
