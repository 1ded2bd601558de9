"""Cross-modal retrieval metrics (open_clip definitions) computed blockwise, never as an N x N matrix.

Ranks are 0-based ranks of the true item; ties count against it (pessimistic). Every metric comes with its
exact chance value for the pool size, a seeded both-sides subject-bootstrap CI (`alignment.intervals`) and a
permutation p-value over test pairings (`alignment.significance`); the MindEye fixed-pool protocol (top-1 among K random candidates, repeated) is reported next to the full-pool metrics.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alignment.errors import AlignmentInputError
from alignment.intervals import both_sides_intervals
from alignment.ranks import (  # noqa: F401 (pair_ranks, positive_ranks, as_embeddings: part of this module's API)
    ArrayLike,
    _check_block,
    _check_pair,
    _pair_ranks,
    _positive_ranks,
    _shared_codes,
    as_embeddings,
    pair_ranks,
    positive_ranks,
)
from alignment.significance import retrieval_pvalues
from alignment.stats import (
    SMALL_N,
    bootstrap_weights,
    cluster_codes,
    flatten_records,
    normal_ci,
    percentile_ci,
    small_n_cis,
)

DIRECTIONS = ("brain_to_genetics", "genetics_to_brain")
KS = (1, 5, 10)


# ----------------------------------------------------------------------------------------------- inputs



def check_disjoint_splits(
    query_ids: Sequence[Any],
    query_splits: Sequence[Any],
    gallery_ids: Sequence[Any] | None = None,
    gallery_splits: Sequence[Any] | None = None,
) -> None:
    """Raise AlignmentInputError naming the subject ids that carry more than one split label (either side)."""
    ids, splits = [np.asarray(query_ids, dtype=object)], [np.asarray(query_splits, dtype=object)]
    if (gallery_ids is None) != (gallery_splits is None):
        raise AlignmentInputError("check_disjoint_splits: pass gallery_ids and gallery_splits together")
    if gallery_ids is not None:
        ids.append(np.asarray(gallery_ids, dtype=object))
        splits.append(np.asarray(gallery_splits, dtype=object))
    for i, s in zip(ids, splits):
        if i.shape != s.shape or i.ndim != 1:
            raise AlignmentInputError(
                f"check_disjoint_splits: {i.shape} ids for {s.shape} split labels (expected 1-D, equal length)"
            )
    seen: dict[Any, set[Any]] = {}
    for subject, split in zip(np.concatenate(ids), np.concatenate(splits)):
        seen.setdefault(subject, set()).add(split)
    leaked = sorted((str(k) for k, v in seen.items() if len(v) > 1))
    if leaked:
        raise AlignmentInputError(
            f"split leakage: subject ids {leaked[:10]}{' ...' if len(leaked) > 10 else ''} ({len(leaked)} in all) "
            "appear in more than one split"
        )


# ------------------------------------------------------------------------------------- metrics from ranks


def metric_names(ks: Sequence[int] = KS) -> list[str]:
    """Rank metric names in report order."""
    return [f"R_at_{k}" for k in ks] + ["median_rank", "mean_rank", "mrr"]


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """open_clip definitions on 0-based ranks: R@k = mean(rank < k), median_rank = floor(median(rank)) + 1,
    mean_rank = mean(rank) + 1, mrr = mean(1 / (rank + 1))."""
    ranks = np.asarray(ranks)
    out = {f"R_at_{k}": float(np.mean(ranks < k)) for k in ks}
    out["median_rank"] = float(np.floor(np.median(ranks)) + 1)
    out["mean_rank"] = float(ranks.mean() + 1)
    out["mrr"] = float(np.mean(1.0 / (ranks + 1.0)))
    return out


def chance_metrics(
    n_candidates: int, n_positives: np.ndarray | int = 1, ks: Sequence[int] = KS
) -> dict[str, float]:
    """Exact expectations of `rank_metrics` when the gallery (n_candidates items, n_positives[q] of them the
    query's) is ordered at random; rank = items before the first positive, P(rank >= r) = C(N-r, m) / C(N, m).

    With one positive: R@k = k/N, mean_rank = (N+1)/2, mrr = H_N/N, median_rank = floor((N-1)/2) + 1.
    """
    m_all = np.atleast_1d(np.asarray(n_positives, dtype=np.int64))
    n = int(n_candidates)
    if n < 1 or m_all.min() < 1 or m_all.max() > n:
        raise AlignmentInputError(
            f"chance_metrics: need 1 <= positives <= candidates, got N={n}, m in [{m_all.min()}, {m_all.max()}]"
        )
    values, weights = np.unique(m_all, return_counts=True)
    weights = weights / weights.sum()
    out = {f"R_at_{k}": 0.0 for k in ks} | {"mean_rank": 0.0, "mrr": 0.0}
    cdf = np.zeros(n)
    r = np.arange(n + 1)
    for m, w in zip(values, weights):
        with np.errstate(divide="ignore"):  # log(0) = -inf once fewer than m items are left
            log_ratio = np.log1p(np.maximum(-m / (n - r[:-1]), -1.0))  # P(rank >= r+1 | rank >= r)
        log_surv = np.concatenate([[0.0], np.cumsum(log_ratio)])  # log P(rank >= r), r = 0..N
        surv = np.exp(log_surv)
        pmf = surv[:-1] - surv[1:]
        for k in ks:
            out[f"R_at_{k}"] += w * -np.expm1(log_surv[min(k, n)])
        out["mean_rank"] += w * ((n - m) / (m + 1) + 1)
        out["mrr"] += w * float(pmf @ (1.0 / (r[:-1] + 1.0)))
        cdf += w * (1.0 - surv[1:])
    out["median_rank"] = float(np.argmax(cdf >= 0.5 - 1e-12) + 1)
    return {name: float(out[name]) for name in metric_names(ks)}


def bootstrap_rank_metrics(
    ranks: np.ndarray,
    clusters: np.ndarray | None = None,
    ks: Sequence[int] = KS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile CIs of `rank_metrics` from a seeded bootstrap over query clusters (subjects; each query its own
    cluster when None). Vectorised over replicates: the ranks are resampled, never recomputed.

    Query-only: the gallery stays fixed, so near chance these intervals under-cover (benchmarks/
    retrieval_intervals.md); `retrieval_report` uses `alignment.intervals.both_sides_intervals` instead. Kept for
    callers that hold only ranks."""
    ranks = np.asarray(ranks)
    codes = cluster_codes(clusters, len(ranks), "clusters")
    order = np.argsort(ranks, kind="stable")
    sorted_ranks, sorted_codes = ranks[order], codes[order]
    means = [f"R_at_{k}" for k in ks] + ["mean_rank", "mrr"]
    per_item = np.stack(
        [(sorted_ranks < k).astype(np.float64) for k in ks] + [sorted_ranks + 1.0, 1.0 / (sorted_ranks + 1.0)]
    )
    samples = np.empty((n_boot, len(means) + 1))
    for b, w in enumerate(bootstrap_weights(codes, n_boot, seed)):
        weights = w[sorted_codes]
        cum = np.cumsum(weights)
        total = int(cum[-1])
        # einsum, not `@`: a BLAS gemv this small only pays for thread start-up
        samples[b, :-1] = np.einsum("ij,j->i", per_item, weights.astype(np.float64)) / total
        lo, hi = sorted_ranks[np.searchsorted(cum, [(total - 1) // 2, total // 2], side="right")]
        samples[b, -1] = np.floor((lo + hi) / 2) + 1  # weighted median of the expanded resample
    low, high = percentile_ci(samples, level)
    ci = {name: (float(low[i]), float(high[i])) for i, name in enumerate([*means, "median_rank"])}
    # R@k: Wilson over subjects; MRR: bootstrap, widened at small N (alignment.stats.small_n_cis)
    return small_n_cis(ci, rank_metrics(ranks, ks), [f"R_at_{k}" for k in ks], ["mrr"], int(codes.max()) + 1, level)


# ------------------------------------------------------------------------------------------ K-way protocol


def kway_top1(
    brain: ArrayLike,
    genetics: ArrayLike,
    *,
    k: int = 300,
    repeats: int = 30,
    brain_subjects: Sequence[Any] | None = None,
    genetics_subjects: Sequence[Any] | None = None,
    seed: int = 0,
    level: float = 0.95,
    normalize: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, float]]:
    """MindEye fixed-pool protocol: top-1 accuracy among K random subjects (min(K, n_subjects)), both directions.

    Each repeat draws K distinct subjects and one random item per subject on each side (rows are the subjects
    themselves when no labels are given, so rows must be paired); ties pessimistic. Returns, per direction,
    mean over repeats, normal-approximation CI of that mean, chance 1/K and the K used.
    """
    q = as_embeddings(brain, "brain", normalize, device)
    g = as_embeddings(genetics, "genetics", normalize, q.device)
    b_codes, d_codes = _side_codes(q, g, brain_subjects, genetics_subjects)
    return _kway(q, g, b_codes, d_codes, k, repeats, seed, level)


def _kway(
    q: torch.Tensor,
    g: torch.Tensor,
    b_codes: np.ndarray,
    d_codes: np.ndarray,
    k: int,
    repeats: int,
    seed: int,
    level: float,
) -> dict[str, dict[str, float]]:
    if not isinstance(k, int) or k < 2 or not isinstance(repeats, int) or repeats < 2:
        raise AlignmentInputError(f"kway: expected k >= 2 and repeats >= 2, got k={k!r}, repeats={repeats!r}")
    common = np.intersect1d(b_codes, d_codes)
    if len(common) < 2:
        raise AlignmentInputError(f"kway: need at least 2 subjects present on both sides, got {len(common)}")
    k = min(k, len(common))
    rng = np.random.default_rng(seed)

    def pick(codes: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=int(common.max()) + 1)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return order[starts[chosen] + (rng.random(chosen.shape) * counts[chosen]).astype(np.int64)]

    chosen = np.stack([rng.choice(common, size=k, replace=False) for _ in range(repeats)])
    bi = torch.from_numpy(pick(b_codes, chosen)).to(q.device)
    di = torch.from_numpy(pick(d_codes, chosen)).to(q.device)
    s = torch.bmm(q[bi], g[di].transpose(1, 2))  # [repeats, k, k]; true pairs on the diagonal
    true = s.diagonal(dim1=1, dim2=2)
    hits = {
        "brain_to_genetics": ((s >= true[:, :, None]).sum(2) == 1).double().mean(1),
        "genetics_to_brain": ((s >= true[:, None, :]).sum(1) == 1).double().mean(1),
    }
    out = {}
    for direction, per_repeat in hits.items():
        mean, lo, hi = normal_ci(per_repeat.cpu().numpy(), level)
        out[direction] = {
            "top1": mean,
            "ci_low": lo,
            "ci_high": hi,
            "chance": 1.0 / k,
            "k": k,
            "repeats": repeats,
        }
    return out


# ------------------------------------------------------------------------------------------------ report


@dataclass
class RetrievalReport:
    """Tidy records (direction, level, metric, value, ci_low, ci_high, chance, n_queries, n_candidates) and the
    0-based ranks per (direction, level)."""

    records: list[dict[str, Any]]
    ranks: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def flat(self, prefix: str = "") -> dict[str, float]:
        """MLflow-safe flat metrics: `<prefix>/<direction>[/<level>]/<metric>` plus `_ci_low`, `_ci_high`, `_chance`, `_p_value`
        (level omitted for recording-level), e.g. `brain_to_genetics/R_at_1`, `genetics_to_brain/subject/mrr_chance`."""
        return flatten_records(self.records, _record_name, ("ci_low", "ci_high", "chance", "p_value"), prefix=prefix)


def _record_name(record: dict[str, Any]) -> str:
    level = record["level"]
    return "/".join(
        p
        for p in (
            record.get("model"),
            record["direction"],
            None if level == "recording" else level,
            record["metric"],
        )
        if p
    )


def _side_codes(
    q: torch.Tensor, g: torch.Tensor, brain_subjects: Sequence[Any] | None, genetics_subjects: Sequence[Any] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Subject codes of both sides (rows are their own subjects, paired, when no labels are given)."""
    if (brain_subjects is None) != (genetics_subjects is None):
        raise AlignmentInputError("brain_subjects and genetics_subjects: pass both or neither")
    if brain_subjects is None:
        _check_pair(q, g, "brain", "genetics")
        return np.arange(q.shape[0]), np.arange(g.shape[0])
    if q.shape[1] != g.shape[1]:
        raise AlignmentInputError(f"brain has {q.shape[1]} dims but genetics has {g.shape[1]}")
    return _shared_codes(
        brain_subjects, genetics_subjects, q.shape[0], g.shape[0], "brain_subjects", "genetics_subjects"
    )


def _rank_records(
    ranks: np.ndarray,
    direction: str,
    level: str,
    n_candidates: int,
    n_positives: np.ndarray | int,
    ci: dict[str, tuple[float, float]],
    p_values: dict[str, float] | None,
    ks: Sequence[int],
) -> list[dict[str, Any]]:
    point = rank_metrics(ranks, ks)
    chance = chance_metrics(n_candidates, n_positives, ks)
    return [
        {
            "direction": direction,
            "level": level,
            "metric": name,
            "value": point[name],
            "ci_low": ci[name][0],
            "ci_high": ci[name][1],
            "chance": chance[name],
            "p_value": (p_values or {}).get(name, float("nan")),
            "n_queries": len(ranks),
            "n_candidates": n_candidates,
        }
        for name in metric_names(ks)
    ]


def _warn_small(n_subjects: int) -> None:
    if n_subjects < SMALL_N:
        warnings.warn(f"retrieval: only {n_subjects} subjects; intervals are wide, and bootstrap intervals are "
                      f"unreliable below {SMALL_N}", UserWarning, stacklevel=3)


def retrieval_report(
    brain: ArrayLike,
    genetics: ArrayLike,
    *,
    brain_subjects: Sequence[Any] | None = None,
    genetics_subjects: Sequence[Any] | None = None,
    ks: Sequence[int] = KS,
    kway: int | None = 300,
    kway_repeats: int = 30,
    n_boot: int = 1000,
    n_perm: int = 1000,
    strata: Sequence[Any] | None = None,
    clusters: Sequence[Any] | None = None,
    level: float = 0.95,
    seed: int = 0,
    normalize: bool = True,
    block_size: int = 1024,
    device: str | torch.device | None = None,
) -> RetrievalReport:
    """Brain->DNA and DNA->brain retrieval on held-out embeddings (cosine similarity when `normalize`).

    - recording level (rows paired: row i of `brain` <-> row i of `genetics`): computed when no subject labels are
      given, or when both label lists are equal row by row;
    - subject level (a hit is any item of the right subject): computed whenever labels are given;
    - `kway`-way top-1 over `kway_repeats` repeats (MindEye), skipped when `kway` is None.
    CIs (R@k, MRR, mean and median rank): the both-sides subject bootstrap of `alignment.intervals` (`n_boot`
    replicates, `seed`; subjects drawn once serve as queries and gallery, ranks recomputed in the resampled pool;
    `clusters` (families) resampled whole). p-values (`p_value`, row-paired levels): `n_perm` shuffles of the
    test pairing (`alignment.significance`), within `strata` (per row: e.g. site x ancestry cell) and moving whole
    `clusters`; 0 skips them. "Above chance" is `p_value < alpha`, never an interval's end.
    """
    q = as_embeddings(brain, "brain", normalize, device)
    g = as_embeddings(genetics, "genetics", normalize, q.device)
    b_codes, d_codes = _side_codes(q, g, brain_subjects, genetics_subjects)
    block = _check_block(block_size)
    if not ks or min(ks) < 1:
        raise AlignmentInputError(f"ks: expected positive integers, got {ks!r}")
    report = RetrievalReport(records=[])
    labelled = brain_subjects is not None
    paired = not labelled or (q.shape[0] == g.shape[0] and np.array_equal(b_codes, d_codes))
    if paired:
        fam = None if clusters is None else cluster_codes(clusters, q.shape[0], "clusters")
        _warn_small(q.shape[0] if fam is None else int(fam.max()) + 1)
        fwd, bwd = _pair_ranks(q, g, block)
        p_values = (retrieval_pvalues(q, g, ks=ks, n_perm=n_perm, strata=strata, clusters=clusters, seed=seed,
                                      block_size=block) if n_perm else {})
        for direction, ranks, (query, gallery) in zip(DIRECTIONS, (fwd, bwd), ((q, g), (g, q))):
            report.ranks[(direction, "recording")] = ranks
            ci = both_sides_intervals(query, gallery, b_codes, b_codes, ks=ks, n_boot=n_boot, level=level,
                                      seed=seed, families=fam, block_size=block)
            report.records += _rank_records(ranks, direction, "recording", len(ranks), 1, ci,
                                            p_values.get(direction), ks)
    if labelled:
        _shared_codes(genetics_subjects, brain_subjects, g.shape[0], q.shape[0], "genetics_subjects", "brain_subjects")
        if not paired:
            _warn_small(len(np.union1d(b_codes, d_codes)))
        sides = (("brain_to_genetics", q, g, b_codes, d_codes), ("genetics_to_brain", g, q, d_codes, b_codes))
        for direction, query, gallery, qc, gc in sides:
            ranks, n_pos = _positive_ranks(query, gallery, qc, gc, block)
            report.ranks[(direction, "subject")] = ranks
            ci = both_sides_intervals(query, gallery, qc, gc, ks=ks, n_boot=n_boot, level=level, seed=seed,
                                      block_size=block)
            report.records += _rank_records(ranks, direction, "subject", gallery.shape[0], n_pos, ci, None, ks)
    if kway is not None:
        for direction, res in _kway(q, g, b_codes, d_codes, kway, kway_repeats, seed, level).items():
            report.records.append(
                {
                    "direction": direction,
                    "level": f"{res['k']}way",
                    "metric": "top1",
                    "value": res["top1"],
                    "ci_low": res["ci_low"],
                    "ci_high": res["ci_high"],
                    "chance": res["chance"],
                    "n_queries": res["k"],
                    "n_candidates": res["k"],
                }
            )
    return report
