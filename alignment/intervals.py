"""Intervals for retrieval metrics that keep their coverage near chance: a bootstrap over subjects on BOTH sides.

Each replicate draws subjects (clusters) with replacement and uses the same draw as queries and as gallery; ranks
are recomputed within the resampled pool from the fixed similarity matrix (rank* = competitors-above matrix @
gallery weights, one matmul per row block). Rules for duplicates: a subject drawn c times is c queries; its own
copies are its partner, never competitors; every copy of another subject competes. R@k and MRR are percentile
intervals shifted by the resampling bias that exceeds its value under a random ranking (`excess_bias`); mean and
median rank use ranks rescaled to the original number of competitors. Coverage: docs/evaluation.md and
benchmarks/retrieval_intervals.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import binom

from alignment.ranks import _MAX_ROW_BLOCK_ELEMENTS, _scores
from alignment.stats import percentile_ci

_MAX_BOOT_COLUMNS = 1 << 25  # [queries, replicates] float32 ranks kept at once (128 MB); more are done in chunks


def _weights(rng: np.random.Generator, n_clusters: int, n_boot: int) -> np.ndarray:
    """[n_clusters, n_boot] int32 multinomial draw counts (as many draws as clusters per replicate)."""
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot).T.astype(np.int32)


def _competitors(
    q: torch.Tensor, g: torch.Tensor, qc: torch.Tensor, gc: torch.Tensor, qs: torch.Tensor | None,
    gs: torch.Tensor | None, a: int, b: int,
) -> torch.Tensor:
    """Bool [b - a, n_gallery]: gallery items of another subject (and of the query's stratum) scoring at least as
    high as the query's best-scoring own item (pessimistic ties, as `positive_ranks`)."""
    s = _scores(q[a:b], g)
    own = gc[None, :] == qc[a:b, None]
    best = torch.where(own, s, torch.full_like(s, float("-inf"))).max(1, keepdim=True).values
    mask = (s >= best) & ~own
    if qs is not None:
        mask &= gs[None, :] == qs[a:b, None]
    return mask


def resampled_ranks(
    q: torch.Tensor, g: torch.Tensor, q_codes: np.ndarray, g_codes: np.ndarray, weights: np.ndarray,
    strata: tuple[np.ndarray, np.ndarray] | None = None, block_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Observed ranks [n_q] and resampled ranks [n_q, n_boot] (float32) for cluster weights [n_clusters, n_boot];
    `q_codes`/`g_codes` are the cluster (subject) of each query / gallery row."""
    dev = q.device
    qc, gc = torch.from_numpy(q_codes).to(dev), torch.from_numpy(g_codes).to(dev)
    qs, gs = (None, None) if strata is None else (torch.from_numpy(s).to(dev) for s in strata)
    wg = torch.from_numpy(weights[g_codes].astype(np.float32)).to(dev)
    n, n_gal = q.shape[0], g.shape[0]
    rows = max(1, min(block_size, _MAX_ROW_BLOCK_ELEMENTS // n_gal))
    observed = torch.empty(n, dtype=torch.int64, device=dev)
    boot = torch.empty(n, weights.shape[1], dtype=torch.float32, device=dev)
    for a in range(0, n, rows):
        b = min(a + rows, n)
        c = _competitors(q, g, qc, gc, qs, gs, a, b)
        observed[a:b] = c.sum(1)
        boot[a:b] = c.to(torch.float32) @ wg
    return observed.cpu().numpy(), boot.cpu().numpy()


def _expected_resampled(r: np.ndarray, n_clusters: int, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """E over the resampling of a query's weighted R@k and reciprocal-rank contributions, given its observed rank r:
    the query is drawn c ~ Bin(C, 1/C) times and its r competitors above together c' ~ Bin(C - c, r / (C - 1))."""
    r = np.asarray(r, dtype=np.float64)
    p = np.minimum(r / max(n_clusters - 1, 1), 1.0)
    out = {f"R_at_{k}": np.zeros_like(r) for k in ks} | {"mrr": np.zeros_like(r)}
    for c in range(1, min(n_clusters, 16) + 1):
        pc = binom.pmf(c, n_clusters, 1.0 / n_clusters) * c
        m = n_clusters - c
        for k in ks:
            out[f"R_at_{k}"] += pc * binom.cdf(k - 1, m, p)
        with np.errstate(divide="ignore", invalid="ignore"):  # E[1 / (1 + X)], X ~ Bin(m, p)
            rr = -np.expm1((m + 1) * np.log1p(-np.minimum(p, 1 - 1e-15))) / ((m + 1) * p)
        out["mrr"] += pc * np.where(p > 0, rr, 1.0)
    return out


def excess_bias(ranks: np.ndarray, n_competitors: np.ndarray, n_clusters: int, ks: Sequence[int]) -> dict[str, float]:
    """Bias of the both-sides bootstrap mean of R@k and MRR for these ranks minus its value for uniformly random
    ranks (0..n_competitors): what a percentile interval must be shifted by. At chance it is ~0 (the percentile
    interval of a right-skewed statistic is calibrated there); with a signal, dropping competitors above the true
    item inflates R@k and MRR (Jensen) and the shift removes that."""
    ranks = np.asarray(ranks)
    data = _expected_resampled(ranks, n_clusters, ks)
    point = {f"R_at_{k}": (ranks < k).astype(np.float64) for k in ks} | {"mrr": 1.0 / (ranks + 1.0)}
    out = {name: float(np.mean(data[name] - point[name])) for name in data}
    values, counts = np.unique(np.asarray(n_competitors, dtype=np.int64), return_counts=True)
    null = dict.fromkeys(out, 0.0)
    for n_comp, count in zip(values, counts):
        u = np.arange(n_comp + 1)
        exp_u = _expected_resampled(u, n_clusters, ks)
        point_u = {f"R_at_{k}": (u < k).astype(np.float64) for k in ks} | {"mrr": 1.0 / (u + 1.0)}
        for name in null:
            null[name] += count / len(ranks) * float(np.mean(exp_u[name] - point_u[name]))
    return {name: out[name] - null[name] for name in out}


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """floor(median) of each column's weighted values (weights are counts), as `rank_metrics` on the expansion."""
    order = np.argsort(values, axis=0, kind="stable")
    v = np.take_along_axis(values, order, 0)
    cum = np.cumsum(np.take_along_axis(weights, order, 0), axis=0)
    total = cum[-1]
    lo = v[np.argmax(cum > ((total - 1) // 2)[None, :], axis=0), np.arange(v.shape[1])]
    hi = v[np.argmax(cum > (total // 2)[None, :], axis=0), np.arange(v.shape[1])]
    return np.floor((lo + hi) / 2)


def both_sides_intervals(
    q: torch.Tensor,
    g: torch.Tensor,
    q_codes: np.ndarray,
    g_codes: np.ndarray,
    *,
    ks: Sequence[int],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    strata: tuple[np.ndarray, np.ndarray] | None = None,
    families: np.ndarray | None = None,
    block_size: int = 1024,
) -> dict[str, tuple[float, float]]:
    """Intervals of `rank_metrics` from the both-sides subject bootstrap (module docstring). `q_codes`/`g_codes`:
    subject code of each query / gallery row in one code space; `families`: the family (resampling unit) of each
    subject code, drawn whole (members stay competitors of each other); `strata`: (query, gallery) stratum codes
    when candidates are restricted to the query's stratum."""
    n_subjects = int(max(q_codes.max(), g_codes.max())) + 1
    unit = np.arange(n_subjects) if families is None else np.asarray(families)
    n_clusters = int(unit.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_BOOT_COLUMNS // len(q_codes))
    own = np.bincount(g_codes, minlength=n_subjects)[q_codes]  # gallery items of the query's own subject
    if strata is None:
        stratum_items = np.full(len(q_codes), len(g_codes))
    else:
        stratum_items = np.bincount(strata[1], minlength=int(strata[0].max()) + 1)[strata[0]]
    n_comp = np.maximum(stratum_items - own, 0)
    samples: dict[str, list[np.ndarray]] = {}
    observed = None
    for start in range(0, n_boot, chunk):
        w = _weights(rng, n_clusters, min(chunk, n_boot - start))[unit]  # drawn chunk by chunk: O(N x chunk)
        observed, r = resampled_ranks(q, g, q_codes, g_codes, w, strata, block_size)
        wq = w[q_codes].astype(np.float64)
        total = wq.sum(0)
        wg = w[g_codes].astype(np.float64)
        if strata is None:
            pool = np.broadcast_to(wg.sum(0), wq.shape)
        else:
            per_stratum = np.zeros((int(strata[0].max()) + 1, w.shape[1]))
            np.add.at(per_stratum, strata[1], wg)
            pool = per_stratum[strata[0]]
        comp = pool - own[:, None] * wq  # competitors in the resampled pool
        scaled = np.where(comp > 0, r * n_comp[:, None] / np.maximum(comp, 1), 0.0)
        stats = {f"R_at_{k}": (wq * (r < k)).sum(0) / total for k in ks}
        stats["mrr"] = (wq / (r + 1.0)).sum(0) / total
        stats["mean_rank"] = (wq * scaled).sum(0) / total + 1.0
        stats["median_rank"] = _weighted_median(scaled, w[q_codes]) + 1.0
        for name, values in stats.items():
            samples.setdefault(name, []).append(values)
    bias = excess_bias(observed, n_comp, n_clusters, ks)
    out: dict[str, tuple[float, float]] = {}
    for name, parts in samples.items():
        low, high = percentile_ci(np.concatenate(parts), level)
        shift = bias.get(name, 0.0)
        low, high = float(low) - shift, float(high) - shift
        if name in bias:  # proportions and reciprocal ranks live in [0, 1]
            low, high = max(low, 0.0), min(high, 1.0)
        out[name] = (low, high)
    return out
