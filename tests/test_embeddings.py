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
