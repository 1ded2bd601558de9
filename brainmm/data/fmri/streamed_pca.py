"""PCA of rows that do not fit in memory (a float32 memory map): randomized SVD (Halko, Martinsson & Tropp 2011,
algorithm 4.4 with QR re-orthonormalisation) in row blocks, float64 arithmetic.

Every pass reads the rows once and does one BLAS product of each centred block with a thin [F, k + oversample]
or [block, k + oversample] matrix: 3 + 2 * n_iter passes in all, memory O((n + F) * (k + oversample) + block * F).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import linalg


def _blocks(features: np.ndarray, rows: np.ndarray, mean: np.ndarray | None,
            block: int) -> Iterator[tuple[slice, np.ndarray]]:
    """(position in `rows`, float64 rows, centred on `mean` when given) per block."""
    for start in range(0, len(rows), block):
        x = np.asarray(features[rows[start : start + block]], dtype=np.float64)
        if mean is not None:
            x -= mean
        yield slice(start, start + len(x)), x


def streamed_pca(features: np.ndarray, rows: np.ndarray, k: int, seed: int = 0, n_iter: int = 4,
                 oversample: int = 10, block: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [F], components [k, F], explained variance ratio [k]) of `features[rows]`, signs as sklearn's PCA
    (`svd_flip`, largest loading of each component positive)."""
    from sklearn.utils.extmath import svd_flip

    n, f = len(rows), features.shape[1]
    width = min(k + oversample, n, f)
    mean = np.zeros(f)
    for _, x in _blocks(features, rows, None, block):
        mean += x.sum(axis=0)
    mean /= n
    omega = np.random.default_rng(seed).standard_normal((f, width))
    y, total = np.empty((n, width)), 0.0
    for where, x in _blocks(features, rows, mean, block):
        y[where] = x @ omega
        total += float(np.einsum("ij,ij->", x, x))
    for _ in range(n_iter):  # power iterations: Q <- orth(A orth(A^T Q))
        q = linalg.qr(y, mode="economic")[0]
        z = np.zeros((f, width))
        for where, x in _blocks(features, rows, mean, block):
            z += x.T @ q[where]
        z = linalg.qr(z, mode="economic")[0]
        for where, x in _blocks(features, rows, mean, block):
            y[where] = x @ z
    q = linalg.qr(y, mode="economic")[0]
    b = np.zeros((width, f))
    for where, x in _blocks(features, rows, mean, block):
        b += q[where].T @ x
    u, s, vt = linalg.svd(b, full_matrices=False)
    u, vt = svd_flip(u, vt, u_based_decision=False)
    variance = s**2 / max(n - 1, 1)
    ratio = variance / (total / max(n - 1, 1)) if total > 0 else np.zeros_like(variance)
    return mean, vt[:k], ratio[:k]
