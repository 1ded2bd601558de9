"""Permutation tests over test pairings: which genetics row pairs with which brain row is shuffled (within strata,
whole families at a time), and the retrieval metrics and held-out correlations are recomputed from the fixed
similarity matrix, so "above chance" comes from a test with a controlled error rate (docs/evaluation.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from alignment.errors import AlignmentInputError
from alignment.ranks import _MAX_ROW_BLOCK_ELEMENTS, _scores
from alignment.stats import bootstrap_weights, cluster_codes, percentile_ci, permutation_pvalue

LOWER_IS_BETTER = ("mean_rank", "median_rank")


def pairing_permutations(
    n: int,
    n_perm: int,
    *,
    strata: Sequence[Any] | np.ndarray | None = None,
    clusters: Sequence[Any] | np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """[n_perm, n] shuffles of the pairing: in shuffle p, brain row i is paired with genetics row perm[p, i].

    Rows move only within their stratum (`strata`: e.g. site x ancestry cell); with `clusters` (families) whole
    clusters swap with clusters of the same size and stratum, member k onto member k (Winkler et al. 2015), so the
    null keeps the dependence inside a family. Seeded."""
    if not isinstance(n_perm, int) or n_perm < 1:
        raise AlignmentInputError(f"n_perm: expected a positive integer, got {n_perm!r}")
    s_codes = np.zeros(n, dtype=np.int64) if strata is None else cluster_codes(strata, n, "strata")
    c_codes = np.arange(n) if clusters is None else cluster_codes(clusters, n, "clusters")
    n_clusters = int(c_codes.max()) + 1
    order = np.argsort(c_codes, kind="stable")
    sizes = np.bincount(c_codes, minlength=n_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n) - np.repeat(starts, sizes)
    cluster_stratum = np.full(n_clusters, -1)
    cluster_stratum[c_codes] = s_codes
    if not np.array_equal(cluster_stratum[c_codes], s_codes):
        raise AlignmentInputError("clusters: every cluster (family) must lie inside one stratum")
    rng = np.random.default_rng(seed)
    target = np.tile(np.arange(n_clusters), (n_perm, 1))
    keys = cluster_stratum * (int(sizes.max()) + 1) + sizes
    for key in np.unique(keys):
        group = np.flatnonzero(keys == key)
        if len(group) > 1:
            target[:, group] = rng.permuted(np.tile(group, (n_perm, 1)), axis=1)
    return order[starts[target[:, c_codes]] + position[None, :]]


def permuted_ranks(
    query: torch.Tensor, gallery: torch.Tensor, partners: np.ndarray, block_size: int = 1024
) -> np.ndarray:
    """[n_perm, n] 0-based ranks of gallery row partners[p, i] for query row i (ties pessimistic, as `pair_ranks`).

    Each score row is computed and sorted once; every shuffle is then a gather and a binary search, so a thousand
    shuffles cost about as much as one ranking."""
    n_perm, n = partners.shape
    n_gal = gallery.shape[0]
    rows = max(1, min(block_size, _MAX_ROW_BLOCK_ELEMENTS // max(n_gal, n_perm)))
    idx = torch.from_numpy(np.ascontiguousarray(partners.T)).to(query.device)  # [n, n_perm]
    out = torch.empty(n, n_perm, dtype=torch.int64, device=query.device)
    for a in range(0, n, rows):
        b = min(a + rows, n)
        s = _scores(query[a:b], gallery)
        ordered = torch.sort(s, dim=1).values
        true = s.gather(1, idx[a:b])
        out[a:b] = n_gal - torch.searchsorted(ordered, true, side="left") - 1
    return out.T.cpu().numpy()


def rank_statistics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """`rank_metrics` along the last axis of [..., n] ranks (vectorised over shuffles)."""
    ranks = np.asarray(ranks)
    out = {f"R_at_{k}": (ranks < k).mean(-1) for k in ks}
    out["median_rank"] = np.floor(np.median(ranks, axis=-1)) + 1
    out["mean_rank"] = ranks.mean(-1) + 1.0
    out["mrr"] = (1.0 / (ranks + 1.0)).mean(-1)
    return out


def pvalues(observed: dict[str, float], null: dict[str, np.ndarray]) -> dict[str, float]:
    """One-sided permutation p-values: better than the shuffles (larger, or smaller for rank metrics)."""
    out = {}
    for name, value in observed.items():
        sign = -1.0 if name in LOWER_IS_BETTER else 1.0
        out[name] = float(permutation_pvalue(sign * value, sign * np.asarray(null[name])))
    return out


def retrieval_pvalues(
    brain: torch.Tensor,
    genetics: torch.Tensor,
    *,
    ks: Sequence[int],
    n_perm: int = 1000,
    strata: Sequence[Any] | np.ndarray | None = None,
    clusters: Sequence[Any] | np.ndarray | None = None,
    seed: int = 0,
    block_size: int = 1024,
) -> dict[str, dict[str, float]]:
    """Permutation p-values of every rank metric of row-paired retrieval, both directions
    ({'brain_to_genetics': {...}, 'genetics_to_brain': {...}}); `brain`/`genetics` are unit-norm (cosine) rows."""
    n = brain.shape[0]
    perms = pairing_permutations(n, n_perm, strata=strata, clusters=clusters, seed=seed)
    perms = np.vstack([np.arange(n)[None, :], perms])  # row 0: the observed pairing
    inverse = np.argsort(perms, axis=1)  # genetics row j is paired with brain row inverse[p, j]
    out = {}
    for direction, (q, g, partners) in {"brain_to_genetics": (brain, genetics, perms),
                                        "genetics_to_brain": (genetics, brain, inverse)}.items():
        stats = rank_statistics(permuted_ranks(q, g, partners, block_size), ks)
        out[direction] = pvalues({k: float(v[0]) for k, v in stats.items()}, {k: v[1:] for k, v in stats.items()})
    return out


def column_corr(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pearson correlation of column k of `u` with column k of `v` (0 for a constant column)."""
    uc, vc = u - u.mean(0), v - v.mean(0)
    denom = np.sqrt((uc * uc).sum(0) * (vc * vc).sum(0))
    return np.divide((uc * vc).sum(0), denom, out=np.zeros(u.shape[1]), where=denom > 0)


def correlation_records(
    name: str,
    u: np.ndarray,
    v: np.ndarray,
    *,
    n_perm: int = 1000,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    strata: Sequence[Any] | np.ndarray | None = None,
    clusters: Sequence[Any] | np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Held-out correlation of each paired dimension (`canonical_corr_<k>`; projections fitted on other rows):
    percentile bootstrap CI over test rows (clusters resampled whole) and a permutation p-value of the test
    pairing (within strata, whole clusters), one-sided (r > 0)."""
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if u.shape != v.shape or u.ndim != 2 or len(u) < 3:
        raise AlignmentInputError(f"correlation_records ({name}): expected two paired [n >= 3, k] arrays, got "
                                  f"{u.shape} and {v.shape}")
    observed = column_corr(u, v)
    if n_perm:
        perms = pairing_permutations(len(u), n_perm, strata=strata, clusters=clusters, seed=seed)
        null = np.stack([column_corr(u, v[p]) for p in perms])
        p_values = permutation_pvalue(observed, null)
    else:
        p_values = np.full(len(observed), np.nan)
    codes = cluster_codes(clusters, len(u), "clusters")
    order = np.argsort(codes, kind="stable")
    boot = [column_corr(u[idx], v[idx]) for idx in (np.repeat(order, w[codes[order]])
                                                    for w in bootstrap_weights(codes, n_boot, seed))]
    low, high = percentile_ci(np.array(boot), level)
    return [{"model": name, "direction": None, "level": None, "metric": f"canonical_corr_{k + 1}",
             "value": float(observed[k]), "ci_low": float(low[k]), "ci_high": float(high[k]), "chance": 0.0,
             "p_value": float(p_values[k]), "n_queries": len(u), "n_candidates": None}
            for k in range(len(observed))]
