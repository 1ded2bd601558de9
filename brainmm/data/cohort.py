"""Cohort tables (CSV, TSV or Parquet): read them and check them, with errors naming the table, row and column.

Generic on purpose: the fMRI side maps recordings to subjects with it, the genetics side maps samples to subjects.
Rows are reported as `row N`, counting data rows from 1 (in a CSV/TSV with a header, row N is on line N + 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from brainmm.errors import BrainmmError

# Columns read as text so that identifiers keep their leading zeros ("007" stays "007").
ID_COLUMNS = ("subject_id", "session", "site", "family", "group", "recording_id", "sample_id")
TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")


def read_table(path: str | Path, text_columns: Iterable[str] = ID_COLUMNS) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet table (by suffix); `text_columns` present in it are read as strings.

    The returned frame remembers its file (`table_path(df)`) so that later checks can name it.
    """
    path = Path(path)
    if not path.is_file():
        raise BrainmmError(f"table {path}: file not found")
    suffix = path.suffix.lower()
    text_columns = list(text_columns)
    try:
        if suffix in PARQUET_SUFFIXES:
            df = pd.read_parquet(path)
            for col in text_columns:
                if col in df:
                    df[col] = df[col].astype("str").where(df[col].notna())
        elif suffix in TEXT_SEPARATORS:
            df = pd.read_csv(path, sep=TEXT_SEPARATORS[suffix], dtype={c: str for c in text_columns},
                             encoding="utf-8-sig")  # a BOM would otherwise stick to the first column's name
        else:
            raise BrainmmError(
                f"table {path}: unknown format {suffix!r}; expected one of "
                f"{', '.join(sorted(TEXT_SEPARATORS) + list(PARQUET_SUFFIXES))}"
            )
    except BrainmmError:
        raise
    except Exception as err:  # parser errors differ between engines; report them against the file
        raise BrainmmError(f"table {path}: cannot be read ({' '.join(str(err).split())})") from err
    if df.empty:
        raise BrainmmError(f"table {path}: has no rows")
    df.columns = [str(c).strip() for c in df.columns]
    df = df.reset_index(drop=True)
    df.attrs["table_path"] = str(path.resolve())
    return df


def table_path(df: pd.DataFrame) -> str:
    """The file a table was read from ('<table>' when it was built in memory)."""
    return str(df.attrs.get("table_path", "<table>"))


def row_name(i: int) -> str:
    """How error messages name a 0-based row position."""
    return f"row {int(i) + 1}"


def require_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise if any of `columns` is missing (lists the columns the table has)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BrainmmError(
            f"table {table_path(df)}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
            f"it has {', '.join(repr(str(c)) for c in df.columns)}"
        )


def require_values(df: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise at the first empty cell in `columns` (naming the row and column)."""
    for col in columns:
        empty = df[col].isna() | (df[col].astype("str").str.strip() == "")
        if empty.any():
            i = int(empty.to_numpy().nonzero()[0][0])
            raise BrainmmError(f"table {table_path(df)}: {row_name(i)}, column {col!r} is empty ({int(empty.sum())} empty in all)")


def check_unique(df: pd.DataFrame, columns: Sequence[str], what: str | None = None) -> None:
    """Raise if two rows share the values of `columns` (names both rows and the values)."""
    key = df[list(columns)].astype("str")
    dup = key.duplicated(keep=False)
    if dup.any():
        rows = dup.to_numpy().nonzero()[0]
        first = key.iloc[rows[0]].tolist()
        same = [r for r in rows if key.iloc[r].tolist() == first]
        values = ", ".join(f"{c}={v!r}" for c, v in zip(columns, first))
        label = what or "duplicate " + "/".join(columns)
        raise BrainmmError(
            f"table {table_path(df)}: {label}: {row_name(same[0])} and {row_name(same[1])} both have {values}"
        )


def resolve_paths(df: pd.DataFrame, column: str, must_exist: bool = True) -> list[Path]:
    """The paths in `column`, relative ones resolved against the table's folder; missing files raise."""
    require_columns(df, [column])
    require_values(df, [column])
    base = Path(table_path(df)).parent if "table_path" in df.attrs else Path.cwd()
    out: list[Path] = []
    for i, value in enumerate(df[column].astype("str")):
        p = Path(value.strip()).expanduser()
        p = p if p.is_absolute() else base / p
        try:
            p = p.resolve()
        except (RuntimeError, OSError) as err:  # a symlink loop ("Symlink loop from ...", ELOOP)
            raise BrainmmError(f"table {table_path(df)}: {row_name(i)}, column {column!r}: path {p} cannot be "
                               f"resolved (a symbolic-link loop?): {err}") from None
        if must_exist and not p.exists():
            raise BrainmmError(f"table {table_path(df)}: {row_name(i)}, column {column!r}: file {p} does not exist")
        out.append(p)
    return out


def check_one_value_per(df: pd.DataFrame, key: str, column: str) -> None:
    """Raise if one `key` (e.g. a subject) has two different values in `column` (e.g. family)."""
    sub = df[[key, column]].dropna()
    n = sub.groupby(key)[column].nunique()
    if (n > 1).any():
        k = n[n > 1].index[0]
        rows = (df[key] == k).to_numpy().nonzero()[0]
        vals = sorted(sub.loc[sub[key] == k, column].astype("str").unique())
        raise BrainmmError(
            f"table {table_path(df)}: {key} {k!r} has different {column!r} values {vals} "
            f"(rows {', '.join(str(r + 1) for r in rows)})"
        )


def check_numeric_cells(values: pd.Series, subjects: pd.Series, what: str, source: str | Path, fix: str) -> None:
    """A text column whose cells are mostly numbers is a numeric column with a bad cell: name that cell (file,
    column, row, subject, value) rather than let the column turn into categories."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return
    parsed = pd.to_numeric(values, errors="coerce")
    bad = parsed.isna() & values.notna()
    if bad.any() and parsed.notna().sum() >= bad.sum():
        at = values.index[bad.to_numpy().argmax()]
        row = row_name(at) if pd.api.types.is_integer(at) else f"row {at!r}"
        raise BrainmmError(f"{what} in {source}: {row} (subject {subjects.loc[at]!r}) has "
                           f"{str(values.loc[at])[:40]!r}, not a number, in a column of numbers; fix or blank that "
                           f"cell, or {fix}")
