"""Within-stratum retrieval (each query's candidates restricted to its own stratum: site, ancestry cluster, sex)
with the chance level of that restriction, and ancestry clusters from genetic principal components."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from alignment.errors import AlignmentInputError
from alignment.intervals import both_sides_intervals
from alignment.retrieval import (
    DIRECTIONS,
    KS,
    ArrayLike,
    RetrievalReport,
    as_embeddings,
    metric_names,
    pair_ranks,
    rank_metrics,
)
from alignment.significance import pairing_permutations, permuted_ranks, pvalues, rank_statistics


def stratum_chance(sizes: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Expected `rank_metrics` when each query's true item is ranked uniformly among its stratum's `sizes[q]`
    candidates: R@k = mean_q min(k, n_q) / n_q (R@1 = mean 1/n_q), mean_rank = mean (n_q + 1) / 2,
    mrr = mean H(n_q) / n_q, median_rank from the mixture of the per-query uniform rank distributions."""
    n = np.asarray(sizes, dtype=np.int64)
    if n.ndim != 1 or not len(n) or n.min() < 1:
        raise AlignmentInputError(f"stratum sizes: expected a 1-D array of sizes >= 1, got {sizes!r}")
    out = {f"R_at_{k}": float(np.mean(np.minimum(k, n) / n)) for k in ks}
    harmonic = np.cumsum(1.0 / np.arange(1, n.max() + 1))
    out["mean_rank"] = float(np.mean((n + 1) / 2))
    out["mrr"] = float(np.mean(harmonic[n - 1] / n))
    values, counts = np.unique(n, return_counts=True)
    r = np.arange(n.max())
    cdf = (np.minimum(r[None, :] + 1, values[:, None]) / values[:, None]).T @ (counts / counts.sum())
    out["median_rank"] = float(np.argmax(cdf >= 0.5 - 1e-12) + 1)
    return {name: out[name] for name in metric_names(ks)}


def within_stratum_report(
    brain: ArrayLike,
    genetics: ArrayLike,
    strata: Sequence[Any] | np.ndarray,
    *,
    name: str = "stratum",
    ks: Sequence[int] = KS,
    min_size: int = 2,
    n_boot: int = 1000,
    n_perm: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    normalize: bool = True,
) -> RetrievalReport:
    """Row-paired retrieval (row i of `brain` <-> row i of `genetics`, one row per subject) where every query
    competes only with the candidates of its own stratum (`strata[i]`); level `within_<name>`.

    Strata with fewer than `min_size` subjects are left out (counted in `n_excluded`). Each metric's chance is
    `stratum_chance` of the queries' stratum sizes; CIs: the both-sides subject bootstrap (`alignment.intervals`,
    `n_boot`, `seed`) with candidates restricted to the stratum; p-values: `n_perm` shuffles of the pairing within
    strata (`alignment.significance`; 0 = none).
    """
    q = as_embeddings(brain, "brain", normalize)
    g = as_embeddings(genetics, "genetics", normalize)
    if q.shape != g.shape:
        raise AlignmentInputError(f"brain {tuple(q.shape)} and genetics {tuple(g.shape)}: within-stratum retrieval "
                                  "pairs rows, so both need the same shape")
    labels = np.asarray(strata)
    if labels.shape != (q.shape[0],):
        raise AlignmentInputError(f"strata ({name}): expected {q.shape[0]} labels (one per row), got shape "
                                  f"{labels.shape}")
    if not isinstance(min_size, int) or min_size < 2:
        raise AlignmentInputError(f"min_size: expected an integer >= 2, got {min_size!r}")
    codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(codes)
    kept = np.flatnonzero(sizes[codes] >= min_size)
    if not len(kept):
        raise AlignmentInputError(f"strata ({name}): no stratum holds {min_size} or more subjects")
    ranks = {d: np.empty(q.shape[0], dtype=np.int64) for d in DIRECTIONS}
    for c in np.flatnonzero(sizes >= min_size):
        idx = np.flatnonzero(codes == c)
        rows = torch.from_numpy(idx)
        fwd, bwd = pair_ranks(q[rows], g[rows], normalize=False)  # rows are already unit-norm when `normalize`
        ranks[DIRECTIONS[0]][idx], ranks[DIRECTIONS[1]][idx] = fwd, bwd
    chance = stratum_chance(sizes[codes[kept]], ks)
    qk, gk, ck = q[torch.from_numpy(kept)], g[torch.from_numpy(kept)], codes[kept]
    p_values = _within_pvalues(qk, gk, ck, ks, n_perm, seed) if n_perm else {}
    report = RetrievalReport(records=[])
    for direction, (a, b) in zip(DIRECTIONS, ((qk, gk), (gk, qk))):
        r = ranks[direction][kept]
        report.ranks[(direction, f"within_{name}")] = r
        point = rank_metrics(r, ks)
        rows = np.arange(len(kept))
        ci = both_sides_intervals(a, b, rows, rows, ks=ks, n_boot=n_boot, level=level, seed=seed, strata=(ck, ck))
        report.records += [
            {
                "direction": direction,
                "level": f"within_{name}",
                "metric": metric,
                "value": point[metric],
                "ci_low": ci[metric][0],
                "ci_high": ci[metric][1],
                "chance": chance[metric],
                "p_value": p_values.get(direction, {}).get(metric, float("nan")),
                "n_queries": len(r),
                "n_candidates": float(np.mean(sizes[codes[kept]])),
                "n_strata": int((sizes >= min_size).sum()),
                "n_excluded": int(q.shape[0] - len(kept)),
            }
            for metric in metric_names(ks)
        ]
    return report


def _within_pvalues(q: torch.Tensor, g: torch.Tensor, codes: np.ndarray, ks: Sequence[int], n_perm: int,
                    seed: int) -> dict[str, dict[str, float]]:
    """Permutation p-values of within-stratum retrieval: pairings shuffled within strata, ranks within strata."""
    perms = np.vstack([np.arange(len(codes)), pairing_permutations(len(codes), n_perm, strata=codes, seed=seed)])
    local = np.empty(len(codes), dtype=np.int64)
    out = {}
    for direction, (a, b, partners) in {"brain_to_genetics": (q, g, perms),
                                        "genetics_to_brain": (g, q, np.argsort(perms, axis=1))}.items():
        ranks = np.empty(perms.shape, dtype=np.int64)
        for c in np.unique(codes):
            idx = np.flatnonzero(codes == c)
            local[idx] = np.arange(len(idx))
            rows = torch.from_numpy(idx)
            ranks[:, idx] = permuted_ranks(a[rows], b[rows], local[partners[:, idx]])
        stats = rank_statistics(ranks, ks)
        out[direction] = pvalues({k: float(v[0]) for k, v in stats.items()}, {k: v[1:] for k, v in stats.items()})
    return out


class AncestryClusters:
    """KMeans on training subjects' genetic PCs; with `n_clusters=None` the number (2..`max_clusters`) with the
    best silhouette on the training subjects (at most `silhouette_sample` of them, seeded) is chosen."""

    def __init__(self, n_clusters: int | None = None, max_clusters: int = 8, silhouette_sample: int = 5000,
                 seed: int = 0) -> None:
        if n_clusters is not None and (not isinstance(n_clusters, int) or n_clusters < 1):
            raise AlignmentInputError(f"n_clusters: expected a positive integer or None, got {n_clusters!r}")
        if not isinstance(max_clusters, int) or max_clusters < 2:
            raise AlignmentInputError(f"max_clusters: expected an integer >= 2, got {max_clusters!r}")
        self.n_clusters, self.max_clusters = n_clusters, max_clusters
        self.silhouette_sample, self.seed = silhouette_sample, seed

    def fit(self, pcs: Any) -> AncestryClusters:
        """Cluster the training PCs [n, n_pcs]."""
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        x = _pcs(pcs, "training genetic PCs")
        if self.n_clusters is not None:
            if self.n_clusters > len(x):
                raise AlignmentInputError(f"n_clusters={self.n_clusters}: more than the {len(x)} training subjects")
            self.model_ = KMeans(self.n_clusters, n_init=10, random_state=self.seed).fit(x)
            self.silhouettes_: dict[int, float] = {}
            return self
        candidates = range(2, min(self.max_clusters, len(x) - 1) + 1)
        if not len(candidates):
            raise AlignmentInputError(f"ancestry clusters: {len(x)} training subjects are too few to choose a number "
                                      "of clusters (need at least 3)")
        fits = {k: KMeans(k, n_init=10, random_state=self.seed).fit(x) for k in candidates}
        sample = min(len(x), self.silhouette_sample)
        self.silhouettes_ = {k: float(silhouette_score(x, m.labels_, sample_size=sample, random_state=self.seed))
                             for k, m in fits.items()}
        self.model_ = fits[max(self.silhouettes_, key=self.silhouettes_.__getitem__)]
        return self

    def predict(self, pcs: Any) -> np.ndarray:
        """Cluster index of each row (any split), from the training centres."""
        if not hasattr(self, "model_"):
            raise AlignmentInputError("AncestryClusters: call fit() on the training PCs first")
        x = _pcs(pcs, "genetic PCs")
        if x.shape[1] != self.model_.cluster_centers_.shape[1]:
            raise AlignmentInputError(f"genetic PCs: {x.shape[1]} columns, fitted on "
                                      f"{self.model_.cluster_centers_.shape[1]}")
        return self.model_.predict(x)


def _pcs(x: Any, what: str) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise AlignmentInputError(f"{what}: expected a numeric [n, n_pcs] array ({err})") from None
    if x.ndim != 2 or 0 in x.shape or not np.isfinite(x).all():
        raise AlignmentInputError(f"{what}: expected a finite 2-D array [n >= 1, n_pcs >= 1], got shape {x.shape}")
    return x
