"""Blockwise 0-based ranks of the true items (pessimistic ties), never materialising an N x N score matrix."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from alignment.errors import AlignmentInputError

ArrayLike = np.ndarray | torch.Tensor | Sequence[Sequence[float]]
_MAX_ROW_BLOCK_ELEMENTS = 1 << 24  # subject-level path: [rows, N] float32 score blocks of <= 64 MB per worker


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
