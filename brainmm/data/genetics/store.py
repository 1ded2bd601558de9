"""Write a large embedding table row chunk by row chunk (no full copy of the matrix), same format as
`brainmm.embeddings.EmbeddingTable.save`: `<stem>.safetensors` (`vectors` F32 [N, D]) + `<stem>.json`."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from brainmm.io import atomic_file, atomic_write_json

CHUNK_BYTES = 32 << 20


def _row_chunks(vectors: np.ndarray):
    rows = max(1, CHUNK_BYTES // max(1, vectors.shape[1] * 4))
    for start in range(0, vectors.shape[0], rows):
        yield np.ascontiguousarray(vectors[start:start + rows], dtype=np.float32)


def data_hash(vectors: np.ndarray, ids: list[str]) -> str:
    """sha256 of the C-order float32 bytes and the newline-joined ids (computed chunk by chunk)."""
    h = hashlib.sha256()
    for chunk in _row_chunks(vectors):
        h.update(memoryview(chunk).cast("B"))
    h.update("\n".join(ids).encode())
    return h.hexdigest()


def save_table(stem: Path, ids: list[str], vectors: np.ndarray, meta: dict[str, Any]) -> Path:
    """Atomically write the table (vectors may be a strided view); sets meta["data_hash"] (as `data_hash`)."""
    n, d = vectors.shape
    header = json.dumps({"vectors": {"dtype": "F32", "shape": [n, d], "data_offsets": [0, n * d * 4]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(stem.with_name(stem.name + ".safetensors"), suffix=".safetensors") as tmp:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(header)))
            fh.write(header)
            h = hashlib.sha256()
            for chunk in _row_chunks(vectors):
                view = memoryview(chunk).cast("B")
                h.update(view)
                fh.write(view)
    h.update("\n".join(ids).encode())
    meta["data_hash"] = h.hexdigest()
    atomic_write_json(stem.with_name(stem.name + ".json"), {"ids": list(ids), "dim": int(d), "meta": meta})
    return stem
