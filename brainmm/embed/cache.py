"""On-disk cache of brain embedding tables, and a writer that streams table rows to disk.

An entry is the folder `<cache_dir>/<key[:24]>/` holding `recordings.{safetensors,json}`, `subjects.{...}` and
`key.json` (what the key was computed from). The key hashes the model (config + weight bytes), the dataset
(manifest + normalisation statistics), the pooling, the window and the resolved precision (fp32 / bf16).
Entries appear by one atomic folder rename, so a reader sees a complete entry or none.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from brainmm.embeddings import safetensors_header
from brainmm.errors import BrainmmError
from brainmm.io import atomic_file, sha256_file

CACHE_FORMAT = 1
TABLES = ("recordings", "subjects")


def dataset_hash(path: str | Path) -> str:
    """SHA-256 of a dataset's manifest.json and normalisation.json (the manifest lists every data file's hash)."""
    path = Path(path)
    h = hashlib.sha256()
    for name in ("manifest.json", "normalisation.json"):
        f = path / name
        if not f.is_file():
            raise BrainmmError(f"fMRI dataset {path}: {name} is missing")
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def cache_key(fields: dict[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of the key fields (plus the cache format)."""
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True).encode()).hexdigest()


def entry_dir(cache_dir: str | Path, key: str) -> Path:
    """The folder of the entry for `key`."""
    return Path(cache_dir) / key[:24]


def is_complete(entry: Path) -> bool:
    """Whether an entry holds both tables."""
    return all((entry / f"{t}{ext}").is_file() for t in TABLES for ext in (".safetensors", ".json"))


class StreamingTable:
    """Write an EmbeddingTable's vectors row block by row block (memory independent of the row count).

    The row count is known in advance; `close()` checks it, then renames the temp file into place. Use as a
    context manager: an exception removes the temp file and leaves any previous table untouched.
    """

    def __init__(self, stem: str | Path, rows: int, dim: int) -> None:
        self.path = Path(stem).with_suffix(".safetensors")
        self.rows, self.dim, self.written = int(rows), int(dim), 0
        self._ctx = atomic_file(self.path, suffix=".safetensors")
        self._fh = open(self._ctx.__enter__(), "wb")  # noqa: SIM115 (closed in close/abort)
        self._fh.write(safetensors_header(self.rows, self.dim))

    def write(self, block: np.ndarray) -> None:
        """Append rows [k, dim] (cast to float32)."""
        block = np.ascontiguousarray(block, dtype="<f4")
        if block.ndim != 2 or block.shape[1] != self.dim or self.written + len(block) > self.rows:
            raise BrainmmError(f"embedding table {self.path}: got rows of shape {list(block.shape)} after "
                               f"{self.written} rows; expected [k, {self.dim}] and {self.rows} rows in all")
        self._fh.write(block.tobytes())
        self.written += len(block)

    def close(self) -> Path:
        """Finish the file (all rows must be written) and move it into place."""
        if self.written != self.rows:
            self.abort()
            raise BrainmmError(f"embedding table {self.path}: {self.written} rows written, {self.rows} expected")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Drop the temp file."""
        if not self._fh.closed:
            self._fh.close()
            self._ctx.__exit__(BrainmmError, BrainmmError("aborted"), None)

    def __enter__(self) -> StreamingTable:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
