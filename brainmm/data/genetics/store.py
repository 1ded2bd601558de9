"""Write a large table whose columns arrive in blocks, in `brainmm.embeddings.EmbeddingTable.save`'s format:
`<stem>.safetensors` (`vectors` F32 [N, D]) + `<stem>.json`.

`ColumnTable` keeps each block column-major as it arrives: float32, or one byte per value for hard calls (0/1/2,
and 3 for an imputed call with the column's fill value). `finish` turns the blocks into rows through aligned
buffers and writes the file in a single sequential pass, with O_DIRECT where the file system takes it, hashing the
blocks while the disk writes. So the matrix is held once (a quarter of it for hard calls), and its gigabytes never
pass through the page cache, whose page-by-page allocation is the slow part of writing them on a VM."""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from brainmm.embeddings import safetensors_header
from brainmm.io import atomic_file, atomic_write_json

CHUNK_BYTES = 32 << 20
WRITE_BYTES = 32 << 20  # rows transposed and written per pass
ALIGN = 4096  # O_DIRECT: buffer address, file offset and length in multiples of the block size
HEADER_BYTES = 248  # the JSON header, space-padded: 8 + 248 keeps the data 256-byte aligned
O_DIRECT = getattr(os, "O_DIRECT", 0)
# ([b, n] float32 values, None, None) or ([b, n] call codes, fill [b] of code 3, which columns hold a 3)
Block = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]


def _column_chunks(vectors: np.ndarray):
    cols = max(1, CHUNK_BYTES // max(1, vectors.shape[0] * 4))
    for start in range(0, vectors.shape[1], cols):
        yield np.ascontiguousarray(vectors[:, start:start + cols].T, dtype=np.float32)


def data_hash(vectors: np.ndarray, ids: list[str]) -> str:
    """sha256 of the values column by column, then of the newline-joined ids. A column whose values are all 0, 1 or
    2 but for cells of one other finite value v is hashed as b"C" + float32(v) (3.0 when there is none) + one byte
    per value (3 for v); any other column as b"F" + its float32 values. (Genotype columns are hashed from their
    bytes: a quarter of the data.)"""
    h = hashlib.sha256()
    for chunk in _column_chunks(vectors):
        _hash_values(h, chunk)
    h.update("\n".join(ids).encode())
    return h.hexdigest()


def _hash_values(h: Any, x: np.ndarray) -> None:
    """Add the columns of a column-major float32 block [b, n] to `h` as `data_hash` defines them."""
    small = (x == 0) | (x == 1) | (x == 2)
    for j in range(x.shape[0]):
        if small[j].all():
            h.update(b"C" + np.float32(3).tobytes())
            h.update(x[j].astype(np.uint8))
            continue
        extra = x[j][~small[j]]
        v = extra[0]
        if np.isfinite(v) and (extra == v).all():
            h.update(b"C" + np.float32(v).tobytes())
            h.update(np.where(small[j], x[j], 3).astype(np.uint8))
        else:
            h.update(b"F")
            h.update(memoryview(np.ascontiguousarray(x[j])).cast("B"))


def _canonical_calls(calls: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Which columns of a call-code block [b, n] hold code 3 (the column's `fill`), after recoding the 3s of a fill
    of 0, 1 or 2 as that value (in place), as `data_hash` wants them."""
    has_fill = (calls == 3).any(axis=1)
    for j in np.flatnonzero(has_fill & np.isin(fill, (0, 1, 2))):
        calls[j][calls[j] == 3] = int(fill[j])
        has_fill[j] = False
    return has_fill


def _hash_calls(h: Any, calls: np.ndarray, fill: np.ndarray, has_fill: np.ndarray) -> None:
    """Add the columns of a canonical call-code block [b, n] to `h` as `data_hash` defines them."""
    for j in range(calls.shape[0]):
        if has_fill[j] and not np.isfinite(fill[j]):  # NaN cells: a float column
            _hash_values(h, np.where(calls[j] == 3, fill[j], calls[j]).astype(np.float32)[None])
            continue
        h.update(b"C" + np.float32(fill[j] if has_fill[j] else 3).tobytes())
        h.update(calls[j])


class ColumnTable:
    """`with ColumnTable(stem, n, cols) as t:` `t.append(block)` column blocks (float32 [n, b]; at most `cols`
    columns in all), then `t.finish(ids, meta)`: the appended columns become the table (meta["data_hash"] set),
    written to a temp file that is renamed into place when the block ends and followed by `<stem>.json`. On an
    error the temp file is removed and nothing is written."""

    def __init__(self, stem: Path, n: int, cols: int) -> None:
        self.stem, self.n, self.cols = Path(stem), int(n), int(cols)
        self.columns = 0  # appended so far
        self._blocks: list[Block] = []
        self._hash = hashlib.sha256()
        self._sidecar: dict[str, Any] | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ColumnTable:
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self._stack.enter_context(
            atomic_file(self.stem.with_name(self.stem.name + ".safetensors"), suffix=".safetensors"))
        return self

    def append(self, block: np.ndarray, columns: np.ndarray | None = None, calls: np.ndarray | None = None,
               fill: np.ndarray | None = None) -> None:
        """Add the block's `columns` (default: all) of float32 values [n, b] after those appended so far. With
        `calls` (uint8 [b, n]: the same values as 0/1/2, or 3 where a missing call was filled with `fill[j]`) the
        block is kept as those codes."""
        x = block.T
        b = x.shape[0] if columns is None else len(columns)
        if self.columns + b > self.cols:
            raise ValueError(f"ColumnTable: {self.columns + b} columns appended, room for {self.cols}")
        if block.shape[0] != self.n:
            raise ValueError(f"ColumnTable: a block of {block.shape[0]} rows, expected {self.n}")
        if not b:
            return
        source = x if calls is None else calls
        kept = _fresh((b, self.n), np.float32 if calls is None else np.uint8)
        if columns is None:
            np.copyto(kept, source, casting="same_kind")
        else:
            np.take(source, columns, axis=0, out=kept, mode="clip")  # valid indices; "raise" would copy via a temp
        if calls is None:
            self._blocks.append((kept, None, None))
        else:
            fill = np.asarray(fill if columns is None else fill[columns], dtype=np.float32)
            self._blocks.append((kept, fill, _canonical_calls(kept, fill)))
        self.columns += b

    def finish(self, ids: list[str], meta: dict[str, Any]) -> None:
        """Write the file (header, then the rows) and set meta["data_hash"], hashing the blocks while the disk
        writes; the rename happens on exit."""
        header = safetensors_header(self.n, self.columns, HEADER_BYTES)
        blocks, self._blocks = self._blocks, []
        hashing = self._hash_blocks(blocks)
        _write_rows(self._tmp, header, blocks, self.n, hashing)
        collections.deque(hashing, maxlen=0)  # hash what the writes left
        self._hash.update("\n".join(ids).encode())
        meta["data_hash"] = self._hash.hexdigest()
        self._sidecar = {"ids": list(ids), "dim": int(self.columns), "meta": meta}

    def _hash_blocks(self, blocks: list[Block]) -> Iterator[None]:
        """Hash the blocks in order, one per step."""
        for kept, fill, has_fill in blocks:
            if fill is None:
                _hash_values(self._hash, kept)
            else:
                _hash_calls(self._hash, kept, fill, has_fill)
            yield

    def __exit__(self, exc_type, exc, tb) -> None:
        self._blocks = []
        if exc_type is None and self._sidecar is None:
            exc = RuntimeError("ColumnTable: finish() was not called")
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


def _fresh(shape: tuple[int, int], dtype: type) -> np.ndarray:
    """An empty array in its own anonymous map: the system's page-size policy. (numpy asks for huge pages, whose
    first-touch faults cost 3-5x more per byte than 4 KiB ones on the VMs measured; see the genotype benchmark.)"""
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape) if nbytes else np.empty(shape, dtype)


def _wait(job: Future, idle: Iterator[None]) -> None:
    """Wait for `job`, running steps of `idle` until it is done (or `idle` is exhausted); re-raises its error."""
    while not job.done():
        if next(idle, True) is not None:
            break
    job.result()


def _write_rows(path: Path, header: bytes, blocks: list[Block], n: int, idle: Iterator[None]) -> None:
    """Write `header` then the rows of the column blocks ([b, n] each, side by side) to `path` in one pass. Two
    aligned buffers take turns: one is written by a thread (waiting on the disk, as the kernel's write-back would
    for a buffered write) while the next rows are transposed into the other; while a write is still going, steps
    of `idle` run."""
    k = sum(b.shape[0] for b, _, _ in blocks)
    size = len(header) + n * k * 4
    rows = max(1, WRITE_BYTES // max(1, k * 4))
    nbytes = -(-(rows * k * 4 + 2 * ALIGN) // ALIGN) * ALIGN
    bufs = [mmap.mmap(-1, nbytes), mmap.mmap(-1, nbytes)]  # page-aligned, as O_DIRECT needs
    views = [memoryview(b) for b in bufs]
    widest = max((b.shape[0] for b, fill, _ in blocks if fill is not None), default=0)
    codes_buf, filled_buf = np.empty((rows, widest), np.uint8), np.empty((rows, widest), bool)
    fd = _open_direct(path)
    writer = ThreadPoolExecutor(1)
    try:
        bufs[0][:len(header)] = header
        pending, turn, writing = len(header), 0, None  # pending: bytes at the start of bufs[turn] not yet written
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            buf = bufs[turn]
            out = np.frombuffer(buf, np.float32, count=(r1 - r0) * k, offset=pending).reshape(r1 - r0, k)
            c0 = 0
            for block, fill, has_fill in blocks:
                b = block.shape[0]
                if fill is None:
                    out[:, c0:c0 + b] = block[:, r0:r1].T
                else:  # transpose the bytes, then widen along the rows
                    codes, filled = codes_buf[:r1 - r0, :b], filled_buf[:r1 - r0, :b]
                    np.copyto(codes, block[:, r0:r1].T)
                    np.copyto(out[:, c0:c0 + b], codes)
                    if has_fill.any() and np.equal(codes, 3, out=filled).any():
                        np.copyto(out[:, c0:c0 + b], fill, where=filled)
                c0 += b
            del out
            end = pending + (r1 - r0) * k * 4
            whole = end // ALIGN * ALIGN
            if writing is not None:
                _wait(writing, idle)  # the other buffer is free again
            writing = writer.submit(_write_all, fd, views[turn][:whole])
            turn = 1 - turn
            bufs[turn][:end - whole] = buf[whole:end]
            pending = end - whole
        if writing is not None:
            _wait(writing, idle)
        if pending:  # the tail, padded to a whole block, then cut back
            bufs[turn][pending:ALIGN] = bytes(ALIGN - pending)
            _write_all(fd, views[turn][:ALIGN])
        os.ftruncate(fd, size)
    finally:
        writer.shutdown(wait=True)
        os.close(fd)
        for view, buf in zip(views, bufs):
            view.release()
            with contextlib.suppress(BufferError):  # after an error mid-assembly its traceback holds a view: GC frees
                buf.close()


def _open_direct(path: Path) -> int:
    """`path` opened for writing, with O_DIRECT when the file system allows it (tmpfs and others refuse it)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_DIRECT, 0o644)
    except OSError as err:
        if not O_DIRECT or err.errno != errno.EINVAL:
            raise
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def _write_all(fd: int, data: memoryview) -> None:
    """Write all of `data`; a file system that opens with O_DIRECT but refuses its writes gets buffered ones."""
    done = 0
    while done < len(data):
        try:
            done += os.write(fd, data[done:])
        except OSError as err:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            if err.errno != errno.EINVAL or not flags & O_DIRECT:
                raise
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~O_DIRECT)
