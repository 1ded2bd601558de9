"""`brainmm.data.genetics.precomputed`: embedding / score tables from CSV, TSV, NPY and Parquet (`brainmm genetics
import`), and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stage_inputs import check_error, run

from brainmm.cli import main
from brainmm.data.genetics.precomputed import read_precomputed
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError


def test_precomputed_formats(tmp_path: Path) -> None:
    ids = ["007", "b", "c"]
    vecs = np.arange(6, dtype=np.float64).reshape(3, 2)
    wide = pd.DataFrame({"subject_id": ids, "f0": vecs[:, 0], "f1": vecs[:, 1]})
    wide.to_parquet(tmp_path / "wide.parquet")
    pd.DataFrame({"subject_id": ids, "emb": list(vecs)}).to_parquet(tmp_path / "list.parquet")
    wide.to_csv(tmp_path / "wide.csv", index=False)
    np.savez(tmp_path / "t.npz", ids=np.array(ids), vectors=vecs)
    np.save(tmp_path / "t.npy", vecs)
    (tmp_path / "t.ids.txt").write_text("\n".join(ids) + "\n")
    for name in ("wide.parquet", "list.parquet", "wide.csv", "t.npz", "t.npy"):
        table = read_precomputed(tmp_path / name)
        assert table.ids == ids, name
        np.testing.assert_array_equal(table.vectors, vecs.astype(np.float32))
    bad = wide.assign(f1=[1.0, np.nan, 2.0])
    bad.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(BrainmmError, match=r"nan\.csv: subject 'b' has NaN/inf"):
        read_precomputed(tmp_path / "nan.csv")
    with pytest.raises(BrainmmError, match=r"wide\.csv: no id column 'sid'"):
        read_precomputed(tmp_path / "wide.csv", id_column="sid")
    pd.concat([wide, wide.iloc[:1]]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(BrainmmError, match=r"dup\.csv: subject id\(s\) \['007'\] appear more than once"):
        read_precomputed(tmp_path / "dup.csv")
    assert main(["-q", "genetics", "import", "--table", str(tmp_path / "wide.parquet"),
                 "--out", str(tmp_path / "imported")]) == 0
    assert EmbeddingTable.load(tmp_path / "imported").ids == ids


def test_genetics_import_of_a_string_array(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    (tmp_path / "ids.txt").write_text("s1\ns2\n")
    code, err = run(["-q", "genetics", "import", "--table", str(tmp_path / "s.npy"), "--ids", str(tmp_path / "ids.txt"),
                     "--out", str(tmp_path / "out" / "t")], capsys)
    check_error(code, err, r"embedding file .*s\.npy: expected numeric vectors, got dtype <U1 \(e\.g\. 'a'\)")
    assert not (tmp_path / "out").exists()
