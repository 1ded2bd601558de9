"""Cohort tables: formats, id columns as text, and errors naming table, row and column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from stage_inputs import check_error, edited_cohort, ingest_argv, run

from brainmm.data.cohort import (
    check_one_value_per,
    check_unique,
    read_table,
    require_columns,
    require_values,
    resolve_paths,
    table_path,
)
from brainmm.errors import BrainmmError


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"subject_id": ["007", "008"], "path": ["a.npy", "b.npy"], "age": [30, 41]})


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.parquet"])
def test_read_table_formats_keep_ids_as_text(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    df = _frame()
    if name.endswith(".parquet"):
        df.assign(subject_id=[7, 8]).to_parquet(path)  # numeric ids in Parquet become text too
        expected = ["7", "8"]
    else:
        df.to_csv(path, sep="\t" if name.endswith(".tsv") else ",", index=False)
        expected = ["007", "008"]
    out = read_table(path)
    assert out["subject_id"].tolist() == expected
    assert out["age"].tolist() == [30, 41]
    assert table_path(out) == str(path.resolve())


def test_read_table_errors(tmp_path: Path) -> None:
    with pytest.raises(BrainmmError, match="file not found"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(BrainmmError, match="unknown format '.xlsx'"):
        read_table(tmp_path / "t.xlsx")
    (tmp_path / "empty.csv").write_text("subject_id,path\n")
    with pytest.raises(BrainmmError, match="has no rows"):
        read_table(tmp_path / "empty.csv")


def test_validation_names_table_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    path.write_text("subject_id,session,path,family\ns1,1,a.npy,F1\ns2,,b.npy,F2\ns1,1,c.npy,F1\ns1,2,d.npy,F9\n")
    (tmp_path / "a.npy").write_text("x")
    df = read_table(path)
    with pytest.raises(BrainmmError, match=r"cohort.csv: missing required column\(s\) 'site'"):
        require_columns(df, ["subject_id", "site"])
    with pytest.raises(BrainmmError, match="row 2, column 'session' is empty"):
        require_values(df, ["session"])
    with pytest.raises(BrainmmError, match="row 1 and row 3 both have subject_id='s1', session='1'"):
        check_unique(df, ["subject_id", "session"])
    with pytest.raises(BrainmmError, match=r"row 2, column 'path': file .*b.npy does not exist"):
        resolve_paths(df, "path")
    with pytest.raises(BrainmmError, match=r"subject_id 's1' has different 'family' values \['F1', 'F9'\]"):
        check_one_value_per(df, "subject_id", "family")


def test_relative_paths_resolve_against_the_table_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.npy").write_text("x")
    (tmp_path / "b.npy").write_text("x")
    path = tmp_path / "sub" / "cohort.csv"
    path.write_text(f"subject_id,path\ns1,a.npy\ns2,{tmp_path / 'b.npy'}\n")
    monkeypatch.chdir(tmp_path)  # the working folder must not matter
    assert resolve_paths(read_table(path), "path") == [tmp_path / "sub" / "a.npy", tmp_path / "b.npy"]


def test_symlink_loop_in_cohort_paths(src: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "a.npy").symlink_to(tmp_path / "b.npy")
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    cohort = edited_cohort(src, tmp_path, str(tmp_path / "a.npy"))
    code, err = run(ingest_argv(src, tmp_path / "out", cohort), capsys)
    check_error(code, err, r"table .*cohort\.csv: row 3, column 'path': path .*a\.npy cannot be resolved "
                           r"\(a symbolic-link loop\?\)")
