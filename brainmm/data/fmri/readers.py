"""Parcel time-series files (CSV/TSV/DAT/TXT, NPY, MATLAB .mat) and coordinate tables, oriented to [V, T].

Orientation is decided by the parcel count and never guessed: a square [V, V] array, or one where neither
dimension is V, is an error unless the caller states the orientation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from brainmm.errors import BrainmmError

Orientation = Literal["auto", "time-parcel", "parcel-time"]
TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".dat": r"\s+", ".txt": r"\s+"}
ARRAY_SUFFIXES = (".npy", ".mat")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    """Whether `path` names a NIfTI image (.nii or .nii.gz)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:  # -sig: a BOM is no part of the first cell
        for line in fh:
            if line.strip():
                return line
    raise BrainmmError(f"{path}: file is empty")


def _split(line: str, sep: str) -> list[str]:
    return line.split() if sep == r"\s+" else [t.strip() for t in line.rstrip("\r\n").split(sep)]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _read_text(path: Path) -> np.ndarray:
    sep = TEXT_SUFFIXES[path.suffix.lower()]
    header = not all(_is_number(t) for t in _split(_first_line(path), sep) if t != "")
    try:
        frame = pd.read_csv(path, sep=sep, header=0 if header else None, dtype=np.float64, engine="c",
                            encoding="utf-8-sig")
    except ValueError as err:
        raise BrainmmError(f"{path}: expected a numeric table (optionally with one header row): {err}") from err
    return frame.to_numpy()


def _read_mat(path: Path, key: str | None) -> np.ndarray:
    import scipy.io

    try:
        content = scipy.io.loadmat(path)
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5
        raise BrainmmError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save with -v7") from err
    except Exception as err:  # scipy raises ValueError, OSError, TypeError, IndexError... for damaged files
        raise BrainmmError(f"{path}: not a readable MATLAB .mat file ({type(err).__name__}: {err})") from None
    arrays = {
        k: v for k, v in content.items()
        if not k.startswith("__") and isinstance(v, np.ndarray) and v.dtype.kind in "iuf"
    }
    if key is not None:
        if key not in arrays:
            raise BrainmmError(f"{path}: no numeric array under key {key!r}; numeric keys: {sorted(arrays)}")
        return arrays[key]
    two_d = {k: v for k, v in arrays.items() if v.ndim == 2 and min(v.shape) > 1}
    if len(two_d) != 1:
        found = ", ".join(f"{k} {list(v.shape)}" for k, v in two_d.items()) or "none"
        raise BrainmmError(
            f"{path}: expected exactly one 2-D numeric array to use as the time series, found {found}; "
            "name the key (--mat-key)"
        )
    return next(iter(two_d.values()))


def load_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """The 2-D numeric array stored in a time-series file, as stored (no orientation applied)."""
    path = Path(path)
    if not path.is_file():
        raise BrainmmError(f"time-series file {path}: not found")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        array = _read_text(path)
    elif suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:  # pickled objects, 0 bytes, a damaged header
            reason = "the file is empty (0 bytes)" if path.stat().st_size == 0 else str(err)
            raise BrainmmError(f"{path}: not a numeric .npy array ({reason})") from None
        if array.dtype.kind not in "iuf":
            raise BrainmmError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    elif suffix == ".mat":
        array = _read_mat(path, key)
    else:
        raise BrainmmError(
            f"time-series file {path}: unknown format {suffix!r}; expected "
            f"{', '.join([*TEXT_SUFFIXES, *ARRAY_SUFFIXES, *NIFTI_SUFFIXES])}"
        )
    if array.ndim != 2:
        raise BrainmmError(f"{path}: expected a 2-D array (time x parcels), got shape {list(array.shape)}")
    return array


def orient(array: np.ndarray, num_parcels: int, source: str, orientation: Orientation = "auto",
           parcels_from: str = "") -> np.ndarray:
    """Return `array` as [V, T] (V = `num_parcels`); ambiguous or mismatching shapes raise, naming `source`.

    `parcels_from` says where V comes from (e.g. the coordinates file), for the mismatch message.
    """
    rows, cols = array.shape
    v = num_parcels
    whence = f" (the parcel count of {parcels_from})" if parcels_from else ""
    if orientation == "parcel-time":
        if rows != v:
            raise BrainmmError(f"{source}: shape {[rows, cols]} does not match [{v}, T] (parcels x time){whence}")
        return array
    if orientation == "time-parcel":
        if cols != v:
            raise BrainmmError(f"{source}: shape {[rows, cols]} does not match [T, {v}] (time x parcels){whence}")
        return array.T
    if orientation != "auto":
        raise BrainmmError(f"orientation {orientation!r}: expected 'auto', 'time-parcel' or 'parcel-time'")
    if rows == v and cols == v:
        raise BrainmmError(
            f"{source}: shape {[rows, cols]} is ambiguous (as many time points as parcels, {v}); "
            "state the orientation (--orientation time-parcel or parcel-time)"
        )
    if cols == v:
        return array.T
    if rows == v:
        return array
    raise BrainmmError(
        f"{source}: shape {[rows, cols]} matches neither [T, {v}] (time x parcels) nor [{v}, T] "
        f"(parcels x time) for {v} parcels{whence}"
    )


def read_timeseries(
    path: str | Path, num_parcels: int, key: str | None = None, orientation: Orientation = "auto",
    parcels_from: str = "",
) -> np.ndarray:
    """Read a parcel time-series file as float32 [V, T] (`parcels_from`: where V comes from, for errors)."""
    array = orient(load_array(path, key), num_parcels, str(path), orientation, parcels_from)
    return np.ascontiguousarray(array, dtype=np.float32)


LABEL_COLUMNS = ("label", "name", "region", "roi")


def read_coords(path: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """Read parcel coordinates: ([V, 3] float64 MNI mm, labels or None).

    With a header: columns named x, y, z (any case), optionally label/name/region/roi.
    Without one: 3 columns (x y z) or 4 columns (label x y z). Separator by suffix (.csv comma,
    .tsv tab, .dat/.txt whitespace).
    """
    path = Path(path)
    if not path.is_file():
        raise BrainmmError(f"coordinates file {path}: not found")
    sep = TEXT_SUFFIXES.get(path.suffix.lower())
    if sep is None:
        raise BrainmmError(f"coordinates file {path}: expected .csv, .tsv, .dat or .txt, got {path.suffix!r}")
    tokens = [t.lower() for t in _split(_first_line(path), sep)]
    header = {"x", "y", "z"} <= set(tokens)
    try:
        frame = pd.read_csv(path, sep=sep, header=0 if header else None, dtype=str, encoding="utf-8-sig")
    except ValueError as err:
        raise BrainmmError(f"coordinates file {path}: cannot be read ({err})") from err
    labels: list[str] | None = None
    if header:
        lower = {str(c).strip().lower(): c for c in frame.columns}
        xyz = frame[[lower["x"], lower["y"], lower["z"]]]
        label_col = next((lower[c] for c in LABEL_COLUMNS if c in lower), None)
        if label_col is not None:
            labels = frame[label_col].astype("str").str.strip().tolist()
    elif frame.shape[1] == 3:
        xyz = frame
    elif frame.shape[1] == 4:
        xyz = frame.iloc[:, 1:]
        labels = frame.iloc[:, 0].astype("str").str.strip().tolist()
    else:
        raise BrainmmError(
            f"coordinates file {path}: {frame.shape[1]} columns without a header; expected x y z, "
            "label x y z, or a header naming x, y, z"
        )
    try:
        coords = xyz.astype(np.float64).to_numpy()
    except ValueError as err:
        raise BrainmmError(f"coordinates file {path}: x, y, z must be numbers ({err})") from err
    if not np.isfinite(coords).all():
        row = int(np.nonzero(~np.isfinite(coords).all(1))[0][0])
        raise BrainmmError(f"coordinates file {path}: row {row + 1} has a missing or non-finite coordinate")
    if labels is not None and len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})[:5]
        raise BrainmmError(f"coordinates file {path}: duplicate parcel labels {dup}")
    return coords, labels
