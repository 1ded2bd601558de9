"""`brainmm.embeddings.EmbeddingTable`: round trip, subsets, duplicate ids, stems with dots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError


def test_embedding_table_roundtrip(tmp_path: Path) -> None:
    t = EmbeddingTable(["a", "b"], np.arange(6, dtype=np.float32).reshape(2, 3), {"model": "m"})
    t.save(tmp_path / "emb")
    back = EmbeddingTable.load(tmp_path / "emb")
    assert back.ids == ["a", "b"] and back.meta == {"model": "m"}
    np.testing.assert_array_equal(back.vectors, t.vectors)
    np.testing.assert_array_equal(back.subset(["b"]).vectors, t.vectors[1:])
    with pytest.raises(BrainmmError, match="duplicate ids"):
        EmbeddingTable(["a", "a"], np.zeros((2, 1)))


def test_table_names_with_dots_do_not_collide(tmp_path: Path) -> None:
    EmbeddingTable(["a"], np.ones((1, 2)), {"which": "main"}).save(tmp_path / "x")
    EmbeddingTable(["a"], np.zeros((1, 3)), {"which": "pgs"}).save(tmp_path / "x.pgs")
    assert EmbeddingTable.load(tmp_path / "x").meta["which"] == "main"
    assert EmbeddingTable.load(tmp_path / "x.pgs").dim == 3


def test_memory_mapped_load_equals_the_copy_and_is_read_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = EmbeddingTable([f"s{i}" for i in range(7)], rng.normal(size=(7, 5)), {"kind": "x"})
    stem = table.save(tmp_path / "t_float32")
    mapped, copied = EmbeddingTable.load(stem, mmap=True), EmbeddingTable.load(stem)
    assert isinstance(mapped.vectors.base, np.memmap) and mapped.vectors.dtype == np.float32  # a view of the map
    np.testing.assert_array_equal(mapped.vectors, copied.vectors)
    assert mapped.ids == copied.ids and mapped.meta == copied.meta
    with pytest.raises(ValueError, match="read-only"):
        mapped.vectors[0, 0] = 1.0
    st = tmp_path / "t_float32.safetensors"
    st.write_bytes(st.read_bytes()[:-8])  # truncated data section
    with pytest.raises(BrainmmError, match="unreadable"):
        EmbeddingTable.load(tmp_path / "t_float32", mmap=True)
