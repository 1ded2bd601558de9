"""Write a large embedding table without a copy of the matrix, same format as
`brainmm.embeddings.EmbeddingTable.save`: `<stem>.safetensors` (`vectors` F32 [N, D]) + `<stem>.json`.
`InPlaceTable` writes column blocks into the temp file's data region through a memory map, so a matrix filled column
block by column block is neither copied nor held twice (in memory and in the page cache); its hash is taken as the
blocks arrive, column by column, so nothing is read back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from brainmm.io import atomic_file, atomic_write_json

CHUNK_BYTES = 32 << 20
HEADER_BYTES = 248  # InPlaceTable's reserved JSON header (space-padded); 8 + 248 keeps the data 256-byte aligned
STAGE_COLUMNS = 1024  # columns gathered before they go to the map: a 4 KiB page per row, not a sliver of one
STAGE_PAD = 16  # staging rows are 1024 + 16 floats apart: a 4 KiB row stride makes column writes alias in cache


def _column_chunks(vectors: np.ndarray):
    cols = max(1, CHUNK_BYTES // max(1, vectors.shape[0] * 4))
    for start in range(0, vectors.shape[1], cols):
        yield np.ascontiguousarray(vectors[:, start:start + cols].T, dtype=np.float32)


def data_hash(vectors: np.ndarray, ids: list[str]) -> str:
    """sha256 of the float32 values column by column (Fortran order) and the newline-joined ids."""
    h = hashlib.sha256()
    for chunk in _column_chunks(vectors):
        h.update(memoryview(chunk).cast("B"))
    h.update("\n".join(ids).encode())
    return h.hexdigest()


def _header(n: int, d: int, size: int | None = None) -> bytes:
    """The safetensors JSON header of `vectors` F32 [n, d], space-padded to `size` (default: to a multiple of 8)."""
    header = json.dumps({"vectors": {"dtype": "F32", "shape": [n, d], "data_offsets": [0, n * d * 4]}},
                        separators=(",", ":")).encode()
    return header + b" " * ((size - len(header)) if size else -len(header) % 8)


class InPlaceTable:
    """`with InPlaceTable(stem, n, cols) as t:` `t.append(block)` column blocks (float32 [n, b]; at most `cols`
    columns in all) into the temp safetensors file's memory map, then `t.finish(ids, meta)`: the appended columns
    become the table (rows compacted in place, file truncated, header rewritten, meta["data_hash"] set), renamed
    into place when the block ends and followed by `<stem>.json`. On an error the temp file is removed and
    nothing is written."""

    def __init__(self, stem: Path, n: int, cols: int) -> None:
        self.stem, self.n, self.cols = Path(stem), int(n), int(cols)
        self.columns = 0  # appended so far (staged or in the map)
        self._map: np.ndarray | None = None
        self._stage: np.ndarray | None = None
        self._staged = 0
        self._hash = hashlib.sha256()
        self._sidecar: dict[str, Any] | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> InPlaceTable:
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self._stack.enter_context(
            atomic_file(self.stem.with_name(self.stem.name + ".safetensors"), suffix=".safetensors"))
        with open(self._tmp, "wb") as fh:  # sparse: pages never written take no space and are never resident
            fh.truncate(8 + HEADER_BYTES + self.n * self.cols * 4)
        if self.n and self.cols:
            self._map = np.memmap(self._tmp, np.float32, "r+", offset=8 + HEADER_BYTES, shape=(self.n, self.cols))
        return self

    def append(self, block: np.ndarray) -> None:
        """Add columns [n, b] after those appended so far (gathered in a staging buffer of STAGE_COLUMNS)."""
        b = block.shape[1]
        if self.columns + b > self.cols:
            raise ValueError(f"InPlaceTable: {self.columns + b} columns appended, room for {self.cols}")
        if block.shape[0] != self.n:
            raise ValueError(f"InPlaceTable: a block of {block.shape[0]} rows, expected {self.n}")
        if not b:
            return
        for chunk in _column_chunks(block):  # column-major bytes: contiguous as read, whatever the block sizes
            self._hash.update(memoryview(chunk).cast("B"))
        width = min(STAGE_COLUMNS, self.cols)
        if self._stage is None:
            self._stage = np.empty((self.n, width + STAGE_PAD), np.float32)
        if self._staged + b > width:
            self._flush()
        if b > width:
            self._map[:, self.columns:self.columns + b] = block
        else:
            self._stage[:, self._staged:self._staged + b] = block
            self._staged += b
        self.columns += b

    def _flush(self) -> None:
        start = self.columns - self._staged
        self._map[:, start:self.columns] = self._stage[:, :self._staged]
        self._staged = 0

    def finish(self, ids: list[str], meta: dict[str, Any]) -> None:
        """Keep the appended columns, set meta["data_hash"] and write the header; the rename happens on exit."""
        if self._staged:
            self._flush()
        self._stage = None
        k = self.columns
        if k and k < self.cols:
            _compact(self._map, k)
        self._map = None  # the map is released before the file is truncated
        self._hash.update("\n".join(ids).encode())
        meta["data_hash"] = self._hash.hexdigest()
        with open(self._tmp, "r+b") as fh:
            fh.truncate(8 + HEADER_BYTES + self.n * k * 4)
            fh.write(struct.pack("<Q", HEADER_BYTES) + _header(self.n, k, HEADER_BYTES))
        self._sidecar = {"ids": list(ids), "dim": int(k), "meta": meta}

    def __exit__(self, exc_type, exc, tb) -> None:
        self._map = None
        if exc_type is None and self._sidecar is None:
            exc = RuntimeError("InPlaceTable: finish() was not called")
            self._stack.__exit__(RuntimeError, exc, None)  # removes the temp file
            raise exc
        self._stack.__exit__(exc_type, exc, tb)  # on an error: removes the temp file; else: renames it
        if exc_type is None:
            atomic_write_json(self.stem.with_name(self.stem.name + ".json"), self._sidecar)

    def vectors(self) -> np.ndarray:
        """The written table's matrix, memory-mapped read-only from the final file."""
        k = self._sidecar["dim"]
        if not (self.n and k):
            return np.empty((self.n, k), np.float32)
        return np.memmap(self.stem.with_name(self.stem.name + ".safetensors"), np.float32, "r",
                         offset=8 + HEADER_BYTES, shape=(self.n, k))


def _compact(buf: np.memmap, k: int) -> None:
    """Move each row's first k values of the [n, cols] map to row-major [n, k] at its start."""
    n, cols = buf.shape
    flat = buf.reshape(-1)
    rows = max(1, CHUNK_BYTES // (cols * 4))  # row i moves from i * cols to i * k: never onto a later row's source
    for i in range(0, n, rows):
        j = min(n, i + rows)
        flat[i * k:j * k] = np.array(buf[i:j, :k]).reshape(-1)
        _release(buf, j * k * 4, j * cols * 4)  # moved rows' old bytes past the new end: free their pages
    # no msync: the shared map's pages are the page cache that later reads of the file see


def _release(buf: np.memmap, start: int, stop: int) -> None:
    """Punch out the whole pages of data bytes [start, stop) of the map (MADV_REMOVE: the file reads zeros there
    and the pages leave memory), so compaction does not make the dropped columns' pages resident. Best effort."""
    mm = getattr(buf, "_mmap", None)
    if mm is None or not hasattr(mmap, "MADV_REMOVE") or stop <= start:
        return
    base = buf.offset - buf.offset % mmap.ALLOCATIONGRANULARITY  # the map starts at this file offset
    page = mmap.PAGESIZE
    lo = -(-(buf.offset - base + start) // page) * page
    hi = (buf.offset - base + stop) // page * page
    if hi > lo:  # file systems without hole punching refuse: the pages then stay until the file is truncated
        with contextlib.suppress(OSError):
            mm.madvise(mmap.MADV_REMOVE, lo, hi - lo)
