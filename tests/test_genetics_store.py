"""`brainmm.data.genetics.store.ColumnTable`: a matrix appended column block by column block reads back as the
same table as `EmbeddingTable.save` writes (values, ids, data hash), whatever the blocks, the row passes and the
file system's O_DIRECT support; on an error nothing is left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainmm.data.genetics.store import ColumnTable, data_hash
from brainmm.embeddings import EmbeddingTable

# a changed digest silently invalidates every cache: change this only with a note in the README's changes
DATA_HASH_FIXED = "8620d653ddf14b7cb51f69f960a0838747c21e50e34ab713a84dd290cfc6886b"


@pytest.mark.parametrize("k", [7, 3, 1])
def test_fewer_columns_than_reserved_read_back(tmp_path: Path, k: int) -> None:
    rng = np.random.default_rng(k)
    n, cols = 5003, 7
    full = rng.normal(size=(n, cols)).astype(np.float32)
    ids = [f"s{i}" for i in range(n)]
    meta: dict = {"kind": "test"}
    with ColumnTable(tmp_path / "t", n, cols) as t:
        t.append(full[:, :min(k, 4)])  # column blocks, as run_matrix appends them
        if k > 4:
            t.append(full[:, 4:k])
        t.finish(ids, meta)
    table = EmbeddingTable.load(tmp_path / "t")
    np.testing.assert_array_equal(table.vectors, full[:, :k])
    np.testing.assert_array_equal(t.vectors(), full[:, :k])
    assert table.ids == ids and table.dim == k
    assert meta["data_hash"] == data_hash(full[:, :k], ids) == table.meta["data_hash"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.safetensors"]


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize(("n", "k", "write_bytes"), [(11, 9, 8192), (4000, 300, 8192), (3, 5000, 8192), (1, 1, 8192)])
def test_row_passes_and_the_unaligned_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool, n: int,
                                           k: int, write_bytes: int) -> None:
    """Rows written a few at a time (and a row wider than a pass): each pass leaves an unaligned tail that starts
    the next, the last is padded and cut back; with O_DIRECT (where /tmp takes it) and without."""
    import brainmm.data.genetics.store as store

    monkeypatch.setattr(store, "WRITE_BYTES", write_bytes)
    if not direct:
        monkeypatch.setattr(store, "O_DIRECT", 0)
    full = np.arange(n * k, dtype=np.float32).reshape(n, k)
    with ColumnTable(tmp_path / "t", n, k) as t:
        for a in range(0, k, 7):
            t.append(full[:, a:a + 7])
        t.finish([str(i) for i in range(n)], {})
    path = tmp_path / "t.safetensors"
    assert path.stat().st_size == 8 + store.HEADER_BYTES + n * k * 4
    np.testing.assert_array_equal(EmbeddingTable.load(tmp_path / "t").vectors, full)


def test_a_file_system_refusing_direct_writes_gets_buffered_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opened with O_DIRECT but its writes refused (EINVAL): the flag is dropped and the write retried."""
    import errno
    import os

    import brainmm.data.genetics.store as store

    real_write, refused = os.write, []

    def write(fd: int, data) -> int:
        if store.fcntl.fcntl(fd, store.fcntl.F_GETFL) & store.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(store.os, "write", write)
    full = np.random.default_rng(1).normal(size=(50, 40)).astype(np.float32)
    with ColumnTable(tmp_path / "t", 50, 40) as t:
        t.append(full)
        t.finish([str(i) for i in range(50)], {})
    np.testing.assert_array_equal(EmbeddingTable.load(tmp_path / "t").vectors, full)
    assert refused or not store.O_DIRECT


def test_blocks_land_in_order(tmp_path: Path) -> None:
    """Blocks of any width and layout (C or Fortran order, float64) keep their order; more columns than reserved is
    an error."""
    full = np.arange(6 * 12, dtype=np.float32).reshape(6, 12)
    with ColumnTable(tmp_path / "t", 6, 12) as t:
        for a, b in ((0, 2), (2, 3), (3, 8), (8, 9), (9, 11)):
            block = full[:, a:b]
            t.append(np.asfortranarray(block) if a % 2 else block.astype(np.float64))
        with pytest.raises(ValueError, match="room for 12"):
            t.append(full[:, :2])
        t.finish([str(i) for i in range(6)], {})
    np.testing.assert_array_equal(EmbeddingTable.load(tmp_path / "t").vectors, full[:, :11])


def test_an_error_or_a_missing_finish_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boom"):
        with ColumnTable(tmp_path / "t", 10, 3) as t:
            t.append(np.ones((10, 3), np.float32))
            raise ValueError("boom")
    with pytest.raises(RuntimeError, match="finish"):
        with ColumnTable(tmp_path / "t", 10, 3) as t:
            t.append(np.ones((10, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_data_hash_is_column_major_and_independent_of_block_sizes(tmp_path: Path) -> None:
    """The hash is of the values column by column (as blocks arrive) then the ids, genotype-like columns (0/1/2
    and at most one other value) as bytes: the same whatever the blocks, and different when two values swap."""
    import hashlib

    rng = np.random.default_rng(0)
    full = rng.normal(size=(9, 5)).astype(np.float32)
    full[:, 1] = rng.integers(0, 3, size=9)  # hard calls
    full[:, 3] = rng.integers(0, 3, size=9)
    full[[2, 5], 3] = 0.75  # and two calls filled with a fractional mean
    ids = [str(i) for i in range(9)]
    parts = [b"F" + full[:, 0].tobytes(), b"C" + np.float32(3).tobytes() + full[:, 1].astype(np.uint8).tobytes(),
             b"F" + full[:, 2].tobytes(),
             b"C" + np.float32(0.75).tobytes() + np.where(full[:, 3] == 0.75, 3, full[:, 3]).astype(np.uint8).tobytes(),
             b"F" + full[:, 4].tobytes()]
    expected = hashlib.sha256(b"".join(parts) + "\n".join(ids).encode()).hexdigest()
    assert data_hash(full, ids) == expected
    hashes = []
    for cuts in ((5,), (2, 5), (1, 2, 3, 4, 5)):
        meta: dict = {}
        with ColumnTable(tmp_path / f"t{len(cuts)}", 9, 5) as t:
            start = 0
            for stop in cuts:
                t.append(np.asfortranarray(full[:, start:stop]))
                start = stop
            t.finish(ids, meta)
        hashes.append(meta["data_hash"])
    assert hashes == [expected] * 3
    for col in (0, 1, 3):
        swapped = full.copy()
        swapped[[0, 1], col] = swapped[[1, 0], col] if full[0, col] != full[1, col] else (0.5, 1.0)
        assert data_hash(swapped, ids) != expected


@pytest.mark.parametrize("direct", [True, False])
def test_call_codes_read_back_as_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    """Blocks kept as one byte per call (3 = filled with the column's value), selected columns only, beside a float
    block: the file holds the same float32 values, and the hash is that of the values (as `data_hash` of the float
    matrix)."""
    import brainmm.data.genetics.store as store

    monkeypatch.setattr(store, "WRITE_BYTES", 4096)  # many row passes
    if not direct:
        monkeypatch.setattr(store, "O_DIRECT", 0)
    rng = np.random.default_rng(2)
    n = 301
    codes = rng.integers(0, 4, size=(9, n)).astype(np.uint8)  # variant-major, as BlockImputer returns them
    fill = rng.uniform(0, 2, size=9).astype(np.float32)
    fill[1] = 1.0  # an imputed mode: its cells coded 3 here, made canonical (1) for the hash
    values = np.where(codes == 3, fill[:, None], codes).astype(np.float32).T  # [n, 9]
    floats = rng.normal(size=(n, 4)).astype(np.float32)
    keep = np.array([0, 2, 3, 8])
    ids = [str(i) for i in range(n)]
    meta: dict = {}
    with ColumnTable(tmp_path / "t", n, 17) as t:
        t.append(np.asfortranarray(values), calls=codes, fill=fill)
        t.append(floats)
        t.append(np.asfortranarray(values), columns=keep, calls=codes, fill=fill)
        t.finish(ids, meta)
    expected = np.concatenate([values, floats, values[:, keep]], axis=1)
    np.testing.assert_array_equal(EmbeddingTable.load(tmp_path / "t").vectors, expected)
    assert meta["data_hash"] == data_hash(expected, ids)


def test_an_error_while_writing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails (a full disk) surfaces as that error, and no file is left."""
    import errno

    import brainmm.data.genetics.store as store

    def full(fd: int, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "write", full)
    with pytest.raises(OSError, match="No space"):
        with ColumnTable(tmp_path / "t", 20, 4) as t:
            t.append(np.ones((20, 4), np.float32))
            t.finish([str(i) for i in range(20)], {})
    assert list(tmp_path.iterdir()) == []


def test_data_hash_is_the_documented_digest() -> None:
    """data_hash keys every cache: a fixed table has a fixed digest, equal to the docstring's definition built here."""
    import hashlib

    geno = np.array([0, 1, 2, 2, 0.5], dtype=np.float32)  # 0/1/2 and one other value (a dosage)
    calls = np.array([2, 0, 1, 1, 0], dtype=np.float32)  # hard calls only: v = 3.0
    other = np.array([0.25, -1.0, 3.5, 0.0, 7.0], dtype=np.float32)
    ids = ["a", "b", "c", "d", "e"]
    h = hashlib.sha256()
    h.update(b"C" + np.float32(0.5).tobytes() + bytes([0, 1, 2, 2, 3]))
    h.update(b"C" + np.float32(3.0).tobytes() + bytes([2, 0, 1, 1, 0]))
    h.update(b"F" + other.tobytes())
    h.update(b"a\nb\nc\nd\ne")
    digest = data_hash(np.stack([geno, calls, other], axis=1), ids)
    assert digest == h.hexdigest()
    assert digest == DATA_HASH_FIXED
