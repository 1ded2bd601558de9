"""`brainmm fmri connectivity`: nilearn/numpy float64 parity, per-subject averaging, train-only PCA and tangent
reference, brain-table compatibility, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nilearn.connectome import ConnectivityMeasure
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA

from brainmm.data.fmri import FmriDataset, IngestConfig, ingest
from brainmm.data.fmri.connectivity import ConnectivityConfig, connectivity_table
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError

V, T, N = 5, 60, 10
EPS32 = np.finfo(np.float32).eps


def make_cohort(root: Path, seed: int = 0, change: dict[str, int] | None = None) -> Path:
    """N subjects with correlated parcels; subjects s0 and s1 have two sessions. `change` reseeds some subjects."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((V, V)) + 2 * np.eye(V)
    (root / "ts").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(N):
        for ses in (1, 2) if i < 2 else (1,):
            sid = f"s{i}"
            r = np.random.default_rng([seed, i, ses, (change or {}).get(sid, 0)])
            x = r.standard_normal((T, V)) @ mix * (1 + i % 3) + 50
            np.save(root / "ts" / f"{sid}_{ses}.npy", x)
            rows.append({"subject_id": sid, "session": str(ses), "path": f"ts/{sid}_{ses}.npy", "tr": 2.0})
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    coords = rng.uniform(-50, 50, (V, 3))
    pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "z": coords[:, 2]}).to_csv(root / "coords.tsv", sep="\t",
                                                                                  index=False)
    return root / "cohort.csv"


def build(root: Path, **kw) -> FmriDataset:
    return FmriDataset.load(ingest(root / "cohort.csv", root / "ds", IngestConfig(coords=root / "coords.tsv",
                                                                                  num_timepoints=20, **kw)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> FmriDataset:
    root = tmp_path_factory.mktemp("fc")
    make_cohort(root)
    return build(root)


def series(ds: FmriDataset) -> dict[str, list[np.ndarray]]:
    """Subject -> its recordings' [T, V] float64 series (storage order)."""
    out: dict[str, list[np.ndarray]] = {}
    for rid, sid in zip(ds.recordings["recording_id"], ds.recordings["subject_id"]):
        out.setdefault(str(sid), []).append(ds.signal(rid).T.astype(np.float64))
    return out


def lower(m: np.ndarray) -> np.ndarray:
    """nilearn's vector order: the strictly lower triangle, row by row (each parcel pair once)."""
    return m[np.tril_indices(len(m), -1)]


def close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to the float32 rounding of the stored table (a few float32 ulps of the largest value)."""
    np.testing.assert_allclose(a, b, rtol=0, atol=8 * EPS32 * max(1.0, float(np.abs(b).max())))


def test_correlation_is_fisher_z_pearson_averaged_per_subject(dataset, tmp_path) -> None:
    table = EmbeddingTable.load(connectivity_table(dataset, tmp_path / "fc", ConnectivityConfig()))
    ref = {s: np.mean([np.arctanh(lower(np.corrcoef(x.T))) for x in xs], axis=0) for s, xs in series(dataset).items()}
    assert table.ids == list(ref) and table.dim == V * (V - 1) // 2
    close(table.vectors, np.stack([ref[s] for s in table.ids]))
    assert table.meta["num_recordings"]["s0"] == 2 and table.meta["connectivity"] == "correlation"
    assert table.meta["fisher_z"] and table.meta["pca"] is None
    assert table.meta["data_hash"] == dataset.manifest["data_hash"]
    assert set(table.meta["split"].values()) == {"train", "val", "test"}
    # the two-session subject is the mean of its sessions, not either one
    one = np.arctanh(lower(np.corrcoef(series(dataset)["s0"][0].T)))
    assert np.abs(table.vectors[0] - one).max() > 1e-3


@pytest.mark.parametrize("kind", ["partial correlation", "tangent"])
def test_partial_and_tangent_match_nilearn_float64(dataset, tmp_path, kind) -> None:
    table = EmbeddingTable.load(connectivity_table(dataset, tmp_path / "fc", ConnectivityConfig(kind=kind)))
    subjects = series(dataset)
    split = table.meta["split"]
    measure = ConnectivityMeasure(cov_estimator=LedoitWolf(store_precision=False), kind=kind, vectorize=True,
                                  discard_diagonal=True, standardize="zscore_sample")
    if kind == "tangent":
        train = [x for s, xs in subjects.items() if split[s] == "train" for x in xs]
        measure.fit(train)
        ref = {s: measure.transform(xs * 2)[: len(xs)].mean(0) if len(xs) == 1 else measure.transform(xs).mean(0)
               for s, xs in subjects.items()}
        assert table.meta["tangent_reference"] == {"fitted_on": "train", "recordings": len(train)}
    else:
        ref = {s: np.arctanh(measure.fit_transform(xs)).mean(0) for s, xs in subjects.items()}
    close(table.vectors, np.stack([ref[s] for s in table.ids]))


def test_pca_fitted_on_train_matches_sklearn(dataset, tmp_path) -> None:
    full = EmbeddingTable.load(connectivity_table(dataset, tmp_path / "full", ConnectivityConfig()))
    table = EmbeddingTable.load(connectivity_table(dataset, tmp_path / "pca", ConnectivityConfig(pca=3)))
    train = [i for i, s in enumerate(full.ids) if full.meta["split"][s] == "train"]
    ref = PCA(n_components=3, svd_solver="full").fit(full.vectors[train].astype(np.float64))
    scores = ref.transform(full.vectors.astype(np.float64))
    signs = np.sign((table.vectors * scores).sum(0))  # component signs are arbitrary
    np.testing.assert_allclose(table.vectors * signs, scores, rtol=0, atol=1e-5 * np.abs(scores).max())
    assert table.meta["pca"]["components"] == 3 and table.meta["pca"]["subjects"] == len(train)
    incremental = EmbeddingTable.load(connectivity_table(dataset, tmp_path / "ipca",
                                                         ConnectivityConfig(pca=3, pca_in_memory_gb=1e-9)))
    assert incremental.meta["pca"]["solver"] == "streamed"
    flip = np.sign((incremental.vectors * table.vectors).sum(0))  # one arbitrary sign per component, not per cell
    np.testing.assert_allclose(incremental.vectors * flip, table.vectors, rtol=0, atol=1e-5 * np.abs(scores).max())
    share = EmbeddingTable.load(connectivity_table(dataset, tmp_path / "var", ConnectivityConfig(pca=0.5)))
    k = int(np.searchsorted(np.cumsum(PCA().fit(full.vectors[train].astype(np.float64)).explained_variance_ratio_),
                            0.5) + 1)
    assert share.dim == k and share.meta["pca"]["explained_variance"] >= 0.5


@pytest.mark.parametrize("kind", ["correlation", "tangent"])
def test_test_subjects_do_not_change_the_fit(tmp_path, kind) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_cohort(a)
    ds_a = build(a)
    test_subjects = ds_a.split.loc[ds_a.split["split"] == "test", "subject_id"].astype(str).tolist()
    make_cohort(b, change={s: 7 for s in test_subjects})  # same train/val data, new test-subject series
    ds_b = build(b, split_from=a / "ds" / "split.csv")
    cfg = ConnectivityConfig(kind=kind, pca=3)
    ta = EmbeddingTable.load(connectivity_table(ds_a, a / "fc", cfg))
    tb = EmbeddingTable.load(connectivity_table(ds_b, b / "fc", cfg))
    rows = [i for i, s in enumerate(ta.ids) if s not in test_subjects]
    test_rows = [i for i, s in enumerate(ta.ids) if s in test_subjects]
    close(tb.vectors[rows], ta.vectors[rows])  # PCA (and tangent reference) unchanged
    assert np.abs(tb.vectors[test_rows] - ta.vectors[test_rows]).max() > 1e-3  # the change did reach the table


def test_table_is_a_brain_table_for_align(dataset, tmp_path) -> None:
    from brainmm.align import AlignDataConfig, load_align_data

    stem = connectivity_table(dataset, tmp_path / "fc", ConnectivityConfig(pca=3))
    ids = dataset.split["subject_id"].astype(str).tolist()
    EmbeddingTable(ids, np.random.default_rng(0).uniform(0, 2, (len(ids), 4)), {}).save(tmp_path / "geno")
    data = load_align_data(AlignDataConfig(brain=str(stem), genetics={"genotype": str(tmp_path / "geno")},
                                           split=str(dataset.path / "split.csv")))
    assert not data.recording_keyed and data.brain.dim == 3
    assert sum(len(data.splits[s]) for s in ("train", "val", "test")) == N


@pytest.mark.slow
def test_bad_config_and_cli(dataset, tmp_path) -> None:
    with pytest.raises(BrainmmError, match="'kind'"):
        connectivity_table(dataset, tmp_path / "x", ConnectivityConfig(kind="coherence"))
    with pytest.raises(BrainmmError, match="'pca'"):
        connectivity_table(dataset, tmp_path / "x", ConnectivityConfig(pca=2.5))
    with pytest.raises(BrainmmError, match="at most"):
        connectivity_table(dataset, tmp_path / "x", ConnectivityConfig(pca=50))
    cli = [sys.executable, "-m", "brainmm.cli", "fmri", "connectivity"]
    ok = subprocess.run([*cli, str(dataset.path), "--out", str(tmp_path / "cli"), "--kind", "partial correlation",
                         "--pca", "2"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert EmbeddingTable.load(tmp_path / "cli").meta["connectivity"] == "partial correlation"
    again = subprocess.run([*cli, str(dataset.path), "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    missing = subprocess.run([*cli, str(tmp_path / "nope"), "--out", str(tmp_path / "y")], capture_output=True,
                             text=True)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_blas_correlation_equals_nilearn_to_1e10() -> None:
    """The batched kernel (recordings of two lengths in one call) against nilearn's ConnectivityMeasure in float64."""
    from sklearn.covariance import EmpiricalCovariance

    from brainmm.data.fmri.connectivity import correlation_vectors

    rng = np.random.default_rng(3)
    mix = rng.standard_normal((7, 7)) + np.eye(7)
    xs = [(rng.standard_normal((t, 7)) @ mix * 3 + 10).astype(np.float32) for t in (40, 40, 33, 40, 33)]
    measure = ConnectivityMeasure(cov_estimator=EmpiricalCovariance(), kind="correlation", vectorize=True,
                                  discard_diagonal=True, standardize="zscore_sample")
    r = measure.fit_transform([x.astype(np.float64) for x in xs])
    np.testing.assert_allclose(correlation_vectors(xs, fisher_z=False), r, rtol=0, atol=1e-10)
    np.testing.assert_allclose(correlation_vectors(xs), np.arctanh(r), rtol=0, atol=1e-10)
    single = correlation_vectors(xs, fisher_z=False, dtype="float32")  # float32 products: rounding ~ T * eps32
    np.testing.assert_allclose(single, r, rtol=0, atol=40 * EPS32)
    assert np.abs(single - r).max() > 0  # float32 did run in float32


def test_blas_engine_in_the_table_and_constant_parcel(dataset, tmp_path) -> None:
    table = EmbeddingTable.load(connectivity_table(dataset, tmp_path / "fc", ConnectivityConfig()))
    assert table.meta["engine"] == "blas"
    lw = EmbeddingTable.load(connectivity_table(dataset, tmp_path / "lw", ConnectivityConfig(estimator="ledoit_wolf")))
    assert lw.meta["engine"] == "nilearn" and np.abs(lw.vectors - table.vectors).max() > 1e-4  # shrinkage changed it
    from brainmm.data.fmri.connectivity import _check_finite, correlation_vectors

    x = np.random.default_rng(0).standard_normal((30, 4))
    x[:, 2] = 1.0
    with pytest.raises(BrainmmError, match="non-finite"):
        _check_finite(correlation_vectors([x]))
    with pytest.raises(BrainmmError, match="'dtype'"):
        connectivity_table(dataset, tmp_path / "x", ConnectivityConfig(dtype="float16"))


def test_streamed_pca_equals_sklearn_full_pca() -> None:
    """Randomized SVD over row blocks (the out-of-memory path) against sklearn's exact PCA on a decaying spectrum."""
    from brainmm.data.fmri.streamed_pca import streamed_pca

    rng = np.random.default_rng(0)
    scales = 30 * 2.0 ** -np.arange(20)
    x = ((rng.standard_normal((300, 20)) * scales) @ rng.standard_normal((20, 500))
         + rng.standard_normal((300, 500))).astype(np.float32)
    rows = np.arange(0, 300, 2)  # a subset of rows, as the training split
    ref = PCA(n_components=5, svd_solver="full").fit(x[rows].astype(np.float64))
    mean, components, ratio = streamed_pca(x, rows, 5, block=32)
    np.testing.assert_allclose(mean, ref.mean_, rtol=0, atol=1e-12 * np.abs(x).max())
    np.testing.assert_allclose(components, ref.components_, rtol=0, atol=1e-8)  # signs as sklearn's svd_flip
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-8, atol=0)
