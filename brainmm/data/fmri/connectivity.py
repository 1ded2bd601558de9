"""Functional connectivity as a subject table: nilearn `ConnectivityMeasure` per recording, upper triangle, mean per
subject, optional PCA fitted on the training subjects, written as a brain `EmbeddingTable`.

    from brainmm.data.fmri.connectivity import ConnectivityConfig, connectivity_table
    connectivity_table("data/fmri", "data/fc", ConnectivityConfig(kind="correlation", pca=64))

Kinds (nilearn `ConnectivityMeasure(kind=..., vectorize=True, discard_diagonal=True)` order and values):
  * `correlation`: Pearson correlation, Fisher z (arctanh); with the empirical covariance (the default) computed
    here as one batched BLAS product per batch of equal-length recordings (`correlation_vectors`; nilearn is the
    oracle in the tests, equal to 1e-10 in float64); with Ledoit-Wolf through nilearn;
  * `partial correlation`: from the Ledoit-Wolf shrunk precision, Fisher z;
  * `tangent`: tangent-space embedding (Varoquaux et al. 2010) around the geometric mean of the Ledoit-Wolf
    covariances of training recordings (at most `tangent_fit_max` of them, an even subsample when there are more).
Several recordings of a subject: the mean of their vectors (in Fisher-z / tangent space). Memory: recordings are
processed in batches of `batch_size` subjects into a float32 memory map beside the output, so only the [N, F]
features (and, with PCA, the fitted components) are held at once; PCA above `pca_in_memory_gb` of training
features is a randomized SVD streaming row blocks of the memory map (`streamed_pca`: a few passes, each a BLAS
product of a block with a thin matrix).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainmm.errors import BrainmmError

KINDS = ("correlation", "partial correlation", "tangent")
ESTIMATORS = ("auto", "empirical", "ledoit_wolf")
DTYPES = ("float64", "float32")
CLIP = 1.0 - 1e-7  # |r| bound before arctanh (a perfect off-diagonal correlation would give inf)


@dataclass
class ConnectivityConfig:
    """Settings of `brainmm fmri connectivity` (see the module docstring)."""

    kind: str = "correlation"  # correlation | partial correlation | tangent
    estimator: str = "auto"  # covariance: auto (empirical for correlation, Ledoit-Wolf otherwise) | empirical | ledoit_wolf
    fisher_z: bool = True  # arctanh of (partial) correlations; ignored for tangent
    pca: float = 0.0  # 0: no PCA; >= 1: that many components; in (0, 1): share of the training variance kept
    pca_max_components: int = 256  # cap when `pca` is a variance share (and never above n_train - 1)
    pca_in_memory_gb: float = 1.0  # float32 training features up to this size: PCA in memory; above: streamed randomized SVD
    tangent_fit_max: int = 1000  # training recordings used to fit the tangent reference (geometric mean)
    batch_size: int = 64  # subjects per batch
    dtype: str = "float64"  # correlation kernel: float64 (equals nilearn to 1e-10) | float32 (faster, ~1e-6)
    seed: int = 0  # PCA randomized solver / tangent subsample

    def validate(self) -> None:
        """One BrainmmError per bad field."""
        if self.kind not in KINDS:
            raise BrainmmError(f"connectivity field 'kind': expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.estimator not in ESTIMATORS:
            raise BrainmmError(f"connectivity field 'estimator': expected one of {', '.join(ESTIMATORS)}, "
                               f"got {self.estimator!r}")
        bad = [f for f in ("pca", "pca_in_memory_gb") if not math.isfinite(float(getattr(self, f)))]
        if bad:
            raise BrainmmError(f"connectivity field '{bad[0]}': expected a finite number, got {getattr(self, bad[0])!r}")
        if self.pca < 0 or (self.pca >= 1 and self.pca != int(self.pca)):
            raise BrainmmError(f"connectivity field 'pca': expected 0, an integer >= 1 (components) or a share in "
                               f"(0, 1) (variance kept), got {self.pca!r}")
        for name in ("pca_max_components", "tangent_fit_max", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise BrainmmError(f"connectivity field '{name}': expected a positive integer, got {getattr(self, name)!r}")
        if self.dtype not in DTYPES:
            raise BrainmmError(f"connectivity field 'dtype': expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.pca_in_memory_gb <= 0:
            raise BrainmmError(f"connectivity field 'pca_in_memory_gb': expected > 0, got {self.pca_in_memory_gb!r}")

    @property
    def covariance(self) -> str:
        """The covariance estimator actually used."""
        if self.estimator != "auto":
            return self.estimator
        return "empirical" if self.kind == "correlation" else "ledoit_wolf"

    @property
    def engine(self) -> str:
        """`blas` (batched products here) for empirical correlation, else `nilearn`."""
        return "blas" if self.kind == "correlation" and self.covariance == "empirical" else "nilearn"


def _measure(cfg: ConnectivityConfig):
    try:
        from nilearn.connectome import ConnectivityMeasure
    except ImportError:
        raise BrainmmError("fmri connectivity needs nilearn: pip install 'brainmm[fmri]'") from None
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    # store_precision=False: nilearn inverts where the kind needs it; sklearn's default pinvh of every covariance
    # (an eigendecomposition per recording) was 90 % of the old correlation time at 424 parcels
    est = (EmpiricalCovariance(store_precision=False) if cfg.covariance == "empirical"
           else LedoitWolf(store_precision=False))
    return ConnectivityMeasure(cov_estimator=est, kind=cfg.kind, vectorize=True, discard_diagonal=True,
                               standardize="zscore_sample")


def _subjects(ds) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """Subjects in storage order, their recordings, their split."""
    rec = ds.recordings
    if rec["split"].isna().any():
        bad = rec.loc[rec["split"].isna(), "subject_id"].iloc[0]
        raise BrainmmError(f"fMRI dataset {ds.path}: subject {bad!r} is not in split.csv")
    order = list(dict.fromkeys(rec["subject_id"].astype(str)))
    recordings: dict[str, list[str]] = {s: [] for s in order}
    for rid, sid in zip(rec["recording_id"], rec["subject_id"].astype(str)):
        recordings[sid].append(rid)
    split = dict(zip(rec["subject_id"].astype(str), rec["split"].astype(str)))
    return order, recordings, split


def _series(ds, recording_ids: list[str], as_float64: bool = True) -> list[np.ndarray]:
    """[T, V] series (nilearn's orientation) of the given recordings: float64 for nilearn, else the stored float32
    (the BLAS kernel copies them into its own buffer of its dtype)."""
    return [ds.signal(r).T.astype(np.float64) if as_float64 else ds.signal(r).T for r in recording_ids]


def tril_mask(v: int) -> np.ndarray:
    """[V * V] boolean mask of nilearn's vector order: the strictly lower triangle of a [V, V] matrix, row by row."""
    return np.tri(v, k=-1, dtype=bool).ravel()


def correlation_vectors(series: list[np.ndarray], fisher_z: bool = True, dtype: str = "float64",
                        out: np.ndarray | None = None) -> np.ndarray:
    """[n, V(V-1)/2] Pearson correlations (Fisher z when asked) of [T, V] series in nilearn's order, into `out`
    (float64 when not given): per group of equal-length recordings, centred unit-norm columns in one [B, T, V]
    buffer, then one batched BLAS product X^T X (the Gram matrix of unit columns is the correlation)."""
    v = series[0].shape[1]
    mask = tril_mask(v)
    out = np.empty((len(series), int(mask.sum()))) if out is None else out
    lengths = np.array([len(x) for x in series])
    for t in np.unique(lengths):
        idx = np.flatnonzero(lengths == t)
        x = np.empty((len(idx), int(t), v), dtype=dtype)
        for j, i in enumerate(idx):
            x[j] = series[i]
        x -= x.mean(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):  # a constant parcel gives NaN: reported by the caller
            x /= np.sqrt(np.einsum("btv,btv->bv", x, x))[:, None, :]
        corr = np.matmul(x.transpose(0, 2, 1), x).reshape(len(idx), -1)[:, mask]  # batched gemm, lower triangle
        if fisher_z:
            np.arctanh(np.clip(corr, -CLIP, CLIP, out=corr), out=corr)
        out[idx] = corr
    return out


def _vectors(measure, series: list[np.ndarray], cfg: ConnectivityConfig, fitted: bool) -> np.ndarray:
    """[n, V(V-1)/2] connectivity vectors of the series (Fisher z for (partial) correlations)."""
    if measure is None:
        vec = correlation_vectors(series, cfg.fisher_z, cfg.dtype)
        _check_finite(vec)
        return vec
    with not_positive_definite(cfg, series):
        if fitted:  # nilearn refuses to transform a single recording into tangent space: pair it with itself
            vec = measure.transform(series * 2)[: len(series)] if len(series) == 1 else measure.transform(series)
        else:
            vec = measure.fit_transform(series)
    vec = np.asarray(vec, dtype=np.float64)
    if cfg.kind != "tangent" and cfg.fisher_z:
        vec = np.arctanh(np.clip(vec, -CLIP, CLIP))
    _check_finite(vec)
    return vec


def _check_finite(vec: np.ndarray) -> None:
    if not np.isfinite(vec).all():
        raise BrainmmError("connectivity: non-finite values (a constant or duplicated parcel series?); "
                           "ingest with --bad-parcels drop or use kind tangent / partial correlation")


def _fit_tangent(ds, cfg: ConnectivityConfig, train_recordings: list[str]):
    """ConnectivityMeasure(kind='tangent') fitted on training recordings only (subsampled above tangent_fit_max)."""
    ids = list(train_recordings)
    if len(ids) > cfg.tangent_fit_max:
        rng = np.random.default_rng(cfg.seed)
        ids = [ids[i] for i in sorted(rng.choice(len(ids), cfg.tangent_fit_max, replace=False))]
    if len(ids) < 2:
        raise BrainmmError(f"connectivity kind tangent: need at least 2 training recordings, got {len(ids)}")
    measure = _measure(cfg)
    series = _series(ds, ids)
    with not_positive_definite(cfg, series):
        measure.fit(series)
    return measure, len(ids)


@contextmanager
def not_positive_definite(cfg: ConnectivityConfig, series: list[np.ndarray]) -> Iterator[None]:
    """nilearn's 'not symmetric positive definite' (a covariance of fewer time points than parcels) as one line."""
    t, v = min(len(s) for s in series), series[0].shape[1]
    message = (f"connectivity kind {cfg.kind!r} with estimator {cfg.covariance!r}: a covariance is not positive "
               f"definite (shortest recording {t} time points for {v} parcels: too short for the empirical "
               "estimator); use --estimator ledoit_wolf (or auto), or longer recordings")
    if cfg.kind != "correlation" and cfg.covariance == "empirical" and t <= v:  # rank <= t - 1 < v: singular
        raise BrainmmError(message)
    try:
        yield
    except ValueError as err:
        if "positive definite" not in str(err):
            raise
        raise BrainmmError(message) from None


def _batches(order: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(order), size):
        yield order[i : i + size]


def subject_features(ds, cfg: ConnectivityConfig, out: np.ndarray) -> dict[str, Any]:
    """Fill `out` [N_subjects, V(V-1)/2] (storage order of subjects) with per-subject connectivity; returns meta."""
    from brainmm.runtime import progress

    order, recordings, split = _subjects(ds)
    info: dict[str, Any] = {}
    fitted = False
    measure = _measure(cfg) if cfg.engine == "nilearn" else None
    if cfg.kind == "tangent":
        train = [r for s in order if split[s] == "train" for r in recordings[s]]
        measure, n_fit = _fit_tangent(ds, cfg, train)
        fitted = True
        info["tangent_reference"] = {"fitted_on": "train", "recordings": n_fit}
    row = 0
    for batch in progress(list(_batches(order, cfg.batch_size)), desc="connectivity", unit="batch"):
        rec_ids = [r for s in batch for r in recordings[s]]
        vec = _vectors(measure, _series(ds, rec_ids, as_float64=measure is not None), cfg, fitted)
        counts = np.array([len(recordings[s]) for s in batch])
        if (counts == 1).all():
            out[row : row + len(batch)] = vec
        else:  # recordings are grouped by subject: one reduceat per batch
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            out[row : row + len(batch)] = np.add.reduceat(vec, starts, axis=0) / counts[:, None]
        row += len(batch)
    return info


def fit_pca(features: np.ndarray, train_rows: np.ndarray, cfg: ConnectivityConfig) -> dict[str, np.ndarray]:
    """PCA of the training rows: mean, components [k, F], explained variance ratio (sklearn's randomized PCA in
    memory, or a randomized SVD streaming row blocks of `features` above `pca_in_memory_gb`)."""
    from sklearn.decomposition import PCA

    n, f = len(train_rows), features.shape[1]
    if n < 2:
        raise BrainmmError(f"connectivity field 'pca': need at least 2 training subjects, got {n}")
    want = int(cfg.pca) if cfg.pca >= 1 else cfg.pca_max_components
    k_fit = max(1, min(want, n - 1, f))
    if cfg.pca >= 1 and want > k_fit:
        raise BrainmmError(f"connectivity field 'pca': {want} components asked, but the {n} training subjects and "
                           f"{f} features allow at most {k_fit}")
    in_memory = n * f * 4 / 2**30 <= cfg.pca_in_memory_gb
    if in_memory:
        x = np.asarray(features[train_rows], dtype=np.float64)
        model = PCA(n_components=k_fit, svd_solver="randomized" if k_fit < min(n, f) // 2 else "full",
                    random_state=cfg.seed).fit(x)
        mean, components, ratio = model.mean_, model.components_, model.explained_variance_ratio_
    else:
        from brainmm.data.fmri.streamed_pca import streamed_pca

        mean, components, ratio = streamed_pca(features, train_rows, k_fit, seed=cfg.seed)
    ratio = np.asarray(ratio, dtype=np.float64)
    k = k_fit if cfg.pca >= 1 else int(min(k_fit, np.searchsorted(np.cumsum(ratio), cfg.pca) + 1))
    return {"mean": np.asarray(mean, np.float64), "components": np.asarray(components[:k], np.float64),
            "explained_variance_ratio": ratio[:k], "solver": np.array("randomized" if in_memory else "streamed")}


def pca_transform(features: np.ndarray, pca: dict[str, np.ndarray], batch: int = 1024) -> np.ndarray:
    """Scores [N, k] of all rows, in row batches (float64 arithmetic)."""
    out = np.empty((len(features), len(pca["components"])))
    for i in range(0, len(features), batch):
        out[i : i + batch] = (np.asarray(features[i : i + batch], np.float64) - pca["mean"]) @ pca["components"].T
    return out


def connectivity_table(dataset: str | Path, out: str | Path, cfg: ConnectivityConfig | None = None) -> Path:
    """Compute the subject connectivity table of an ingested fMRI dataset and write it to `out` (a table stem);
    returns the stem. PCA (when asked) and the tangent reference are fitted on the training subjects only."""
    from brainmm.data.fmri.dataset import FmriDataset
    from brainmm.embeddings import EmbeddingTable

    cfg = cfg or ConnectivityConfig()
    cfg.validate()
    ds = dataset if isinstance(dataset, FmriDataset) else FmriDataset.load(dataset)
    order, recordings, split = _subjects(ds)
    v = ds.num_parcels
    if v < 2:
        raise BrainmmError(f"fMRI dataset {ds.path}: connectivity needs at least 2 parcels, got {v}")
    n_feat = v * (v - 1) // 2
    stem = Path(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=stem.parent, prefix=f".{stem.name}.") as tmp:
        features = np.lib.format.open_memmap(Path(tmp) / "features.npy", mode="w+", dtype=np.float32,
                                             shape=(len(order), n_feat))
        info = subject_features(ds, cfg, features)
        features.flush()
        meta: dict[str, Any] = {
            "kind": "connectivity", "connectivity": cfg.kind, "covariance": cfg.covariance, "engine": cfg.engine,
            "fisher_z": bool(cfg.fisher_z and cfg.kind != "tangent"), "vectorize": "upper triangle, no diagonal",
            "num_parcels": v, "num_features": n_feat, "recordings_per_subject": "mean of per-recording vectors",
            "num_recordings": {s: len(recordings[s]) for s in order}, "dataset": str(ds.path),
            "data_hash": ds.manifest["data_hash"], "split": {s: split[s] for s in order}, "level": "subject",
            "config": asdict(cfg), "pca": None, **info,
        }
        if cfg.pca:
            train_rows = np.array([i for i, s in enumerate(order) if split[s] == "train"], dtype=np.int64)
            pca = fit_pca(features, train_rows, cfg)
            vectors = pca_transform(features, pca)
            meta["pca"] = {"fitted_on": "train", "subjects": len(train_rows), "components": len(pca["components"]),
                           "solver": str(pca["solver"]),
                           "explained_variance": float(pca["explained_variance_ratio"].sum())}
        else:
            vectors = np.asarray(features)
        table = EmbeddingTable(order, vectors, meta)
        del features
        return table.save(stem)
