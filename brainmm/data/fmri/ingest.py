"""Ingestion: cohort table + time series (or 4-D NIfTI + atlas) -> a normalised fMRI dataset folder.

Two passes over the recordings: the first reads each source once (raw float32 parked in a work folder),
checks it and samples training time points for the robust statistics; the second normalises and writes the
Hugging Face Arrow dataset. The whole output folder is written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from brainmm.data import cohort as ct
from brainmm.data.fmri.dataset import (
    COHORT_FILE,
    COORDS_FILE,
    DATA_DIR,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    SPLIT_FILE,
    STATS_FILE,
    FmriDataset,
    write_coords,
)
from brainmm.data.fmri.normalise import (
    METHODS,
    REL_SPREAD,
    NormStats,
    RobustSampler,
    bad_parcels,
    fit_robust,
    near_zero_spread,
)
from brainmm.data.fmri.readers import Orientation, is_nifti, read_coords, read_timeseries
from brainmm.data.splits import load_split, make_split, save_split
from brainmm.errors import BrainmmError
from brainmm.io import atomic_dir, atomic_write_json, run_lock, sha256_file

LOG = logging.getLogger(__name__)


@dataclass
class IngestConfig:
    """Settings for `ingest` / `brainmm fmri ingest` (defaults follow the released BrainLM checkpoints)."""

    atlas: Path | None = None  # labels NIfTI: parcellates 4-D images, gives centroids when no coords file
    atlas_labels: Path | None = None  # CSV/TSV `index,name`: selects and orders atlas labels, names parcels
    atlas_name: str | None = None  # recorded in the manifest (default: atlas or coords file name)
    coords: Path | None = None  # x, y, z per parcel (overrides atlas centroids)
    normalise: Literal["robust", "zscore", "none"] | None = None  # None: robust, or the stats_from dataset's
    parcel_order: Literal["given", "y"] | None = None  # None: given, or the stats_from dataset's
    num_timepoints: int = 200  # window length the dataset is prepared for
    split_from: Path | None = None  # reuse an existing split table
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    group_by: list[str] | None = None  # cohort columns grouping subjects; None: 'family' and 'group' if present
    stats_from: Path | None = None  # an fMRI dataset whose normalisation statistics and parcels to reuse
    drop_short: bool = False  # drop recordings shorter than num_timepoints (else an error)
    bad_parcels: Literal["error", "drop", "zero"] = "error"  # NaN/Inf or constant parcels
    resample_atlas: bool = False  # resample the atlas to each image's grid (else grids must match)
    orientation: Orientation = "auto"
    mat_key: str | None = None  # variable holding the time series in .mat files
    tr: float | None = None  # seconds, when the cohort has no 'tr' column
    fit_max_timepoints: int = 100_000  # cap on training time points sampled for median/IQR

    def validate(self) -> None:
        """Check value ranges."""
        if self.num_timepoints < 1:
            raise BrainmmError(f"num_timepoints: expected a positive integer, got {self.num_timepoints}")
        if self.fit_max_timepoints < 1:
            raise BrainmmError(f"fit_max_timepoints: expected a positive integer, got {self.fit_max_timepoints}")
        if self.tr is not None and not 0 < self.tr < float("inf"):
            raise BrainmmError(f"tr: expected seconds > 0, got {self.tr}")
        fractions = tuple(self.split_fractions)
        if len(fractions) != 3 or not all(isinstance(f, (int, float)) and 0 <= f < float("inf") for f in fractions):
            raise BrainmmError(f"split_fractions: expected three non-negative numbers (train, val, test), got {fractions}")
        if self.normalise is not None and self.normalise not in METHODS:
            raise BrainmmError(f"normalise {self.normalise!r}: expected one of {', '.join(METHODS)}")


@dataclass
class _Parcels:
    labels: list[str]
    coords: np.ndarray  # [V_src, 3]
    atlas_values: list[int] | None
    atlas_name: str
    sources: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Recording:
    row: int
    recording_id: str
    subject_id: str
    session: str
    site: str
    path: Path
    split: str
    tr: float | None = None
    num_timepoints: int = 0
    sha256: str = ""
    bad: dict[int, str] = field(default_factory=dict)  # source parcel index -> "nan" (NaN/Inf) or "constant"
    dropped: str | None = None


def _text(value: Any) -> str:
    return "" if value is None or pd.isna(value) else str(value).strip()


def _read_cohort(path: Path, cfg: IngestConfig) -> tuple[pd.DataFrame, list[Path]]:
    df = ct.read_table(path)
    column = "file" if "file" in df and "path" not in df else "path"  # 'file' accepted as an alias
    ct.require_columns(df, ["subject_id", column])
    ct.require_values(df, ["subject_id", column])
    paths = ct.resolve_paths(df, column)
    df["source_path"] = [str(p) for p in paths]
    ct.check_unique(df, ["source_path"], "duplicate recording (the same file twice)")
    if "recording_id" in df:
        ct.require_values(df, ["recording_id"])
    else:
        session = df["session"].map(_text) if "session" in df else pd.Series([""] * len(df))
        df["recording_id"] = [s if not x else f"{s}_{x}" for s, x in zip(df["subject_id"].map(_text), session)]
    key = ["subject_id", "session"] if "session" in df else ["subject_id"]
    ct.check_unique(df, key, "duplicate (subject_id, session)" if "session" in df else
                    "duplicate subject_id (add a 'session' column for several recordings per subject)")
    ct.check_unique(df, ["recording_id"], "duplicate recording_id")
    if "tr" in df:
        tr = pd.to_numeric(df["tr"], errors="coerce")
        bad = ~((tr > 0) & (tr < float("inf"))) & df["tr"].notna()
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise BrainmmError(f"table {ct.table_path(df)}: {ct.row_name(i)}, column 'tr': expected seconds > 0, "
                               f"got {str(df['tr'].iloc[i])!r}")
        df["tr"] = tr
    for col in _group_columns(df, cfg):
        ct.require_columns(df, [col])
        ct.check_one_value_per(df, "subject_id", col)
    nifti = [i for i, p in enumerate(paths) if is_nifti(p)]
    if nifti and cfg.atlas is None:
        raise BrainmmError(
            f"table {ct.table_path(df)}: {ct.row_name(nifti[0])} is a NIfTI image ({paths[nifti[0]].name}); "
            "parcellating images needs a labels atlas (--atlas)"
        )
    return df, paths


def _group_columns(df: pd.DataFrame, cfg: IngestConfig) -> list[str]:
    if cfg.group_by is not None:
        return list(cfg.group_by)
    return [c for c in ("family", "group") if c in df]


def _subject_groups(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per subject with its group: subjects linked through a shared value of any group column are one
    group (connected components), named by the smallest linked value; subjects without values are alone."""
    subjects = df["subject_id"].astype("str").tolist()
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for col in columns:
        for s, value in zip(subjects, df[col]):
            if _text(value):
                a, b = find("\0" + s), find(f"{col}:{_text(value)}")
                if a != b:
                    parent[a] = b
    name: dict[str, str] = {}
    for node in list(parent):
        if not node.startswith("\0"):
            root = find(node)
            label = node.split(":", 1)[1] if len(columns) == 1 else node
            name[root] = min(name.get(root, label), label)
    out = pd.DataFrame({"subject_id": subjects}).drop_duplicates().reset_index(drop=True)
    out["group"] = [name.get(find("\0" + s), s) for s in out["subject_id"]]
    return out


def _parcels(cfg: IngestConfig) -> _Parcels:
    from brainmm.data.fmri.atlas import atlas_centroids, atlas_labels

    if cfg.atlas is None and cfg.coords is None:
        raise BrainmmError("parcel coordinates are needed: pass a coordinates table (--coords) or a labels atlas (--atlas)")
    sources: dict[str, Any] = {}
    values: list[int] | None = None
    labels: list[str] | None = None
    coords: np.ndarray | None = None
    if cfg.atlas is not None:
        values, labels = atlas_labels(cfg.atlas, cfg.atlas_labels)
        sources["atlas"] = {"path": str(Path(cfg.atlas).resolve()), "sha256": sha256_file(cfg.atlas)}
        if cfg.atlas_labels is not None:
            sources["atlas_labels"] = {"path": str(Path(cfg.atlas_labels).resolve()), "sha256": sha256_file(cfg.atlas_labels)}
    elif cfg.atlas_labels is not None:
        raise BrainmmError("--atlas-labels selects labels of an atlas: pass the atlas too (--atlas)")
    if cfg.coords is not None:
        coords, coord_labels = read_coords(cfg.coords)
        sources["coords"] = {"path": str(Path(cfg.coords).resolve()), "sha256": sha256_file(cfg.coords)}
        if values is not None and len(coords) != len(values):
            raise BrainmmError(
                f"coordinates file {cfg.coords}: {len(coords)} rows, but atlas {cfg.atlas} has {len(values)} parcels"
            )
        if coord_labels is not None and (labels is None or cfg.atlas_labels is None):
            labels = coord_labels
        coords_from = "file"
    else:
        coords = atlas_centroids(cfg.atlas, values)
        coords_from = "atlas centroids"
    if labels is None:
        labels = [str(i) for i in range(len(coords))]
    name_source = cfg.atlas if cfg.atlas is not None else cfg.coords
    name = cfg.atlas_name or Path(name_source).name.removesuffix(".gz").rsplit(".", 1)[0]
    sources["coords_from"] = coords_from
    return _Parcels(labels, coords, values, name, sources)


def _load_split(cfg: IngestConfig, df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    if cfg.split_from is not None:
        split = load_split(cfg.split_from)
        missing = sorted(set(df["subject_id"]) - set(split["subject_id"].astype("str")))
        if missing:
            raise BrainmmError(f"split file {cfg.split_from}: subjects {missing[:10]} of the cohort are not in it")
        return split, {"source": str(Path(cfg.split_from).resolve()), "sha256": sha256_file(cfg.split_from)}
    columns = _group_columns(df, cfg)
    groups = _subject_groups(df, columns)
    split = make_split(groups["subject_id"], groups["group"] if columns else None, cfg.split_fractions, cfg.split_seed)
    return split, {"source": "made", "fractions": list(cfg.split_fractions), "seed": cfg.split_seed, "group_by": columns}


def _read_source(rec: _Recording, parcels: _Parcels, cfg: IngestConfig) -> np.ndarray:
    from brainmm.data.fmri.atlas import image_tr, parcellate

    v = len(parcels.labels)
    if is_nifti(rec.path):
        signal = parcellate(rec.path, cfg.atlas, parcels.atlas_values, cfg.resample_atlas)
        if rec.tr is None:
            rec.tr = image_tr(rec.path)
    else:
        source = f"coordinates file {cfg.coords}" if cfg.coords is not None else f"atlas {cfg.atlas}"
        signal = read_timeseries(rec.path, v, key=cfg.mat_key, orientation=cfg.orientation, parcels_from=source)
    return signal


def _bad_message(rec: _Recording, labels: list[str]) -> str:
    i, kind = next(iter(rec.bad.items()))
    what = "has NaN/Inf values" if kind == "nan" else "is constant over time"
    more = f" ({len(rec.bad)} bad parcels in this recording)" if len(rec.bad) > 1 else ""
    return (
        f"recording {rec.recording_id!r} ({rec.path}): parcel {i} ({labels[i]!r}) {what}{more}; "
        "fix the data or pass --bad-parcels drop|zero"
    )


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def ingest(cohort: str | Path, out: str | Path, config: IngestConfig | None = None, overwrite: bool = False) -> Path:
    """Build an fMRI dataset folder at `out` from a cohort table; returns `out` (one writer at a time)."""
    with run_lock(out):
        return _ingest(cohort, Path(out), config, overwrite)


def _ingest(cohort: str | Path, out: Path, config: IngestConfig | None, overwrite: bool) -> Path:
    from brainmm.runtime import progress

    cfg = config or IngestConfig()
    cfg.validate()
    out = Path(out)
    if out.exists() and not overwrite:
        raise BrainmmError(f"output folder {out} already exists (pass --overwrite to replace it)")
    cohort = Path(cohort)
    df, paths = _read_cohort(cohort, cfg)
    reference = FmriDataset.load(cfg.stats_from) if cfg.stats_from is not None else None
    method = cfg.normalise or (reference.stats.method if reference else "robust")
    order = cfg.parcel_order or (reference.manifest["parcel_order"] if reference else "given")
    parcels = _parcels(cfg)
    v_src = len(parcels.labels)
    if reference is not None:
        _check_reference(reference, cfg, parcels, method, order)
    split, split_info = _load_split(cfg, df)
    split_of = dict(zip(split["subject_id"].astype("str"), split["split"]))
    recs = [
        _Recording(
            row=i, recording_id=_text(r.recording_id), subject_id=_text(r.subject_id),
            session=_text(getattr(r, "session", "")), site=_text(getattr(r, "site", "")), path=paths[i],
            split=split_of[_text(r.subject_id)],
            tr=float(r.tr) if "tr" in df and not pd.isna(r.tr) else cfg.tr,
        )
        for i, r in enumerate(df.itertuples(index=False))
    ]
    fit = method == "robust" and reference is None
    n_train = sum(r.split == "train" for r in recs)
    sampler = RobustSampler(n_train, cfg.fit_max_timepoints, cfg.split_seed) if fit else None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        work = tmp / "_work"
        (work / "raw").mkdir(parents=True)
        # pass 1: read, check, park raw float32, sample training time points
        for rec in progress(recs, desc="reading recordings", unit="rec"):
            signal = _read_source(rec, parcels, cfg)
            rec.sha256 = sha256_file(rec.path)
            rec.num_timepoints = signal.shape[1]
            if rec.num_timepoints < cfg.num_timepoints:
                msg = (f"recording {rec.recording_id!r} ({rec.path}): {rec.num_timepoints} time points, "
                       f"shorter than one window of {cfg.num_timepoints}")
                if not cfg.drop_short:
                    raise BrainmmError(msg + "; pass --drop-short to drop such recordings or lower --num-timepoints")
                rec.dropped = "short"
                continue
            nan, const = bad_parcels(signal)
            rec.bad = {**{int(i): "nan" for i in nan}, **{int(i): "constant" for i in const}}
            if rec.bad and cfg.bad_parcels == "error":
                raise BrainmmError(_bad_message(rec, parcels.labels))
            np.save(work / "raw" / f"{rec.row}.npy", signal)
            if sampler is not None and rec.split == "train":
                sampler.add(signal, rec.row, np.array(sorted(rec.bad), dtype=np.int64))
        kept = [r for r in recs if r.dropped is None]
        if not kept:
            raise BrainmmError(f"cohort {cohort}: no recording is at least {cfg.num_timepoints} time points long")
        n_short = len(recs) - len(kept)
        if n_short:
            LOG.info("dropped %d recording(s) shorter than %d time points", n_short, cfg.num_timepoints)
        trs = sorted({r.tr for r in kept if r.tr is not None})
        if len(trs) > 1 and not np.allclose(trs, trs[0], rtol=1e-3):
            raise BrainmmError(
                f"cohort {cohort}: recordings have different TRs {trs} s; brainmm does not resample in time, "
                "ingest them as separate datasets"
            )
        unknown = [r.recording_id for r in kept if r.tr is None]  # announced once the dataset is written
        dropped = set()
        if cfg.bad_parcels == "drop":
            dropped = {i for r in kept for i in r.bad}
        # parcel selection and order, statistics
        if reference is not None:
            selection = [int(i) for i in reference.manifest["parcel_source_index"]]
            new = sorted(dropped - set(range(v_src)).difference(selection))
            if new:
                raise BrainmmError(
                    f"bad parcels {[parcels.labels[i] for i in new][:10]} would be dropped, but the statistics of "
                    f"{cfg.stats_from} keep them; use --bad-parcels zero"
                )
            stats = reference.stats
        else:
            zeroed_global: list[int] = []
            median = iqr = None
            fitted_on: dict[str, Any] = {}
            if fit:
                samples = sampler.samples()
                median, iqr = fit_robust(samples)
                tiny = near_zero_spread(iqr)
                flat = [i for i in range(v_src) if i not in dropped and tiny[i]]
                if flat and cfg.bad_parcels == "error":
                    i = flat[0]
                    raise BrainmmError(
                        f"robust normalisation: parcel {i} ({parcels.labels[i]!r}) has an interquartile range of "
                        f"{iqr[i]} over the training split (zero in effect, below {REL_SPREAD:g} x the typical parcel's); pass --bad-parcels drop|zero, or another --normalise"
                    )
                if cfg.bad_parcels == "drop":
                    dropped |= set(flat)
                else:
                    zeroed_global = flat
                    median[flat], iqr[flat] = 0.0, 1.0
                fitted_on = {"split": "train", "recordings": sampler.recordings, "timepoints": int(samples.shape[1]),
                             "subsampled": sampler.subsampled, "max_timepoints": cfg.fit_max_timepoints}
            keep = [i for i in range(v_src) if i not in dropped]
            if not keep:
                raise BrainmmError("every parcel was dropped as bad; check the input data")
            if order == "y":
                keep = [keep[j] for j in np.argsort(parcels.coords[keep, 1], kind="stable")]
            selection = keep
            pos = {s: j for j, s in enumerate(selection)}
            stats = NormStats(
                method=method,
                parcel_labels=[parcels.labels[i] for i in selection],
                median=median[selection] if median is not None else None,
                iqr=iqr[selection] if iqr is not None else None,
                fitted_on=fitted_on,
                zeroed=[pos[i] for i in zeroed_global],
            )
        if dropped:
            LOG.info("dropped %d bad parcel(s): %s", len(dropped), [parcels.labels[i] for i in sorted(dropped)][:20])
        # pass 2: normalise and write the Arrow dataset
        _write_arrow(tmp / DATA_DIR, work, kept, selection, stats, progress)
        shutil.rmtree(work)
        coords = parcels.coords[selection]
        labels = [parcels.labels[i] for i in selection]
        write_coords(tmp / COORDS_FILE, coords, labels, selection)
        stats.save(tmp / STATS_FILE)
        save_split(split, tmp / SPLIT_FILE)
        stored = df.copy()
        stored["split"] = [r.split for r in recs]
        stored["num_timepoints"] = [r.num_timepoints for r in recs]
        stored["sha256"] = [r.sha256 for r in recs]
        stored["ingested"] = [r.dropped is None for r in recs]
        with open(tmp / COHORT_FILE, "w") as fh:
            stored.to_csv(fh, index=False)
        manifest = _manifest(cfg, cohort, parcels, selection, labels, order, method, stats, recs, kept, split,
                             split_info, trs, reference)
        manifest["files"] = {name: sha256_file(tmp / name) for name in (COORDS_FILE, STATS_FILE, SPLIT_FILE, COHORT_FILE)}
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
    LOG.info("wrote %s: %d recordings x %d parcels", out, len(kept), len(selection))
    if unknown and not trs:
        LOG.warning("TR unknown for every recording (no 'tr' column in %s, no --tr, no NIfTI header): assumed "
                    "equal for all %d recordings (brainmm does not resample in time)", cohort, len(kept))
    elif unknown:
        LOG.warning("TR unknown for %d of %d recordings (e.g. %r): assumed %g s like the others; add a 'tr' "
                    "column to %s to be sure", len(unknown), len(kept), unknown[0], trs[0], cohort)
    return out


def _check_reference(reference: FmriDataset, cfg: IngestConfig, parcels: _Parcels, method: str, order: str) -> None:
    m = reference.manifest
    if method != reference.stats.method:
        raise BrainmmError(f"normalise {method!r} differs from {cfg.stats_from} ({reference.stats.method!r}); leave it unset")
    if order != m["parcel_order"]:
        raise BrainmmError(f"parcel order {order!r} differs from {cfg.stats_from} ({m['parcel_order']!r}); leave it unset")
    if len(parcels.labels) != len(m["source_parcel_labels"]):
        raise BrainmmError(
            f"{len(parcels.labels)} parcels, but the statistics in {cfg.stats_from} are for an atlas with "
            f"{len(m['source_parcel_labels'])}"
        )
    if parcels.labels != m["source_parcel_labels"]:
        i = next(j for j, (a, b) in enumerate(zip(parcels.labels, m["source_parcel_labels"])) if a != b)
        raise BrainmmError(
            f"parcel {i} is {parcels.labels[i]!r} here but {m['source_parcel_labels'][i]!r} in {cfg.stats_from}: "
            "the statistics belong to another atlas or parcel order"
        )


def _write_arrow(dest: Path, work: Path, kept: list[_Recording], selection: list[int], stats: NormStats, progress) -> None:
    """Pass 2: normalised [T, V] float32 rows into a Hugging Face dataset saved at `dest`."""
    import datasets
    from datasets import Array2D, Dataset, Features, Value

    v = len(selection)
    index = np.asarray(selection, dtype=np.int64)
    features = Features({
        "recording_id": Value("string"),
        "subject_id": Value("string"),
        "session": Value("string"),
        "site": Value("string"),
        "num_timepoints": Value("int32"),
        "signal": Array2D(shape=(None, v), dtype="float32"),
    })

    def rows() -> Iterator[dict[str, Any]]:
        pos = {s: j for j, s in enumerate(selection)}
        for rec in progress(kept, desc="writing dataset", unit="rec"):
            raw = np.load(work / "raw" / f"{rec.row}.npy")[index]
            signal = stats.transform(raw, source=f"recording {rec.recording_id!r}")
            zero = [pos[i] for i in rec.bad if i in pos]
            if zero:
                signal[zero] = 0.0
            bad = np.flatnonzero(~np.isfinite(signal).all(axis=1))
            if len(bad):  # never write inf/NaN into the dataset (e.g. a spread that is tiny but not zero)
                j = int(bad[0])
                raise BrainmmError(
                    f"recording {rec.recording_id!r} ({rec.path}): parcel {j} ({stats.parcel_labels[j]!r}) is not "
                    f"finite after {stats.method} normalisation ({int((~np.isfinite(signal)).sum())} values); its "
                    "spread is too small to divide by: pass --bad-parcels drop|zero, or another --normalise"
                )
            yield {
                "recording_id": rec.recording_id, "subject_id": rec.subject_id, "session": rec.session,
                "site": rec.site, "num_timepoints": rec.num_timepoints, "signal": signal.T,
            }

    longest = max(r.num_timepoints for r in kept)
    batch = int(max(1, min(1000, (64 << 20) // (4 * v * longest))))
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds = Dataset.from_generator(
            rows, features=features, cache_dir=str(work / "cache"), fingerprint="brainmm-fmri-ingest",
            writer_batch_size=batch,
        )
        ds.save_to_disk(str(dest))
        del ds
    except datasets.exceptions.DatasetGenerationError as err:  # a user error raised inside rows()
        cause = err.__cause__
        if isinstance(cause, BrainmmError):
            raise cause from None
        raise
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _manifest(cfg, cohort, parcels, selection, labels, order, method, stats, recs, kept, split, split_info, trs,
              reference) -> dict[str, Any]:
    import brainmm

    lengths = [r.num_timepoints for r in kept]
    split_counts = {}
    for name in ("train", "val", "test"):
        rs = [r for r in kept if r.split == name]
        split_counts[name] = {"subjects": len({r.subject_id for r in rs}), "recordings": len(rs)}
    recordings = [{"recording_id": r.recording_id, "path": str(r.path), "sha256": r.sha256} for r in recs]
    sources = {"cohort": {"path": str(cohort.resolve()), "sha256": sha256_file(cohort)}, **parcels.sources,
               "recordings": recordings}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    normalisation = {"method": method, "statistics": STATS_FILE, "fitted_on": stats.fitted_on}
    if reference is not None:
        normalisation["stats_from"] = {"path": str(reference.path), "data_hash": reference.manifest["data_hash"]}
    zeroed = [{"recording_id": r.recording_id, "parcel": parcels.labels[i], "reason": k}
              for r in kept for i, k in sorted(r.bad.items()) if i in set(selection)]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "brainmm_version": brainmm.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "atlas": parcels.atlas_name,
        "num_parcels": len(selection),
        "parcel_labels": labels,
        "parcel_order": order,
        "parcel_source_index": [int(i) for i in selection],
        "source_parcel_labels": parcels.labels,
        "dropped_parcels": [parcels.labels[i] for i in range(len(parcels.labels)) if i not in set(selection)],
        "zeroed_parcels": [labels[i] for i in stats.zeroed],
        "zeroed_recording_parcels": zeroed,
        "bad_parcels": cfg.bad_parcels,
        "num_timepoints": cfg.num_timepoints,
        "tr": trs[0] if trs else None,
        "num_recordings": len(kept),
        "num_subjects": len({r.subject_id for r in kept}),
        "timepoints_per_recording": {"min": min(lengths), "max": max(lengths)},
        "dropped_recordings": [{"recording_id": r.recording_id, "reason": r.dropped} for r in recs if r.dropped],
        "normalisation": normalisation,
        "split": {"file": SPLIT_FILE, **split_info, "counts": split_counts},
        "sources": sources,
        "settings": settings,
    }
    manifest["data_hash"] = _hash_json({
        "recordings": [(r.recording_id, r.subject_id, r.sha256) for r in kept],
        "parcels": manifest["parcel_labels"], "order": order, "normalisation": stats.to_dict(),
        "zeroed": zeroed, "num_timepoints": cfg.num_timepoints,
    })
    return manifest


def planned_split(cohort: str | Path, cfg: IngestConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cohort table, split table) that ingesting `cohort` with `cfg` will use, without reading any recording."""
    df, _ = _read_cohort(Path(cohort), cfg)
    return df, _load_split(cfg, df)[0]
