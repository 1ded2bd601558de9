"""`brainmm fmri ingest|info|connectivity`: build a normalised fMRI dataset from a cohort table, describe one, and
turn one into a subject table of functional-connectivity features."""

from __future__ import annotations

import argparse


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers like 0.7,0.15,0.15, got {text!r}")
    return parts  # type: ignore[return-value]


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `fmri` command group."""
    p = sub.add_parser("fmri", help="fMRI data: ingest a cohort into a dataset, describe a dataset, connectivity")
    group = p.add_subparsers(dest="fmri_command", metavar="ACTION")

    g = group.add_parser("ingest", help="cohort table + time series (or 4-D NIfTI + atlas) -> normalised dataset")
    g.add_argument("--cohort", required=True, help="CSV/TSV/Parquet with columns subject_id, path (+ session, site, family, tr, ...)")
    g.add_argument("--out", required=True, help="output dataset folder (written atomically)")
    g.add_argument("--atlas", help="labels atlas NIfTI (parcellates 4-D images; centroids when no --coords)")
    g.add_argument("--atlas-labels", help="CSV/TSV with columns index,name selecting and naming atlas labels")
    g.add_argument("--atlas-name", help="atlas name recorded in the manifest (default: the file name)")
    g.add_argument("--coords", help="TSV/CSV with x, y, z per parcel (with or without header)")
    g.add_argument("--normalise", choices=["robust", "zscore", "none"], default=None,
                   help="robust: median/IQR per parcel fitted on train (default); zscore: per recording; none")
    g.add_argument("--parcel-order", choices=["given", "y"], default=None,
                   help="'given' (default) or stable-sorted by Y coordinate (BrainLM ViT-MAE)")
    g.add_argument("--num-timepoints", type=int, default=200, help="window length (default 200; 490 = whole UKB run)")
    g.add_argument("--split-from", help="reuse this split table (subject_id, split) instead of making one")
    g.add_argument("--split-fractions", type=_fractions, default=(0.7, 0.15, 0.15), help="train,val,test (default 0.7,0.15,0.15)")
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--group-by", type=_columns, default=None,
                   help="comma-separated cohort columns keeping subjects together (default: family, group if present)")
    g.add_argument("--stats-from", metavar="DATASET", help="normalise with the statistics (and parcels) of this dataset")
    g.add_argument("--drop-short", action="store_true", help="drop recordings shorter than a window (default: error)")
    g.add_argument("--bad-parcels", choices=["error", "drop", "zero"], default="error",
                   help="NaN/Inf or constant parcels: error (default), drop them everywhere, or zero them")
    g.add_argument("--resample-atlas", action="store_true", help="resample the atlas to each image's grid")
    g.add_argument("--orientation", choices=["auto", "time-parcel", "parcel-time"], default="auto",
                   help="layout of time-series files (default: from the parcel count; square arrays need it)")
    g.add_argument("--mat-key", help="variable name in .mat files (default: the only 2-D numeric array)")
    g.add_argument("--tr", type=float, help="repetition time in seconds when the cohort has no 'tr' column")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g.set_defaults(func=_ingest)

    i = group.add_parser("info", help="describe an fMRI dataset")
    i.add_argument("dataset", help="dataset folder")
    i.set_defaults(func=_info)

    c = group.add_parser("connectivity", help="fMRI dataset -> subject table of connectivity features (+ PCA on train)",
                         description="Functional connectivity per recording (correlation: batched BLAS products equal to "
                         "nilearn's ConnectivityMeasure; partial correlation, tangent: nilearn), upper triangle, averaged per subject, optional PCA fitted on the training subjects; "
                         "writes an embedding table usable as a brain table (docs/fmri-data.md).")
    c.add_argument("dataset", help="fMRI dataset folder (`brainmm fmri ingest` output)")
    c.add_argument("--out", required=True, help="output table stem (writes STEM.safetensors and STEM.json)")
    c.add_argument("--kind", choices=["correlation", "partial correlation", "tangent"], default="correlation",
                   help="correlation (Pearson, Fisher z; default), partial correlation (Ledoit-Wolf precision, "
                   "Fisher z) or tangent (reference fitted on train)")
    c.add_argument("--estimator", choices=["auto", "empirical", "ledoit_wolf"], default="auto",
                   help="covariance estimator (auto: empirical for correlation, Ledoit-Wolf otherwise)")
    c.add_argument("--no-fisher-z", action="store_true", help="keep (partial) correlations as r instead of arctanh(r)")
    c.add_argument("--pca", type=float, default=0.0,
                   help="PCA fitted on train: N >= 1 components, or a share in (0, 1) of the variance (default 0: none)")
    c.add_argument("--pca-max-components", type=int, default=256, help="cap for a variance share (default 256)")
    c.add_argument("--tangent-fit-max", type=int, default=1000,
                   help="training recordings used for the tangent reference (default 1000; a seeded subsample)")
    c.add_argument("--batch-size", type=int, default=64, help="subjects per batch (default 64)")
    c.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="correlation kernel precision (default float64: equals nilearn to 1e-10; float32 is faster)")
    c.add_argument("--seed", type=int, default=0, help="seed of the randomized PCA and the tangent subsample")
    c.add_argument("--overwrite", action="store_true", help="replace an existing table")
    c.set_defaults(func=_connectivity)


def _ingest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from brainmm.data.fmri.ingest import IngestConfig, ingest

    def path(x: str | None) -> Path | None:
        return Path(x) if x else None

    config = IngestConfig(
        atlas=path(args.atlas), atlas_labels=path(args.atlas_labels), atlas_name=args.atlas_name,
        coords=path(args.coords), normalise=args.normalise, parcel_order=args.parcel_order,
        num_timepoints=args.num_timepoints, split_from=path(args.split_from), split_fractions=args.split_fractions,
        split_seed=args.split_seed, group_by=args.group_by, stats_from=path(args.stats_from),
        drop_short=args.drop_short, bad_parcels=args.bad_parcels, resample_atlas=args.resample_atlas,
        orientation=args.orientation, mat_key=args.mat_key, tr=args.tr,
    )
    out = ingest(args.cohort, args.out, config, overwrite=args.overwrite)
    print(out)
    return 0


def describe(path: str) -> str:
    """A short human-readable summary of a dataset."""
    from brainmm.data.fmri.dataset import FmriDataset

    ds = FmriDataset.load(path)
    m = ds.manifest
    rec = ds.recordings
    t = m["timepoints_per_recording"]
    lengths = f"{t['min']}" if t["min"] == t["max"] else f"{t['min']}-{t['max']}"
    counts = m["split"]["counts"]
    split = ", ".join(f"{k} {counts[k]['subjects']} subjects / {counts[k]['recordings']} recordings"
                      for k in ("train", "val", "test"))
    norm = m["normalisation"]
    fitted = norm.get("fitted_on") or {}
    how = norm["method"]
    if "stats_from" in norm:
        how += f" (statistics from {norm['stats_from']['path']})"
    elif fitted:
        how += f" (median/IQR fitted on train: {fitted['recordings']} recordings, {fitted['timepoints']} time points)"
    tr = f"{m['tr']} s" if m["tr"] is not None else "unknown"
    lines = [
        f"dataset: {ds.path}",
        f"shape: {m['num_recordings']} recordings x {m['num_parcels']} parcels x {lengths} time points",
        f"subjects: {rec['subject_id'].nunique()}",
        f"split: {split} (source: {m['split'].get('source')})",
        f"parcels: {m['num_parcels']} (atlas {m['atlas']}, order {m['parcel_order']}"
        + (f", dropped {len(m['dropped_parcels'])}" if m.get("dropped_parcels") else "") + ")",
        f"TR: {tr}",
        f"window: {m['num_timepoints']} time points",
        f"normalisation: {how}",
        f"data hash: {m['data_hash'][:16]}",
    ]
    return "\n".join(lines)


def _info(args: argparse.Namespace) -> int:
    print(describe(args.dataset))
    return 0


def _connectivity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from brainmm.data.fmri.connectivity import ConnectivityConfig, connectivity_table
    from brainmm.errors import BrainmmError

    stem = Path(args.out)
    stem = stem.with_suffix("") if stem.suffix in (".safetensors", ".json") else stem
    existing = [p for p in (stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")) if p.exists()]
    if existing and not args.overwrite:
        raise BrainmmError(f"--out {args.out}: {existing[0]} already exists; pass --overwrite to replace it")
    cfg = ConnectivityConfig(kind=args.kind, estimator=args.estimator, fisher_z=not args.no_fisher_z, pca=args.pca,
                             pca_max_components=args.pca_max_components, tangent_fit_max=args.tangent_fit_max,
                             batch_size=args.batch_size, dtype=args.dtype,
                             seed=args.seed)
    print(connectivity_table(args.dataset, stem, cfg))
    return 0
