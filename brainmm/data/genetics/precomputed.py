"""Precomputed per-subject genetics vectors (Parquet, CSV/TSV, NPY/NPZ) -> EmbeddingTable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError


def _from_frame(frame: pd.DataFrame, path: Path, id_column: str) -> tuple[list[str], np.ndarray]:
    if id_column not in frame:
        raise BrainmmError(f"embedding file {path}: no id column {id_column!r} (columns: "
                           f"{', '.join(map(str, frame.columns[:10]))}); pass --id-column")
    ids = frame[id_column].astype(str).tolist()
    rest = frame.drop(columns=[id_column])
    if rest.shape[1] == 1 and rest.iloc[:, 0].map(lambda v: isinstance(v, (list, np.ndarray))).all():
        rows = rest.iloc[:, 0].tolist()  # one list-valued column (Parquet)
        if len({len(r) for r in rows}) > 1:
            raise BrainmmError(f"embedding file {path}: column {rest.columns[0]!r} holds vectors of different lengths")
        return ids, np.asarray(rows, dtype=np.float64)
    bad = [c for c in rest.columns if not pd.api.types.is_numeric_dtype(rest[c])]
    if bad:
        raise BrainmmError(f"embedding file {path}: non-numeric column(s) {bad[:5]}; expected {id_column!r} plus "
                           "numeric columns (or one list column)")
    return ids, rest.to_numpy(dtype=np.float64)


def read_precomputed(path: str | Path, id_column: str = "subject_id", ids_path: str | Path | None = None,
                     ) -> EmbeddingTable:
    """A subject-keyed table from `.parquet`, `.csv`/`.tsv` (id column + numeric columns), `.npz` (arrays
    `ids`, `vectors`) or `.npy` (vectors; ids one per line in `ids_path`, default `<stem>.ids.txt`)."""
    path = Path(path)
    if not path.is_file():
        raise BrainmmError(f"embedding file {path}: not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            ids, vectors = _from_frame(pd.read_parquet(path), path, id_column)
        elif suffix in (".csv", ".tsv"):
            ids, vectors = _from_frame(pd.read_csv(path, sep="," if suffix == ".csv" else "\t",
                                                   dtype={id_column: str}), path, id_column)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "ids" not in data or "vectors" not in data:
                    raise BrainmmError(f"embedding file {path}: expected arrays 'ids' and 'vectors', got "
                                       f"{sorted(data.files)}")
                ids, vectors = [str(i) for i in data["ids"]], data["vectors"]
        elif suffix == ".npy":
            vectors = np.load(path, allow_pickle=False)
            id_file = Path(ids_path) if ids_path else path.with_suffix(".ids.txt")
            if not id_file.is_file():
                raise BrainmmError(f"embedding file {path}: ids file {id_file} not found (one subject id per line)")
            ids = [line.strip() for line in id_file.read_text().splitlines() if line.strip()]
        else:
            raise BrainmmError(f"embedding file {path}: unknown format {suffix!r}; expected .parquet, .csv, .tsv, "
                               ".npz or .npy")
    except (ValueError, OSError) as err:
        raise BrainmmError(f"embedding file {path}: unreadable ({err.__class__.__name__}: {err})") from None
    vectors = np.asarray(vectors)
    if vectors.dtype.kind not in "biuf":
        example = f" (e.g. {str(vectors.flat[0])[:40]!r})" if vectors.size else ""
        raise BrainmmError(f"embedding file {path}: expected numeric vectors, got dtype {vectors.dtype}{example}")
    if vectors.ndim != 2 or vectors.shape[0] != len(ids) or vectors.shape[1] == 0:
        raise BrainmmError(f"embedding file {path}: expected {len(ids)} rows of vectors, got shape "
                           f"{list(vectors.shape)}")
    dup = pd.Series(ids)[pd.Series(ids).duplicated()].unique().tolist()
    if dup:
        raise BrainmmError(f"embedding file {path}: subject id(s) {dup[:5]} appear more than once")
    if not np.isfinite(vectors).all():
        r = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise BrainmmError(f"embedding file {path}: subject {ids[r]!r} has NaN/inf values")
    meta = {"kind": "precomputed_genetics", "source": str(path)}
    return EmbeddingTable(ids, vectors, meta)
