"""Which input features carry a brain-genetics link: structure coefficients, head weights, and cross-side link
scores on held-out pairs with bootstrap intervals, permutation p-values and Benjamini-Hochberg q-values, per
feature and per unit (parcels, genes: sparse membership matrices)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse, stats

from alignment.errors import AlignmentInputError

CHUNK_ELEMENTS = 4_000_000  # float64 elements of one [features, permutations x dims] work array


def _rows(x: Any, what: str) -> np.ndarray:
    """A finite float64 [n, d] array, or AlignmentInputError naming `what`."""
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim != 2 or 0 in x.shape:
        raise AlignmentInputError(f"{what}: expected a 2-D array [n >= 1, d >= 1], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise AlignmentInputError(f"{what}: contains NaN or inf")
    return x


def standardise(x: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit (population) SD; constant columns become 0."""
    c = x - x.mean(axis=0)
    sd = np.sqrt((c**2).mean(axis=0))
    return np.divide(c, sd, out=np.zeros_like(c), where=sd > 0)


def structure_coefficients(x: Any, z: Any) -> np.ndarray:
    """Pearson correlation of every column of `x` [n, p] with every column of `z` [n, k] (rows paired): [p, k]; a
    constant column correlates 0 with everything."""
    x, z = _rows(x, "structure_coefficients x"), _rows(z, "structure_coefficients z")
    if len(x) != len(z) or len(x) < 3:
        raise AlignmentInputError(f"structure_coefficients: expected >= 3 paired rows, got {len(x)} and {len(z)}")
    return standardise(x).T @ standardise(z) / len(x)


@torch.no_grad()
def affine_map(module: torch.nn.Module, in_dim: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(W [out, in], b [out]) with module(x) = W x + b, read off in float64 from the basis vectors (eval mode, the
    module's standardiser included); AlignmentInputError when the module is not affine (e.g. an MLP head)."""
    m = copy.deepcopy(module).to(torch.float64).eval()
    b = m(torch.zeros(1, in_dim, dtype=torch.float64))[0]
    cols = [(m(torch.eye(in_dim, dtype=torch.float64)[i:i + block]) - b).T for i in range(0, in_dim, block)]
    w = torch.cat(cols, dim=1)
    x = torch.randn(8, in_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = m(x)
    err = (out - (x @ w.T + b)).abs().max().item()
    if err > 1e-8 * max(1.0, out.abs().max().item()):
        raise AlignmentInputError(f"affine_map: the module is not affine (max deviation {err:.3g}); use "
                                  "gradient attributions (alignment.gradients) for nonlinear heads or towers")
    return w.numpy(), b.numpy()


def shared_directions(u_train: Any, v_train: Any, n_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Directions of the shared space ordered by their share of the training paired similarity mean_i <u_i, v_i>:
    eigenvectors of the symmetrised cross-product (u'v + v'u) / 2n of the training projections, at most `n_dims`
    with positive eigenvalue: (Q [dim, r], eigenvalues [r])."""
    u, v = _rows(u_train, "shared_directions u_train"), _rows(v_train, "shared_directions v_train")
    if u.shape != v.shape:
        raise AlignmentInputError(f"shared_directions: u_train {u.shape} and v_train {v.shape} differ")
    if n_dims < 1:
        raise AlignmentInputError(f"shared_directions n_dims: expected >= 1, got {n_dims}")
    c = (u.T @ v + v.T @ u) / (2 * len(u))
    values, vectors = np.linalg.eigh(c)
    order = np.argsort(values)[::-1][:n_dims]
    keep = order[values[order] > 1e-12 * max(1.0, abs(values).max())]
    if not len(keep):
        raise AlignmentInputError("shared_directions: no direction with a positive training paired similarity")
    return vectors[:, keep], values[keep]


@dataclass
class Scores:
    """Per feature or unit: link score, bootstrap CI, permutation p-value, BH q-value."""

    score: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    pvalue: np.ndarray  # (1 + #{permuted >= observed}) / (1 + n_permutations)
    qvalue: np.ndarray


def _score(xs: np.ndarray, zs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum_k w_k corr(x_j, z_k)^2 for standardised columns (rows paired)."""
    return ((xs.T @ zs / len(xs)) ** 2) @ w


def _membership(units: dict[str, Any] | None, p: int) -> dict[str, sparse.csr_matrix]:
    """Row-normalised membership matrices (a unit's score is the mean of its features' scores)."""
    out = {"features": sparse.identity(p, format="csr")}
    for name, m in (units or {}).items():
        m = sparse.csr_matrix(m, dtype=np.float64)
        if m.shape[1] != p:
            raise AlignmentInputError(f"link_scores units[{name!r}]: expected {p} columns (features), got {m.shape[1]}")
        size = np.asarray(m.sum(axis=1)).ravel()
        if (size <= 0).any():
            raise AlignmentInputError(f"link_scores units[{name!r}]: {int((size <= 0).sum())} units have no feature")
        out[name] = sparse.diags(1.0 / size) @ m
    return out


def link_scores(
    x: Any,
    partner: Any,
    weights: Any,
    units: dict[str, Any] | None = None,
    n_permutations: int = 10000,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Scores]:
    """How strongly each input feature of one side covaries with the other side's shared-space projection on
    held-out pairs: score_j = sum_k w_k corr(x_j, partner_k)^2 / sum_k w_k (`partner` [n, r]: the other side's
    projections on r shared directions, `weights` [r] >= 0, both fitted on train), for the features and for each
    unit set (`units[name]`: [n_units, p] membership; a unit's score is the mean of its features').

    p-values: the pairing permuted `n_permutations` times, (1 + #{permuted >= observed}) / (1 + n_permutations)
    (exact under "feature j independent of the other side"; the smallest is 1 / (1 + n_permutations), so BH over m
    features needs n_permutations well above m / fdr). q-values: Benjamini-Hochberg within each set. CIs:
    percentile bootstrap over the held-out pairs (`level`)."""
    x, z = _rows(x, "link_scores x"), _rows(partner, "link_scores partner")
    w = np.asarray(weights, dtype=np.float64).ravel()
    n, p = x.shape
    if len(z) != n or n < 4:
        raise AlignmentInputError(f"link_scores: expected >= 4 paired rows, got {n} (x) and {len(z)} (partner)")
    if w.shape != (z.shape[1],) or (w < 0).any() or w.sum() <= 0:
        raise AlignmentInputError(f"link_scores weights: expected {z.shape[1]} non-negative values, not all 0")
    if n_permutations < 1 or n_boot < 1 or not 0 < level < 1:
        raise AlignmentInputError("link_scores: n_permutations and n_boot >= 1, level in (0, 1)")
    w = w / w.sum()
    sets = _membership(units, p)
    xs, zs = standardise(x), standardise(z)
    observed = _score(xs, zs, w)
    obs = {k: m @ observed for k, m in sets.items()}
    rng = np.random.default_rng(seed)
    r = zs.shape[1]
    exceed = {k: np.zeros(len(v)) for k, v in obs.items()}
    chunk = max(1, min(n_permutations, CHUNK_ELEMENTS // max(1, p * r)))
    for start in range(0, n_permutations, chunk):
        c = min(chunk, n_permutations - start)
        perm = np.stack([rng.permutation(n) for _ in range(c)])  # [c, n]
        zcat = zs[perm].transpose(1, 0, 2).reshape(n, c * r)
        null = ((xs.T @ zcat / n) ** 2).reshape(p, c, r) @ w  # [p, c]
        for k, m in sets.items():
            s = m @ null
            tol = 1e-12 * np.maximum(np.abs(obs[k]), 1e-300)
            exceed[k] += (s >= (obs[k] - tol)[:, None]).sum(axis=1)
    boot = {k: np.empty((len(v), n_boot), dtype=np.float32) for k, v in obs.items()}  # CIs need no more digits
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        s = _score(standardise(x[idx]), standardise(z[idx]), w)
        for k, m in sets.items():
            boot[k][:, b] = m @ s
    alpha = (1 - level) / 2
    out: dict[str, Scores] = {}
    for k in sets:
        pvalue = (1 + exceed[k]) / (1 + n_permutations)
        low, high = np.quantile(boot[k], [alpha, 1 - alpha], axis=1)
        out[k] = Scores(obs[k], low, high, pvalue, bh_qvalues(pvalue))
    return out


def bh_qvalues(pvalues: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy.stats.false_discovery_control)."""
    p = np.asarray(pvalues, dtype=np.float64)
    return stats.false_discovery_control(np.clip(p, 0.0, 1.0), method="bh") if p.size else p


def units_from_labels(labels: list[Any]) -> tuple[list[Any], sparse.csr_matrix]:
    """(unit names in first-seen order, [n_units, p] 0/1 membership) from one label per feature (None/NaN: none)."""
    keep = [i for i, v in enumerate(labels) if v is not None and v == v]
    names = list(dict.fromkeys(labels[i] for i in keep))
    index = {v: i for i, v in enumerate(names)}
    rows = np.array([index[labels[i]] for i in keep], dtype=np.int64)
    return names, sparse.csr_matrix((np.ones(len(keep)), (rows, np.array(keep, dtype=np.int64))),
                                    shape=(len(names), len(labels)))


def units_from_members(members: list[Any], n_features: int) -> sparse.csr_matrix:
    """[n_units, n_features] 0/1 membership from the feature indices of each unit (e.g. the edges of a parcel)."""
    rows = np.repeat(np.arange(len(members)), [len(m) for m in members])
    cols = np.concatenate([np.asarray(m, dtype=np.int64) for m in members]) if members else np.zeros(0, np.int64)
    return sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(members), n_features))
