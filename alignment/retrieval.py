"""Cross-modal retrieval metrics (open_clip definitions) computed blockwise, never as an N x N matrix.

Ranks are 0-based ranks of the true item; ties count against it (pessimistic). Every metric comes with its
exact chance value for the pool size and a seeded cluster-bootstrap CI over query subjects; the MindEye
fixed-pool protocol (top-1 among K random candidates, repeated) is reported next to the full-pool metrics.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alignment.errors import AlignmentInputError
from alignment.stats import (
    bootstrap_weights,
    cluster_codes,
    flatten_records,
    normal_ci,
    percentile_ci,
    small_n_cis,
)

DIRECTIONS = ("brain_to_dna", "dna_to_brain")
KS = (1, 5, 10)
_MAX_ROW_BLOCK_ELEMENTS = 1 << 24  # subject-level path: [rows, N] float32 score blocks of <= 64 MB per worker

ArrayLike = np.ndarray | torch.Tensor | Sequence[Sequence[float]]


# ----------------------------------------------------------------------------------------------- inputs


def as_embeddings(
    x: ArrayLike, what: str, normalize: bool = True, device: str | torch.device | None = None
) -> torch.Tensor:
    """Contiguous float32 [n, dim] tensor (L2-normalised rows when `normalize`); raise naming `what` on bad input."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.from_numpy(np.asarray(x, dtype=np.float32))
        except (TypeError, ValueError) as err:
            raise AlignmentInputError(
                f"{what} embeddings: expected a numeric [n, dim] array ({err})"
            ) from None
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise AlignmentInputError(
            f"{what} embeddings: expected a 2-D array [n >= 1, dim >= 1], got shape {tuple(t.shape)}"
        )
    t = t.to(device=device if device is not None else t.device, dtype=torch.float32)
    bad = (~torch.isfinite(t).all(dim=1)).nonzero().flatten()
    if len(bad):
        raise AlignmentInputError(
            f"{what} embeddings: {len(bad)} of {t.shape[0]} rows contain NaN or inf (first rows {bad[:5].tolist()})"
        )
    if normalize:
        norms = torch.linalg.vector_norm(t, dim=1, keepdim=True)
        zero = (norms.flatten() == 0).nonzero().flatten()
        if len(zero):
            raise AlignmentInputError(
                f"{what} embeddings: {len(zero)} rows have zero norm (first rows {zero[:5].tolist()}); cosine "
                "similarity is undefined for them (pass normalize=False to rank by dot product)"
            )
        t = t / norms
    return t.contiguous()


def check_no_leakage(
    query_ids: Sequence[Any],
    query_splits: Sequence[Any],
    gallery_ids: Sequence[Any] | None = None,
    gallery_splits: Sequence[Any] | None = None,
) -> None:
    """Raise AlignmentInputError naming the subject ids that carry more than one split label (either side)."""
    ids, splits = [np.asarray(query_ids, dtype=object)], [np.asarray(query_splits, dtype=object)]
    if (gallery_ids is None) != (gallery_splits is None):
        raise AlignmentInputError("check_no_leakage: pass gallery_ids and gallery_splits together")
    if gallery_ids is not None:
        ids.append(np.asarray(gallery_ids, dtype=object))
        splits.append(np.asarray(gallery_splits, dtype=object))
    for i, s in zip(ids, splits):
        if i.shape != s.shape or i.ndim != 1:
            raise AlignmentInputError(
                f"check_no_leakage: {i.shape} ids for {s.shape} split labels (expected 1-D, equal length)"
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


# ------------------------------------------------------------------------------------- blockwise ranks


@functools.cache
def _onednn_linear() -> bool:
    """Whether oneDNN's fp32 linear is usable (about twice MKL sgemm's speed on AVX-512 CPUs)."""
    try:
        one = torch.ones(1, 1)
        return bool(torch.ops.mkldnn._linear_pointwise(one, one, None, "none", [], "").item() == 1.0)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T in float32 (both [rows, dim], contiguous)."""
    if a.device.type == "cpu" and _onednn_linear():
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return a @ b.T


def _count_rows(mask: torch.Tensor) -> torch.Tensor:
    """Row sums of a contiguous bool [r, c] mask as int64; 8 flags per int64 word when c % 1024 == 0."""
    r, c = mask.shape
    if c % 1024:
        return mask.sum(1)
    words = mask.view(torch.int64).view(r, c // 1024, 128).sum(2)  # every byte lane holds <= 128
    return words.view(torch.uint8).sum(1, dtype=torch.int64)


def _count_cols(mask: torch.Tensor) -> torch.Tensor:
    """Column sums of a contiguous bool [r, c] mask as int64; packed when r % 128 == 0 and c % 8 == 0."""
    r, c = mask.shape
    if r % 128 or c % 8:
        return mask.sum(0)
    words = mask.view(torch.int64).view(r // 128, 128, c // 8).sum(1)  # every byte lane holds <= 128
    return words.view(torch.uint8).view(r // 128, c).sum(0, dtype=torch.int64)


def _map(fn: Callable[[Any], None], items: Sequence[Any], device: torch.device) -> None:
    """Run `fn` over `items`; on CPU in torch.get_num_threads() worker threads whose ops are single-threaded.

    Independent workers keep every core busy without OpenMP barriers inside each small op, which stall badly
    when other processes share the cores (measured 2-3x faster on a loaded 2-core machine).
    """
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    if workers == 1 or len(items) == 1:
        for item in items:
            fn(item)
        return
    torch.set_num_threads(1)  # new worker threads start their OpenMP pools with this count
    try:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(fn, items):
                pass
    finally:
        torch.set_num_threads(workers)


def _pair_ranks(q: torch.Tensor, g: torch.Tensor, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Both directions from one pass of square [block, block] score tiles (see `pair_ranks`)."""
    n = q.shape[0]
    spans = [(a, min(a + block, n)) for a in range(0, n, block)]
    true = torch.empty(n, device=q.device)
    fwd = torch.zeros(n, dtype=torch.int64, device=q.device)
    bwd = torch.zeros_like(fwd)
    lock = threading.Lock()
    size = min(block, n) ** 2

    def counts(
        a: tuple[int, int], b: tuple[int, int], s: torch.Tensor, flags: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = flags[: s.numel()].view(s.shape)
        rows = _count_rows(torch.ge(s, true[a[0] : a[1], None], out=mask))
        return rows, _count_cols(torch.ge(s, true[None, b[0] : b[1]], out=mask))

    def diagonal(a: tuple[int, int]) -> None:
        # Diagonal tiles first: they hold the true-pair scores, taken from the same matmul as the competitors.
        s = _scores(q[a[0] : a[1]], g[a[0] : a[1]])
        diag = s.diagonal()
        true[a[0] : a[1]] = diag
        diag.fill_(float("-inf"))  # the true pair never competes with itself
        rows, cols = counts(a, a, s, torch.empty(size, dtype=torch.bool, device=q.device))
        fwd[a[0] : a[1]] += rows
        bwd[a[0] : a[1]] += cols

    def off_diagonal(a: tuple[int, int]) -> None:
        flags = torch.empty(size, dtype=torch.bool, device=q.device)
        row_total = torch.zeros(a[1] - a[0], dtype=torch.int64, device=q.device)
        for b in spans:
            if b != a:
                rows, cols = counts(a, b, _scores(q[a[0] : a[1]], g[b[0] : b[1]]), flags)
                row_total += rows
                with lock:
                    bwd[b[0] : b[1]] += cols
        fwd[a[0] : a[1]] += row_total

    _map(diagonal, spans, q.device)
    _map(off_diagonal, spans, q.device)
    return fwd.cpu().numpy(), bwd.cpu().numpy()


def pair_ranks(
    query: ArrayLike,
    gallery: ArrayLike,
    *,
    normalize: bool = True,
    block_size: int = 1024,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the true pair (row i <-> row i) in both directions: (query->gallery, gallery->query).

    forward[i] = #{j != i : s(q_i, g_j) >= s(q_i, g_i)} and backward[j] = #{i != j : s(q_i, g_j) >= s(q_j, g_j)}:
    a candidate scoring exactly the true score counts as ranked above it (pessimistic ties). One matmul serves
    both directions; memory is O(block_size^2), never N x N.
    """
    q = as_embeddings(query, "query", normalize, device)
    g = as_embeddings(gallery, "gallery", normalize, q.device)
    _check_pair(q, g, "query", "gallery")
    return _pair_ranks(q, g, _check_block(block_size))


def _positive_ranks(
    q: torch.Tensor, g: torch.Tensor, q_codes: np.ndarray, g_codes: np.ndarray, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the best positive among the negatives, and the number of positives per query."""
    n_codes = int(max(q_codes.max(), g_codes.max())) + 1
    counts = np.bincount(g_codes, minlength=n_codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order = np.argsort(g_codes, kind="stable")
    n_pos = counts[q_codes]
    width = int(n_pos.max())
    offsets = np.minimum(np.arange(width)[None, :], n_pos[:, None] - 1)  # pad by repeating the last positive
    positives = torch.from_numpy(order[starts[q_codes][:, None] + offsets]).to(q.device)
    valid = torch.from_numpy(np.arange(width)[None, :] < n_pos[:, None]).to(q.device)

    n, n_gal = q.shape[0], g.shape[0]
    pad = -n_gal % 1024  # zero rows so every score row is a whole number of packed words
    g_padded = torch.cat([g, g.new_zeros(pad, g.shape[1])]) if pad else g
    rows = max(1, min(block, _MAX_ROW_BLOCK_ELEMENTS // (n_gal + pad)))
    ranks = torch.empty(n, dtype=torch.int64, device=q.device)

    def row_block(a: int) -> None:
        b = min(a + rows, n)
        s = _scores(q[a:b], g_padded)
        if pad:
            s[:, n_gal:] = float("-inf")
        pos = s.gather(1, positives[a:b])
        best = pos.max(1, keepdim=True).values
        tied_positives = ((pos == best) & valid[a:b]).sum(1)
        ranks[a:b] = _count_rows(s >= best) - tied_positives

    _map(row_block, range(0, n, rows), q.device)
    return ranks.cpu().numpy(), n_pos


def positive_ranks(
    query: ArrayLike,
    gallery: ArrayLike,
    query_labels: Sequence[Any],
    gallery_labels: Sequence[Any],
    *,
    normalize: bool = True,
    block_size: int = 1024,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Subject-level 0-based ranks: for each query, the number of gallery items with ANOTHER label scoring at least
    as high as the best-scoring item with the query's label (= the best rank among the true subject's items, the
    true subject's other items not counted as competitors; ties pessimistic). Returns (ranks, positives per query).
    """
    q = as_embeddings(query, "query", normalize, device)
    g = as_embeddings(gallery, "gallery", normalize, q.device)
    if q.shape[1] != g.shape[1]:
        raise AlignmentInputError(f"query has {q.shape[1]} dims but gallery has {g.shape[1]}")
    q_codes, g_codes = _shared_codes(
        query_labels, gallery_labels, q.shape[0], g.shape[0], "query_labels", "gallery_labels"
    )
    return _positive_ranks(q, g, q_codes, g_codes, _check_block(block_size))


def _check_pair(q: torch.Tensor, g: torch.Tensor, qn: str, gn: str) -> None:
    if q.shape != g.shape:
        raise AlignmentInputError(
            f"{qn} {tuple(q.shape)} and {gn} {tuple(g.shape)}: row-paired retrieval needs the same shape "
            "(pass subject labels for subject-level retrieval between sets of different sizes)"
        )


def _check_block(block_size: int) -> int:
    if not isinstance(block_size, int) or block_size < 1:
        raise AlignmentInputError(f"block_size: expected a positive integer, got {block_size!r}")
    return block_size


def _shared_codes(
    a: Sequence[Any], b: Sequence[Any], n_a: int, n_b: int, a_name: str, b_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Labels of both sides mapped to one integer code space; every `a` label must occur in `b`."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != (n_a,) or b.shape != (n_b,):
        raise AlignmentInputError(
            f"{a_name} / {b_name}: expected {n_a} and {n_b} labels, got shapes {a.shape} and {b.shape}"
        )
    uniq, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    a_codes, b_codes = inverse[:n_a], inverse[n_a:]
    missing = np.setdiff1d(a_codes, b_codes)
    if len(missing):
        raise AlignmentInputError(
            f"{a_name}: {len(missing)} subjects have no item in {b_name} (e.g. {uniq[missing[:5]].tolist()}); "
            "every query needs its partner in the gallery"
        )
    return a_codes, b_codes


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
    cluster when None). Vectorised over replicates: the ranks are resampled, never recomputed."""
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
    dna: ArrayLike,
    *,
    k: int = 300,
    repeats: int = 30,
    brain_subjects: Sequence[Any] | None = None,
    dna_subjects: Sequence[Any] | None = None,
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
    g = as_embeddings(dna, "dna", normalize, q.device)
    b_codes, d_codes = _side_codes(q, g, brain_subjects, dna_subjects)
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
        "brain_to_dna": ((s >= true[:, :, None]).sum(2) == 1).double().mean(1),
        "dna_to_brain": ((s >= true[:, None, :]).sum(1) == 1).double().mean(1),
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
        """MLflow-safe flat metrics: `<prefix>/<direction>[/<level>]/<metric>` plus `_ci_low`, `_ci_high`, `_chance`
        (level omitted for recording-level), e.g. `brain_to_dna/R_at_1`, `dna_to_brain/subject/mrr_chance`."""
        return flatten_records(self.records, _record_name, prefix=prefix)


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
    q: torch.Tensor, g: torch.Tensor, brain_subjects: Sequence[Any] | None, dna_subjects: Sequence[Any] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Subject codes of both sides (rows are their own subjects, paired, when no labels are given)."""
    if (brain_subjects is None) != (dna_subjects is None):
        raise AlignmentInputError("brain_subjects and dna_subjects: pass both or neither")
    if brain_subjects is None:
        _check_pair(q, g, "brain", "dna")
        return np.arange(q.shape[0]), np.arange(g.shape[0])
    if q.shape[1] != g.shape[1]:
        raise AlignmentInputError(f"brain has {q.shape[1]} dims but dna has {g.shape[1]}")
    return _shared_codes(
        brain_subjects, dna_subjects, q.shape[0], g.shape[0], "brain_subjects", "dna_subjects"
    )


def _rank_records(
    ranks: np.ndarray,
    direction: str,
    level: str,
    n_candidates: int,
    n_positives: np.ndarray | int,
    clusters: np.ndarray,
    ks: Sequence[int],
    n_boot: int,
    seed: int,
    ci_level: float,
) -> list[dict[str, Any]]:
    point = rank_metrics(ranks, ks)
    chance = chance_metrics(n_candidates, n_positives, ks)
    ci = bootstrap_rank_metrics(ranks, clusters, ks, n_boot, seed, ci_level)
    return [
        {
            "direction": direction,
            "level": level,
            "metric": name,
            "value": point[name],
            "ci_low": ci[name][0],
            "ci_high": ci[name][1],
            "chance": chance[name],
            "n_queries": len(ranks),
            "n_candidates": n_candidates,
        }
        for name in metric_names(ks)
    ]


def retrieval_report(
    brain: ArrayLike,
    dna: ArrayLike,
    *,
    brain_subjects: Sequence[Any] | None = None,
    dna_subjects: Sequence[Any] | None = None,
    ks: Sequence[int] = KS,
    kway: int | None = 300,
    kway_repeats: int = 30,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    normalize: bool = True,
    block_size: int = 1024,
    device: str | torch.device | None = None,
) -> RetrievalReport:
    """Brain->DNA and DNA->brain retrieval on held-out embeddings (cosine similarity when `normalize`).

    - recording level (rows paired: row i of `brain` <-> row i of `dna`): computed when no subject labels are
      given, or when both label lists are equal row by row;
    - subject level (a hit is any item of the right subject): computed whenever labels are given;
    - `kway`-way top-1 over `kway_repeats` repeats (MindEye), skipped when `kway` is None.
    CIs: percentile bootstrap over query subjects (`n_boot` replicates, `seed`).
    """
    q = as_embeddings(brain, "brain", normalize, device)
    g = as_embeddings(dna, "dna", normalize, q.device)
    b_codes, d_codes = _side_codes(q, g, brain_subjects, dna_subjects)
    block = _check_block(block_size)
    if not ks or min(ks) < 1:
        raise AlignmentInputError(f"ks: expected positive integers, got {ks!r}")
    report = RetrievalReport(records=[])
    labelled = brain_subjects is not None
    if not labelled or (q.shape[0] == g.shape[0] and np.array_equal(b_codes, d_codes)):
        fwd, bwd = _pair_ranks(q, g, block)
        for direction, ranks in zip(DIRECTIONS, (fwd, bwd)):
            report.ranks[(direction, "recording")] = ranks
            report.records += _rank_records(
                ranks, direction, "recording", len(ranks), 1, b_codes, ks, n_boot, seed, level
            )
    if labelled:
        _shared_codes(dna_subjects, brain_subjects, g.shape[0], q.shape[0], "dna_subjects", "brain_subjects")
        sides = (("brain_to_dna", q, g, b_codes, d_codes), ("dna_to_brain", g, q, d_codes, b_codes))
        for direction, query, gallery, qc, gc in sides:
            ranks, n_pos = _positive_ranks(query, gallery, qc, gc, block)
            report.ranks[(direction, "subject")] = ranks
            report.records += _rank_records(
                ranks, direction, "subject", gallery.shape[0], n_pos, qc, ks, n_boot, seed, level
            )
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
