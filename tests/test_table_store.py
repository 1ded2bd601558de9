"""`InPlaceTable`: a matrix written column block by column block into the output file's memory map reads back as the same
table as `EmbeddingTable.save` writes (values, ids, data hash), with kept columns compacted; on an error nothing is
left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainmm.data.genetics.store import InPlaceTable, data_hash
from brainmm.embeddings import EmbeddingTable


@pytest.mark.parametrize("k", [7, 3, 1])
def test_filled_columns_are_compacted_and_read_back(tmp_path: Path, k: int) -> None:
    rng = np.random.default_rng(k)
    n, cols = 5003, 7  # rows span several compaction chunks only for wide tables; this checks the row arithmetic
    full = rng.normal(size=(n, cols)).astype(np.float32)
    ids = [f"s{i}" for i in range(n)]
    meta: dict = {"kind": "test"}
    with InPlaceTable(tmp_path / "t", n, cols) as t:
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


@pytest.mark.parametrize(("n", "cols", "k", "chunk_rows"), [(11, 9, 4, 2), (4000, 300, 100, 50)])
def test_compaction_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, cols: int, k: int,
                                  chunk_rows: int) -> None:
    """Rows compacted chunk by chunk never overwrite rows still to be moved; the pages freed behind the moved rows
    (the second case spans many pages) are never ones still to be read."""
    import brainmm.data.genetics.store as store

    monkeypatch.setattr(store, "CHUNK_BYTES", chunk_rows * cols * 4)
    full = np.arange(n * cols, dtype=np.float32).reshape(n, cols)
    with InPlaceTable(tmp_path / "t", n, cols) as t:
        t.append(full[:, :k])
        t.finish([str(i) for i in range(n)], {})
    np.testing.assert_array_equal(EmbeddingTable.load(tmp_path / "t").vectors, full[:, :k])


def test_staged_blocks_land_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks narrower and wider than the staging buffer (3 columns here), flushed when it fills, keep their order;
    more columns than reserved is an error."""
    import brainmm.data.genetics.store as store

    monkeypatch.setattr(store, "STAGE_COLUMNS", 3)
    full = np.arange(6 * 12, dtype=np.float32).reshape(6, 12)
    with InPlaceTable(tmp_path / "t", 6, 12) as t:
        for a, b in ((0, 2), (2, 3), (3, 8), (8, 9), (9, 11)):
            t.append(full[:, a:b])
        with pytest.raises(ValueError, match="room for 12"):
            t.append(full[:, :2])
        t.finish([str(i) for i in range(6)], {})
    np.testing.assert_array_equal(EmbeddingTable.load(tmp_path / "t").vectors, full[:, :11])


def test_an_error_or_a_missing_finish_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boom"):
        with InPlaceTable(tmp_path / "t", 10, 3) as t:
            t.append(np.ones((10, 3), np.float32))
            raise ValueError("boom")
    with pytest.raises(RuntimeError, match="finish"):
        with InPlaceTable(tmp_path / "t", 10, 3) as t:
            t.append(np.ones((10, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_data_hash_is_column_major_and_independent_of_block_sizes(tmp_path: Path) -> None:
    """The hash is of the values column by column (as blocks arrive) then the ids: the same whatever the blocks,
    and different when two values swap."""
    import hashlib

    full = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
    ids = [str(i) for i in range(9)]
    expected = hashlib.sha256(np.asfortranarray(full).tobytes(order="F") + "\n".join(ids).encode()).hexdigest()
    assert data_hash(full, ids) == expected
    hashes = []
    for cuts in ((5,), (2, 5), (1, 2, 3, 4, 5)):
        meta: dict = {}
        with InPlaceTable(tmp_path / f"t{len(cuts)}", 9, 5) as t:
            start = 0
            for stop in cuts:
                t.append(np.asfortranarray(full[:, start:stop]))
                start = stop
            t.finish(ids, meta)
        hashes.append(meta["data_hash"])
    assert hashes == [expected] * 3
    swapped = full.copy()
    swapped[[0, 1], 0] = swapped[[1, 0], 0]
    assert data_hash(swapped, ids) != expected
