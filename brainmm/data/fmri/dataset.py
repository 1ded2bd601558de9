"""Reading an fMRI dataset folder: manifest checks, coordinates, split, cohort, signals, windows.

Folder layout (written by `brainmm.data.fmri.ingest`):
  manifest.json       atlas, parcels (labels, order, permutation), TR, window length, normalisation, sources + sha256
  data/               Hugging Face `datasets` Arrow dataset, one row per recording; `signal` is Array2D [T, V]
                      float32 (time-major, so a window is a contiguous slice), plus recording_id, subject_id,
                      session, site, num_timepoints
  coords.tsv          parcel, label, x, y, z, source_index (stored parcel order)
  normalisation.json  method and train-fitted statistics (NormStats)
  split.csv           subject_id, group, split
  cohort.csv          the cohort table with recording_id, split, num_timepoints, sha256, ingested
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmm.data.fmri.normalise import NormStats
from brainmm.data.splits import SPLITS, load_split
from brainmm.errors import BrainmmError
from brainmm.io import atomic_file, sha256_file

FORMAT = "brainmm.fmri"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
DATA_DIR = "data"
COORDS_FILE = "coords.tsv"
STATS_FILE = "normalisation.json"
SPLIT_FILE = "split.csv"
COHORT_FILE = "cohort.csv"
REQUIRED_KEYS = (
    "format", "format_version", "atlas", "num_parcels", "parcel_labels", "parcel_order", "parcel_source_index",
    "source_parcel_labels", "num_timepoints", "tr", "num_recordings", "normalisation", "split", "sources", "files",
    "data_hash",
)


def write_coords(path: Path, coords: np.ndarray, labels: list[str], source_index: list[int]) -> None:
    """Write the coordinates table (stored parcel order) atomically; float32 values, exact round trip."""
    coords = np.asarray(coords, dtype=np.float32)
    table = pd.DataFrame({
        "parcel": np.arange(len(labels)), "label": labels,
        "x": coords[:, 0], "y": coords[:, 1], "z": coords[:, 2], "source_index": source_index,
    })
    with atomic_file(path, suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.9g")


class FmriDataset:
    """A normalised fMRI dataset on disk (see the module docstring for the layout)."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        coords = pd.read_csv(path / COORDS_FILE, sep="\t", dtype={"label": str})
        self.coords = coords[["x", "y", "z"]].to_numpy(dtype=np.float32)
        self.stats = NormStats.load(path / STATS_FILE)
        self.split = load_split(path / SPLIT_FILE)
        self.cohort = pd.read_csv(path / COHORT_FILE, dtype={c: str for c in ("subject_id", "session", "site",
                                                                              "family", "group", "recording_id")})
        self._data = None
        self._reader: SignalReader | None = None
        self._check()

    @classmethod
    def load(cls, path: str | Path) -> FmriDataset:
        """Open a dataset folder, checking its manifest and the hashes of its side files."""
        path = Path(path)
        mpath = path / MANIFEST_FILE
        if not path.is_dir():
            raise BrainmmError(f"fMRI dataset {path}: folder not found (expected a dataset made by `brainmm fmri ingest`)")
        if not mpath.is_file():
            raise BrainmmError(f"fMRI dataset {path}: no {MANIFEST_FILE} (not a dataset made by `brainmm fmri ingest`?)")
        try:
            manifest = json.loads(mpath.read_text())
        except ValueError as err:
            raise BrainmmError(f"fMRI dataset {path}: {MANIFEST_FILE} is not valid JSON ({err})") from err
        if manifest.get("format") != FORMAT:
            raise BrainmmError(f"fMRI dataset {path}: {MANIFEST_FILE} field 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BrainmmError(
                f"fMRI dataset {path}: format_version {manifest.get('format_version')!r}, this brainmm reads "
                f"{FORMAT_VERSION}; ingest it again"
            )
        missing = [k for k in REQUIRED_KEYS if k not in manifest]
        if missing:
            raise BrainmmError(f"fMRI dataset {path}: {MANIFEST_FILE} lacks field(s) {missing}")
        for name, digest in manifest["files"].items():
            fpath = path / name
            if not fpath.is_file():
                raise BrainmmError(f"fMRI dataset {path}: file {name} is missing")
            if sha256_file(fpath) != digest:
                raise BrainmmError(f"fMRI dataset {path}: {name} does not match the sha256 in {MANIFEST_FILE} (modified?)")
        if not (path / DATA_DIR / "state.json").is_file():
            raise BrainmmError(f"fMRI dataset {path}: Arrow data folder {DATA_DIR}/ is missing")
        return cls(path, manifest)

    def _check(self) -> None:
        m, v = self.manifest, self.manifest["num_parcels"]
        checks = [
            (self.coords.shape == (v, 3), f"{COORDS_FILE} has shape {list(self.coords.shape)}, expected [{v}, 3]"),
            (self.stats.num_parcels == v, f"{STATS_FILE} has {self.stats.num_parcels} parcels, expected {v}"),
            (len(m["parcel_labels"]) == v == len(m["parcel_source_index"]), "parcel labels/permutation lengths differ from num_parcels"),
            (len(self.data) == m["num_recordings"], f"{DATA_DIR}/ has {len(self.data)} rows, manifest says {m['num_recordings']}"),
        ]
        for ok, message in checks:
            if not ok:
                raise BrainmmError(f"fMRI dataset {self.path}: {message}")

    # metadata -------------------------------------------------------------------------------------------
    @property
    def data(self):
        """The Arrow dataset (Hugging Face `datasets.Dataset`, memory-mapped, numpy format)."""
        if self._data is None:
            import datasets

            self._data = datasets.load_from_disk(str(self.path / DATA_DIR)).with_format("numpy")
        return self._data

    @property
    def num_parcels(self) -> int:
        """V, the number of parcels."""
        return int(self.manifest["num_parcels"])

    @property
    def num_timepoints(self) -> int:
        """The window length the dataset was prepared for."""
        return int(self.manifest["num_timepoints"])

    @property
    def tr(self) -> float | None:
        """Repetition time in seconds (None when unknown)."""
        return self.manifest["tr"]

    @property
    def recordings(self) -> pd.DataFrame:
        """One row per stored recording: row, recording_id, subject_id, session, site, num_timepoints, split."""
        if not hasattr(self, "_recordings"):
            cols = ["recording_id", "subject_id", "session", "site", "num_timepoints"]
            table = self.data.data.select(cols).to_pandas()
            table.insert(0, "row", np.arange(len(table)))
            split = dict(zip(self.split["subject_id"].astype("str"), self.split["split"]))
            table["split"] = table["subject_id"].map(split)
            self._recordings = table
            self._row = dict(zip(table["recording_id"], table["row"]))
        return self._recordings

    def recording_ids(self, split: str | None = None) -> list[str]:
        """Recording ids in storage order, all or those of one split (train/val/test)."""
        table = self.recordings
        if split is None:
            return table["recording_id"].tolist()
        if split not in SPLITS:
            raise BrainmmError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        return table.loc[table["split"] == split, "recording_id"].tolist()

    def row_of(self, recording_id: str) -> int:
        """Storage row of a recording."""
        self.recordings  # noqa: B018 (builds the index)
        if recording_id not in self._row:
            raise BrainmmError(f"fMRI dataset {self.path}: no recording {recording_id!r}")
        return int(self._row[recording_id])

    # signals --------------------------------------------------------------------------------------------
    def signal(self, recording_id: str) -> np.ndarray:
        """The normalised signal of one recording, [V, T_rec] float32."""
        if self._reader is None:
            self._reader = SignalReader(self.data)
        return np.ascontiguousarray(self._reader(self.row_of(recording_id)).T)

    def transform(self, raw: np.ndarray, source: str = "signal") -> np.ndarray:
        """Bring a new raw recording [V_source, T] (the atlas's given order) to this dataset's parcels and scale."""
        v_src = len(self.manifest["source_parcel_labels"])
        if raw.ndim != 2 or raw.shape[0] != v_src:
            raise BrainmmError(f"{source}: expected [{v_src}, T] (parcels in the atlas's order x time), got {list(raw.shape)}")
        return self.stats.transform(raw[np.asarray(self.manifest["parcel_source_index"])], source)

    def windows(self, split: str | None, num_timepoints: int | None = None, mode: str = "random", seed: int = 0):
        """A torch Dataset of windows of one split (None = all): `random` (one per recording per epoch) or `tiled`."""
        from brainmm.data.fmri.windows import FmriWindows

        t = self.num_timepoints if num_timepoints is None else int(num_timepoints)
        ids = self.recording_ids(split)
        if not ids:
            raise BrainmmError(f"fMRI dataset {self.path}: split {split!r} has no recordings")
        table = self.recordings.set_index("recording_id").loc[ids]
        short = table[table["num_timepoints"] < t]
        if len(short):
            raise BrainmmError(
                f"fMRI dataset {self.path}: recording {short.index[0]!r} has {int(short['num_timepoints'].iloc[0])} "
                f"time points, fewer than the window of {t}"
            )
        return FmriWindows(
            self.path / DATA_DIR, rows=table["row"].to_numpy(), lengths=table["num_timepoints"].to_numpy(),
            recording_ids=ids, subject_ids=table["subject_id"].tolist(), coords=self.coords,
            num_timepoints=t, mode=mode, seed=seed,
        )

    def __repr__(self) -> str:
        m = self.manifest
        return (f"FmriDataset({str(self.path)!r}, recordings={m['num_recordings']}, parcels={m['num_parcels']}, "
                f"num_timepoints={m['num_timepoints']}, normalisation={m['normalisation']['method']!r})")


class SignalReader:
    """Zero-copy [T, V] views of stored recordings from the memory-mapped Arrow buffers (no decoding)."""

    def __init__(self, data) -> None:
        self.column = data.data.column("signal")
        self.starts = np.cumsum([0] + [len(c) for c in self.column.chunks])

    def __call__(self, row: int) -> np.ndarray:
        """Recording at storage `row` as a read-only [T, V] float32 view."""
        c = int(np.searchsorted(self.starts, row, side="right") - 1)
        chunk = self.column.chunk(c)
        storage = getattr(chunk, "storage", chunk)
        rec = storage.slice(row - int(self.starts[c]), 1).flatten()
        return rec.flatten().to_numpy(zero_copy_only=True).reshape(len(rec), -1)


def check_compatible(
    dataset: FmriDataset | str | Path, num_brain_voxels: int, num_timepoints: int, parcel_order: str | None = None
) -> FmriDataset:
    """Raise a clear error when a dataset does not fit a model config (parcel count, window length, order)."""
    ds = dataset if isinstance(dataset, FmriDataset) else FmriDataset.load(dataset)
    m = ds.manifest
    if m["num_parcels"] != num_brain_voxels:
        raise BrainmmError(
            f"fMRI dataset {ds.path} has {m['num_parcels']} parcels (atlas {m['atlas']}), but the model expects "
            f"num_brain_voxels={num_brain_voxels}"
        )
    if m["num_timepoints"] != num_timepoints:
        raise BrainmmError(
            f"fMRI dataset {ds.path} was prepared for windows of {m['num_timepoints']} time points, but the model "
            f"expects num_timepoints={num_timepoints} (ingest again with --num-timepoints {num_timepoints})"
        )
    if parcel_order is not None and m["parcel_order"] != parcel_order:
        raise BrainmmError(
            f"fMRI dataset {ds.path} stores parcels in {m['parcel_order']!r} order, but the model expects "
            f"{parcel_order!r} (ingest again with --parcel-order {parcel_order})"
        )
    return ds
