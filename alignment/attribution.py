"""Which input features carry a brain-genetics link: structure coefficients, head weights, and cross-side
contributions or link scores on held-out pairs with bootstrap intervals, permutation p-values and Benjamini-Hochberg
q-values, per feature and per unit (parcels, genes: sparse membership matrices)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse, stats

from alignment.errors import AlignmentInputError

CHUNK_ELEMENTS = 16_000_000  # float64 elements of one [features, permutations x dims] work array
# a unit's null needs every member feature's null score in each permutation (a parcel's 423 edges: all 89,676 edges
# for 424 parcels), so units stop here rather than at n_permutations (BH over 424 parcels: p_min 1e-4 suffices)
UNIT_PERMUTATIONS = 10_000
NULL_DTYPE = np.float32  # the permutations' products (undecided comparisons are redone in float64)
# chance, per table (features, or one unit set) over all its rows and checks, that a row stopped as significant
# reports a p below its exact permutation p-value (the Clopper-Pearson level is spent over rows and checks)
SETTLE_RISK = 1e-3
SETTLE_GROWTH = 1.25  # the BH decisions are checked at permutations 64, x1.25, x1.25^2, ...


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
    sd = np.sqrt(np.einsum("ij,ij->j", c, c) / len(c))
    c /= np.where(sd > 0, sd, np.inf)  # in place: one [n, p] copy at most
    return c


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
    """Per feature or unit: score, bootstrap CI, permutation p-value, BH q-value."""

    score: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    pvalue: np.ndarray  # permutation p-value (link_scores: sequential; settled-significant ones an upper bound)
    qvalue: np.ndarray


@dataclass
class _Statistic:
    """A feature's score from its cross-moments m [features, draws, r] with the partner's columns: the link score
    sum_k w_k corr_k^2 (`loadings` None; standardised columns) or the contribution sum_k L_jk cov_k (L: loadings)."""

    w: np.ndarray  # [r], sums to 1
    loadings: np.ndarray | None = None  # [p, r]

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Columns standardised (link) or centred (contribution)."""
        return standardise(x) if self.loadings is None else x - x.mean(axis=0)

    def __call__(self, m: np.ndarray, cols: Any = slice(None)) -> np.ndarray:
        if self.loadings is None:
            return (m**2) @ self.w
        return np.einsum("jcr,jr->jc", m, self.loadings[cols])

    def null_columns(self, z: np.ndarray) -> np.ndarray:
        """The partner's columns the permutations use: scaled by sqrt(w_k) for the link score, so that a score is
        one sum of squares sum_k m_k^2 (_null_bound); as they are for contributions."""
        return z if self.loadings is not None else z * np.sqrt(self.w)


def _moment_error(x_norm: np.ndarray, z_norm: np.ndarray, n: int, dtype: Any) -> np.ndarray:
    """[features, r] bound on |computed - exact| of x_j'z_k / n in `dtype`, for any summation order: gamma ||x|| ||z||
    / n with gamma = (n + 3) u / (1 - (n + 3) u), the inputs' rounding and the division included (Higham, Accuracy
    and Stability of Numerical Algorithms, 3.1)."""
    u = np.finfo(dtype).eps / 2
    return (n + 3) * u / (1 - (n + 3) * u) * x_norm[:, None] * z_norm[None] / n


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
    weights: Any = None,
    units: dict[str, Any] | None = None,
    n_permutations: int = 10000,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    stop_after: int = 10,
    loadings: Any = None,
    fdr: float | None = None,
) -> dict[str, Scores]:
    """How strongly each input feature of one side carries the link to the other side's shared-space projection on
    held-out pairs (`partner` [n, r]: the other side's projections on r shared directions, fitted on train), for
    the features and for each unit set (`units[name]`: [n_units, p] membership; a unit's score is the mean of its
    features'). One of two statistics:
      - `loadings` [p, r] (the feature's weights in this side's linear map onto the same r directions): its
        contribution to the held-out paired similarity, score_j = sum_k L_jk cov(x_j, partner_k); the scores sum to
        the centred held-out paired similarity on the r directions, so a feature in LD with a causal one but with
        little weight of its own scores little;
      - otherwise the link score sum_k w_k corr(x_j, partner_k)^2 / sum_k w_k (`weights` [r] >= 0): a marginal
        association, for inputs without a linear map.

    p-values (one-sided: the score is large): the pairing permuted up to `n_permutations` times, sequentially
    (Besag & Clifford 1991): a feature or unit stops at the permutation L where its null score reaches the observed
    one for the `stop_after`-th time, p = stop_after / L; one that never does gets (1 + #{permuted >= observed}) /
    (1 + n_permutations). Both are valid p-values; clearly null features stop after a few dozen shuffles, so the
    cost follows the few with small p (`stop_after` 0: every feature sees every permutation). The smallest p is
    1 / (1 + n_permutations), so BH over m features needs n_permutations well above m / fdr. With `fdr`, a feature
    or unit also stops once its BH decision at that level is settled (Gandy & Hahn 2014, MMCTest's rejection side):
    at checks on a geometric schedule, every undecided one is set to the Clopper-Pearson upper bound of its exact
    permutation p (level SETTLE_RISK spent over the set and the checks), and those BH still rejects stop with that
    bound as their p. With probability >= 1 - SETTLE_RISK every such p is >= the exact permutation p, so they stay
    valid; strong features stop after ~ log(m / SETTLE_RISK) / threshold permutations instead of n_permutations.
    q-values: Benjamini-Hochberg within each set. CIs: percentile bootstrap over the held-out pairs (`level`)."""
    x, z = _rows(x, "link_scores x"), _rows(partner, "link_scores partner")
    n, p = x.shape
    r = z.shape[1]
    if len(z) != n or n < 4:
        raise AlignmentInputError(f"link_scores: expected >= 4 paired rows, got {n} (x) and {len(z)} (partner)")
    if loadings is not None:
        loadings = _rows(loadings, "link_scores loadings")
        if loadings.shape != (p, r):
            raise AlignmentInputError(f"link_scores loadings: expected [{p}, {r}] (features x partner columns), got "
                                      f"{list(loadings.shape)}")
        w = np.full(r, 1.0 / r)
    else:
        w = np.asarray(weights if weights is not None else [], dtype=np.float64).ravel()
        if w.shape != (r,) or (w < 0).any() or w.sum() <= 0:
            raise AlignmentInputError(f"link_scores weights: expected {r} non-negative values, not all 0")
    if n_permutations < 1 or n_boot < 1 or not 0 < level < 1 or stop_after < 0 or (
            fdr is not None and not 0 < fdr < 1):
        raise AlignmentInputError("link_scores: n_permutations and n_boot >= 1, stop_after >= 0, level and fdr in "
                                  "(0, 1)")
    stat = _Statistic(w / w.sum(), loadings)
    sets = _membership(units, p)
    xs, zs = stat.prepare(x), stat.prepare(z)
    moments = (xs.T @ zs / n)[:, None, :]
    observed = stat(moments)[:, 0]
    obs = {k: m @ observed for k, m in sets.items()}
    # a permuted score within two float64 error bounds of the observed one is a tie (discrete dosages tie exactly)
    x_norm = np.sqrt(np.einsum("ij,ij->j", xs, xs))
    z_norm = np.linalg.norm(stat.null_columns(zs), axis=0)
    tie = 2 * _null_bound(observed[:, None], x_norm, z_norm, n, np.float64, loadings)[:, 0]
    tol = {k: m @ tie + 1e-12 * np.abs(obs[k]) for k, m in sets.items()}
    rng = np.random.default_rng(seed)
    boot = _bootstrap_scores(xs, zs, stat, sets, n_boot, rng)
    box = [xs]  # handed over: the permutations re-slice the columns they still need and drop the rest
    del xs
    pvalues = _sequential_pvalues(box, x_norm, zs, stat, sets, obs, tol, n_permutations, stop_after, rng, fdr)
    alpha = (1 - level) / 2
    out: dict[str, Scores] = {}
    for k in sets:
        low, high = np.quantile(boot[k], [alpha, 1 - alpha], axis=1)
        out[k] = Scores(obs[k], low, high, pvalues[k], bh_qvalues(pvalues[k]))
    return out


def _sequential_pvalues(box: list[np.ndarray], x_norm: np.ndarray, zs: np.ndarray, stat: _Statistic,
                        sets: dict[str, sparse.csr_matrix], obs: dict[str, np.ndarray], tol: dict[str, np.ndarray],
                        n_permutations: int, stop_after: int, rng: np.random.Generator,
                        fdr: float | None = None) -> dict[str, np.ndarray]:
    """Permutation p-values of every feature and unit (link_scores), computing null scores only for the features
    still needed: those not yet stopped and the members of units not yet stopped (`box`: [prepared x], taken over so
    that its columns can be freed; a permuted score >= observed - tol is a hit). The null cross-moments are float32
    products (half the time of float64) with a rigorous error bound; a comparison the bound leaves undecided is
    redone in float64, so every count equals the float64 one."""
    x_cols = box.pop()
    n, p = x_cols.shape
    r = zs.shape[1]
    x32 = x_cols.astype(NULL_DTYPE)
    z_null = stat.null_columns(zs)
    z_norm = np.linalg.norm(z_null, axis=0)
    zs32 = z_null.astype(NULL_DTYPE)
    l32 = None if stat.loadings is None else stat.loadings.astype(NULL_DTYPE)
    exceed = {k: np.zeros(len(v), dtype=np.int64) for k, v in obs.items()}
    pvalue = {k: np.full(len(v), np.nan) for k, v in obs.items()}
    active = {k: np.ones(len(v), dtype=bool) for k, v in obs.items()}
    cols = np.arange(p)  # the features whose null scores are computed (a superset of those needed)
    unit_cap = min(n_permutations, UNIT_PERMUTATIONS)
    caps = {k: n_permutations if k == "features" else unit_cap for k in sets}
    done, checks, next_check = 0, 0, 64
    while done < n_permutations and any(a.any() for a in active.values()):
        for k in sets:  # units (parcels, genes) see exactly unit_cap permutations at most: their members are most features
            if k != "features" and done >= unit_cap:
                active[k][:] = False
        units_on = any(active[k].any() for k in sets if k != "features")
        need = active["features"].copy()
        for k, m in sets.items():
            if k != "features" and active[k].any():
                need |= np.asarray(abs(m[np.flatnonzero(active[k])]).sum(axis=0)).ravel() > 0
        if need.sum() < 0.8 * len(cols):  # re-slice once the needed columns have shrunk enough to pay for the copy
            keep = need[cols]
            cols, x_cols, x32, x_norm = cols[keep], x_cols[:, keep], x32[:, keep], x_norm[keep]
        c = max(1, min((unit_cap if units_on else n_permutations) - done, CHUNK_ELEMENTS // max(1, len(cols) * r),
                       next_check - done if fdr is not None else n_permutations))
        perm = np.stack([rng.permutation(n) for _ in range(c)])  # [c, n]
        zcat = zs32[perm].transpose(1, 0, 2).reshape(n, c * r)
        m = x32.T @ zcat
        m *= x32.dtype.type(1 / n)
        m = m.reshape(len(cols), c, r)
        null = np.einsum("jcr,jcr->jc", m, m) if l32 is None else np.einsum("jcr,jr->jc", m, l32[cols])
        null = null.astype(np.float64)  # [cols, c]
        bound = _null_bound(null, x_norm, z_norm, n, x32.dtype, None if l32 is None else stat.loadings[cols])
        where = np.full(p, -1, dtype=np.int64)
        where[cols] = np.arange(len(cols))
        for k, m in sets.items():
            rows = np.flatnonzero(active[k])
            if not len(rows):
                continue
            mk = None if k == "features" else m[rows][:, cols]
            s, b = (null[where[rows]], bound[where[rows]]) if mk is None else (mk @ null, mk @ bound)
            threshold = (obs[k][rows] - tol[k][rows])[:, None]
            unsure = np.abs(s - threshold) <= b + tol[k][rows][:, None]
            if unsure.any():
                s = _exact(s, unsure, mk, where[rows], x_cols, zs, perm, stat, cols)
            hits = np.cumsum(s >= threshold, axis=1) + exceed[k][rows][:, None]
            exceed[k][rows] = hits[:, -1]
            if stop_after:
                stop = hits[:, -1] >= stop_after
                at = done + np.argmax(hits[stop] >= stop_after, axis=1) + 1  # the permutation of the last hit
                pvalue[k][rows[stop]] = stop_after / at
                active[k][rows[stop]] = False
        done += c
        if fdr is not None and done >= next_check:
            checks += 1
            next_check = int(np.ceil(done * SETTLE_GROWTH))
            for k in sets:
                _settle(pvalue[k], active[k], exceed[k], done, caps[k], fdr, checks)
    for k in sets:
        rest = np.isnan(pvalue[k])
        pvalue[k][rest] = (1 + exceed[k][rest]) / (1 + caps[k])
    return pvalue


def _settle(pvalue: np.ndarray, active: np.ndarray, exceed: np.ndarray, done: int, cap: int, fdr: float,
            check: int) -> None:
    """Stop (in place) the active rows whose BH rejection at `fdr` no longer depends on more permutations: with
    every active row at the Clopper-Pearson upper bound of its exact p (hits `exceed` in `done` draws; level
    SETTLE_RISK / (rows x pi^2/6 x check^2)), BH still rejects them; their p is that bound."""
    rows = np.flatnonzero(active)
    if not len(rows):
        return
    risk = SETTLE_RISK / len(pvalue) * 6 / (np.pi**2 * check**2)
    h = exceed[rows]
    upper = np.where(h < done, stats.beta.isf(risk, h + 1, np.maximum(done - h, 1)), 1.0)
    p = np.where(np.isnan(pvalue), (1 + exceed) / (1 + cap), pvalue)  # stopped: as reported; capped units: final
    p[rows] = upper
    settled = rows[bh_qvalues(p)[rows] <= fdr]
    pvalue[settled] = upper[np.isin(rows, settled)]
    active[settled] = False


def _null_bound(null: np.ndarray, x_norm: np.ndarray, z_norm: np.ndarray, n: int, dtype: Any,
                loadings: np.ndarray | None) -> np.ndarray:
    """Bound on |score - exact| ([features, draws] or [features, 1]) for scores from `dtype` cross-moments m_k
    (error <= delta_jk = a_j z_norm_k, _moment_error) and `dtype` arithmetic: link scores sum_k m_k^2 (partner columns
    pre-scaled by sqrt(w_k)): sum_k delta_k (2 |m_k| + delta_k) <= 2 a ||z_norm|| sqrt(null) + a^2 ||z_norm||^2 (Cauchy-
    Schwarz), plus (r + 2) u null for the sum of r squares; contributions sum_k L_jk m_k: a sum_k |L_jk| z_norm_k,
    plus (r + 1) u sum_k |L_jk| |m_k| with |m_k| <= ||x_j|| z_norm_k / n. The margin (1e-5) covers second-order
    terms and the float64 arithmetic of the bound."""
    r = len(z_norm)
    u = np.finfo(dtype).eps / 2
    a = _moment_error(x_norm, np.ones(1), n, dtype)[:, 0]  # [features]
    if loadings is None:
        b = np.sqrt(z_norm @ z_norm)
        out = 2 * (a * b)[:, None] * np.sqrt(null * (1 + (r + 2) * u)) + ((a * b) ** 2)[:, None] + (r + 2) * u * null
    else:
        l1 = np.abs(loadings) @ z_norm
        out = ((a + (r + 1) * u * x_norm / n) * l1)[:, None]
    return out * (1 + 1e-5)


def _exact(s: np.ndarray, unsure: np.ndarray, mk: sparse.csr_matrix | None, local: np.ndarray, x_cols: np.ndarray,
           zs: np.ndarray, perm: np.ndarray, stat: _Statistic, cols: np.ndarray) -> np.ndarray:
    """`s` [rows, c] with the `unsure` entries recomputed in float64 (rows: features at `local` columns of x_cols,
    or units `mk` [rows, cols] over them), one product per permutation."""
    s = s.copy()
    n = len(zs)
    for j in np.flatnonzero(unsure.any(axis=0)):
        rows = np.flatnonzero(unsure[:, j])
        if mk is None:
            need = local[rows]
        else:
            need = np.unique(mk[rows].indices)
        exact = stat((x_cols[:, need].T @ zs[perm[j]] / n)[:, None, :], cols[need])[:, 0]
        if mk is None:
            s[rows, j] = exact
        else:
            s[rows, j] = mk[rows][:, need] @ exact
    return s


def _bootstrap_scores(xs: np.ndarray, zs: np.ndarray, stat: _Statistic, sets: dict[str, sparse.csr_matrix],
                      n_boot: int, rng: np.random.Generator, batch: int = 32) -> dict[str, np.ndarray]:
    """Scores of `n_boot` bootstrap resamples of the paired rows, as weighted moments of the prepared rows with
    multinomial counts: no resampled copy of x, column blocks bounded by CHUNK_ELEMENTS."""
    n, p = xs.shape
    r = zs.shape[1]
    boot = {k: np.empty((m.shape[0], n_boot), dtype=np.float32) for k, m in sets.items()}  # CIs need no more digits
    block = max(1, CHUNK_ELEMENTS // max(1, n))
    for b0 in range(0, n_boot, batch):
        nb = min(batch, n_boot - b0)
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(nb)], axis=1) / n
        zm = zs.T @ counts  # [r, nb] weighted means of z
        zv = (zs**2).T @ counts - zm**2
        zw = (counts[:, :, None] * zs[:, None, :]).reshape(n, nb * r)  # [n, nb x r]
        scores = np.empty((p, nb))
        for j0 in range(0, p, block):
            xb = xs[:, j0:j0 + block]
            xm = xb.T @ counts  # [cols, nb]
            xv = (xb**2).T @ counts - xm**2
            cov = (xb.T @ zw).reshape(xb.shape[1], nb, r) - xm[:, :, None] * zm.T[None]
            if stat.loadings is None:  # correlations: a resampled variance at rounding level (<= 1e-10) -> 0
                sx = np.where(xv > 1e-10, np.sqrt(np.maximum(xv, 1e-10)), np.inf)
                sz = np.where(zv > 1e-10, np.sqrt(np.maximum(zv, 1e-10)), np.inf)
                cov /= sx[:, :, None] * sz.T[None]
            scores[j0:j0 + block] = stat(cov, slice(j0, j0 + block))
        for k, m in sets.items():
            boot[k][:, b0:b0 + nb] = m @ scores
    return boot


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
