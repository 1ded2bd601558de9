"""Classical and untrained baselines beside contrastive alignment: PCA -> CCA / PLS, ridge maps in both
directions and random projection heads. Each is fitted on the training split only, maps held-out brain and DNA
embeddings into a common space, and reports the same retrieval metrics through `space_records`."""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.linalg import LinAlgWarning
from sklearn.base import BaseEstimator
from sklearn.cross_decomposition import CCA, PLSCanonical
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import r2_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from alignment.errors import AlignmentInputError
from alignment.retrieval import RetrievalReport, pair_ranks, retrieval_report
from alignment.significance import column_corr, correlation_records
from alignment.stats import RIDGE_ALPHAS, flatten_records

BASELINES = ("cca", "pls", "ridge_brain_to_genetics", "ridge_genetics_to_brain", "random_head")


def _matrix(x: Any, what: str) -> np.ndarray:
    """float64 [n, dim] array with finite values, or AlignmentInputError naming `what`."""
    try:
        x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise AlignmentInputError(f"{what}: expected a numeric [n, dim] array ({err})") from None
    if x.ndim != 2 or 0 in x.shape:
        raise AlignmentInputError(f"{what}: expected a 2-D array [n >= 1, dim >= 1], got shape {x.shape}")
    bad = int((~np.isfinite(x).all(axis=1)).sum())
    if bad:
        raise AlignmentInputError(f"{what}: {bad} of {len(x)} rows contain NaN or inf")
    return x


def _paired(brain: Any, genetics: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    b, d = _matrix(brain, f"{split} brain embeddings"), _matrix(genetics, f"{split} genetics embeddings")
    if len(b) != len(d):
        raise AlignmentInputError(
            f"{split} split: {len(b)} brain rows but {len(d)} genetics rows (rows must be paired)"
        )
    return b, d


_PCA_FITS: OrderedDict[tuple[Any, ...], PCA] = OrderedDict()  # the last fits by their rows' content
PCA_FITS_KEPT = 4  # an evaluation fits the genetics view once for cca, pls, fc_cca, fc_pls and explain (was 6 times)


def capped_pca(x: np.ndarray, max_components: int = 100) -> PCA:
    """PCA of the training rows with at most n_train // 10 components (and `max_components`, n_features,
    n_train - 1), at least 1 (seeded). A fit of identical rows (same bytes) is reused, not refitted: callers
    must not modify the returned PCA (truncated_pca copies)."""
    x = np.ascontiguousarray(x)
    key = (x.shape, x.dtype.str, max_components, hashlib.blake2b(x.data, digest_size=16).digest())
    if key in _PCA_FITS:
        _PCA_FITS.move_to_end(key)
        return _PCA_FITS[key]
    n, d = x.shape
    pca = PCA(n_components=max(1, min(max_components, n // 10, d, n - 1)), random_state=0).fit(x)
    _PCA_FITS[key] = pca
    while len(_PCA_FITS) > PCA_FITS_KEPT:
        _PCA_FITS.popitem(last=False)
    return pca


def components_for(pca: PCA, variance: float) -> int:
    """Leading components of a fitted `capped_pca` that hold `variance` of the variance (at most all, at least 1)."""
    return int(min(pca.n_components_, np.searchsorted(np.cumsum(pca.explained_variance_ratio_), variance) + 1))


def truncated_pca(pca: PCA, k: int) -> PCA:
    """The first k components of a fitted PCA (the same map as a k-component fit with the exact solvers)."""
    out = copy.copy(pca)
    out.n_components = out.n_components_ = k
    for name in ("components_", "explained_variance_", "explained_variance_ratio_", "singular_values_"):
        setattr(out, name, getattr(pca, name)[:k])
    return out


def pca_components(x: np.ndarray, variance: float = 0.9, max_components: int = 100) -> int:
    """Components chosen on the training rows: enough for `variance` of the variance, at most n_train // 10
    (and `max_components`, n_features, n_train - 1), at least 1."""
    return components_for(capped_pca(x, max_components), variance)


class CCABaseline:
    """Per-view PCA (fitted on train; seeded, so a refit is identical) -> CCA (`method="cca"`, correlation) or PLSCanonical (`"pls"`, covariance of
    the unscaled PCA scores); the shared space is the score pairs standardised with the training scores' mean/std."""

    def __init__(
        self,
        method: Literal["cca", "pls"] = "cca",
        n_components: int = 8,
        variance: float = 0.9,
        max_pca_components: int = 100,
    ) -> None:
        if method not in ("cca", "pls"):
            raise AlignmentInputError(f"method: expected 'cca' or 'pls', got {method!r}")
        self.method, self.n_components = method, n_components
        self.variance, self.max_pca_components = variance, max_pca_components
        self.selection_: dict[str, float] = {}  # set by `select_cca` (validation MRR of the chosen settings)

    def fit(self, brain: Any, genetics: Any, pcas: tuple[PCA, PCA] | None = None) -> CCABaseline:
        """Fit PCA per view and CCA/PLS on training rows only (`pcas`: per-view `capped_pca` fits of these rows,
        shared by a selection over sizes; the components for `variance` are taken from them)."""
        b, d = _paired(brain, genetics, "train")
        if len(b) < 3:
            raise AlignmentInputError(f"{self.method}: need at least 3 training rows, got {len(b)}")
        full = pcas or (capped_pca(b, self.max_pca_components), capped_pca(d, self.max_pca_components))
        self.pca_brain_, self.pca_genetics_ = (truncated_pca(f, components_for(f, self.variance)) for f in full)
        m = min(self.n_components, self.pca_brain_.n_components_, self.pca_genetics_.n_components_)
        # PLS keeps the PCA variances (scale=False): standardised PCA scores are white and PLS would equal CCA.
        model = (
            CCA(n_components=m, max_iter=1000)
            if self.method == "cca"
            else PLSCanonical(n_components=m, scale=False, max_iter=1000)
        )
        self.model_ = model.fit(self.pca_brain_.transform(b), self.pca_genetics_.transform(d))
        u, v = self._scores(b, d)
        self.mean_ = (u.mean(0), v.mean(0))
        self.std_ = (np.where(u.std(0) > 0, u.std(0), 1.0), np.where(v.std(0) > 0, v.std(0), 1.0))
        return self

    def _scores(self, b: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model_.transform(self.pca_brain_.transform(b), self.pca_genetics_.transform(d))

    def transform(self, brain: Any, genetics: Any) -> tuple[np.ndarray, np.ndarray]:
        """Standardised canonical scores (brain side, genetics side) of new paired rows."""
        u, v = self._scores(*_paired(brain, genetics, "test"))
        return (u - self.mean_[0]) / self.std_[0], (v - self.mean_[1]) / self.std_[1]

    def affine_map(self, side: int, in_dim: int, other_dim: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """(W [k, in_dim], b [k]) of one side's transform (0 brain, 1 genetics; `other_dim`: the other side's
        width), read off the basis vectors a block at a time: memory O(block x in_dim), not in_dim^2."""

        def scores(rows: np.ndarray) -> np.ndarray:
            other = np.zeros((len(rows), other_dim))
            return self.transform(*((rows, other) if side == 0 else (other, rows)))[side]

        bias = scores(np.zeros((1, in_dim)))[0]
        cols = []
        for start in range(0, in_dim, block):
            m = min(block, in_dim - start)
            basis = np.zeros((m, in_dim))
            basis[np.arange(m), start + np.arange(m)] = 1.0
            cols.append((scores(basis) - bias).T)
        return np.concatenate(cols, axis=1), bias

    def canonical_correlations(self, brain: Any, genetics: Any) -> np.ndarray:
        """Pearson correlation of each pair of canonical scores on the given (held-out) rows."""
        return _column_corr(*self.transform(brain, genetics))


CCA_VARIANCES = (0.9, 0.99, 1.0)  # PCA per view: 90 %, 99 % of the training variance, or the cap (n_train // 10)


def select_cca(
    method: Literal["cca", "pls"],
    brain_train: Any,
    genetics_train: Any,
    brain_val: Any,
    genetics_val: Any,
    max_components: int = 8,
    variances: Sequence[float] = CCA_VARIANCES,
) -> CCABaseline:
    """Fit CCA/PLS on train for each PCA size (`variances`) and number of canonical pairs (1, 2, 4, ... up to
    `max_components`); keep the one with the best validation MRR (mean of both directions). The test split is
    never seen, the same footing as the trained model's early stopping on validation retrieval."""
    b_val, d_val = _paired(brain_val, genetics_val, "val")
    b_train, d_train = _paired(brain_train, genetics_train, "train")
    pcas = (capped_pca(b_train), capped_pca(d_train))  # one fit per view; each size takes its leading components
    counts = sorted({min(2**i, max_components) for i in range(max_components.bit_length() + 1)})
    best: tuple[float, CCABaseline] | None = None
    for variance in variances:
        for n in counts:
            model = CCABaseline(method, n_components=n, variance=variance).fit(b_train, d_train, pcas)
            fwd, bwd = pair_ranks(*model.transform(b_val, d_val))
            mrr = float((1.0 / (1.0 + fwd)).mean() + (1.0 / (1.0 + bwd)).mean()) / 2
            if best is None or mrr > best[0]:
                best = (mrr, model)
    assert best is not None
    mrr, model = best
    model.selection_ = {"val_mrr": mrr, "variance": model.variance, "n_components": float(model.model_.n_components),
                        "pca_brain": float(model.pca_brain_.n_components_), "pca_genetics": float(model.pca_genetics_.n_components_)}
    return model


WIDE_TARGET = 2048  # target columns above which the leave-one-out alpha search runs in column blocks


def loo_ridge_alpha(x: np.ndarray, y: np.ndarray, alphas: Any, block: int = 512) -> float:
    """The alpha of sklearn's RidgeCV (efficient leave-one-out, mean squared error over every target, intercept not
    penalised) for a tall x [n, p <= n], computed over blocks of target columns from one SVD of the centred x: memory
    O(n x block) instead of several [n, targets] arrays (7,000 x 20,000 variants: ~1 GB each)."""
    u, sv, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    return _loo_alpha(u, sv**2, y, alphas, block)


def _loo_alpha(u: np.ndarray, values: np.ndarray, y: np.ndarray, alphas: Any, block: int = 512) -> float:
    """loo_ridge_alpha from the eigenvectors `u` [n, k] and eigenvalues of the centred rows' Gram matrix."""
    alphas = np.asarray(alphas, dtype=np.float64)
    err = np.zeros(len(alphas))
    for j in range(0, y.shape[1], block):
        yc = y[:, j:j + block] - y[:, j:j + block].mean(axis=0)
        uy = u.T @ yc
        for i, alpha in enumerate(alphas):
            shrink = values / (values + alpha)
            leverage = 1.0 / len(u) + (u**2) @ shrink  # the unpenalised intercept's 1/n included
            resid = (yc - u @ (shrink[:, None] * uy)) / (1.0 - leverage)[:, None]
            err[i] += np.einsum("ij,ij->", resid, resid)
    return float(alphas[np.argmin(err)])


_GRAMS: OrderedDict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = OrderedDict()
GRAMS_KEPT = 1  # the genotype -> brain and genotype -> FC ridge maps share one eigendecomposition


def centred_gram_eigen(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues >= 0, eigenvectors) of the Gram matrix of the centred rows of x [n, p > n]; reused for identical
    rows (same bytes): 6,982 x 20,000 variants cost ~50 s of `eigh` per fit. Callers must not modify the result."""
    x = np.ascontiguousarray(x)
    key = (x.shape, x.dtype.str, hashlib.blake2b(x.data, digest_size=16).digest())
    if key not in _GRAMS:
        xc = x - x.mean(axis=0)
        values, vectors = np.linalg.eigh(xc @ xc.T)
        _GRAMS[key] = (np.maximum(values, 0.0), vectors)
        while len(_GRAMS) > GRAMS_KEPT:
            _GRAMS.popitem(last=False)
    _GRAMS.move_to_end(key)
    return _GRAMS[key]


class WideRidge(BaseEstimator):
    """Ridge (intercept not penalised) from a source with more columns than rows, in its dual form from the
    centred rows' Gram eigendecomposition (`centred_gram_eigen`, shared by fits on the same source rows), alpha by
    efficient leave-one-out over every target (`_loo_alpha`): sklearn's RidgeCV on the same rows is the test
    oracle (same alpha, same predictions)."""

    def __init__(self, alphas: Any = RIDGE_ALPHAS) -> None:
        self.alphas = alphas

    def fit(self, x: np.ndarray, y: np.ndarray) -> WideRidge:
        """Alpha, then the weights x_c' U (Lambda + alpha)^-1 U' y_c and the intercept."""
        values, u = centred_gram_eigen(x)
        self.alpha_ = _loo_alpha(u, values, y, self.alphas)
        x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
        dual = u @ ((u.T @ (y - y_mean)) / (values + self.alpha_)[:, None])
        self.coef_ = (x - x_mean).T @ dual  # [p, targets]
        self.intercept_ = y_mean - x_mean @ self.coef_
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x W + b."""
        return x @ self.coef_ + self.intercept_


class RidgeMap:
    """StandardScaler + RidgeCV from one modality's embeddings to the other's; the shared space is the target
    space centred on the training target mean (prediction vs true embedding)."""

    def __init__(
        self,
        direction: Literal["brain_to_genetics", "genetics_to_brain"] = "brain_to_genetics",
        alphas: Sequence[float] = RIDGE_ALPHAS,
    ) -> None:
        if direction not in ("brain_to_genetics", "genetics_to_brain"):
            raise AlignmentInputError(
                f"direction: expected 'brain_to_genetics' or 'genetics_to_brain', got {direction!r}"
            )
        self.direction, self.alphas = direction, np.asarray(alphas)

    def _source_target(self, b: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (b, d) if self.direction == "brain_to_genetics" else (d, b)

    def fit(self, brain: Any, genetics: Any) -> RidgeMap:
        """Fit the scaler and the ridge map (alpha by efficient leave-one-out) on training rows only."""
        source, target = self._source_target(*_paired(brain, genetics, "train"))
        with warnings.catch_warnings():  # tiny alphas on collinear embeddings are expected: the LOO CV rejects them
            warnings.simplefilter("ignore", LinAlgWarning)
            if target.shape[1] > WIDE_TARGET and len(source) > source.shape[1]:  # e.g. brain -> 20,000 variants
                scaler = StandardScaler().fit(source)
                alpha = loo_ridge_alpha(scaler.transform(source), target, self.alphas)
                self.model_: Pipeline = make_pipeline(scaler, Ridge(alpha=alpha)).fit(source, target)
            elif len(source) < source.shape[1]:  # e.g. 20,000 variants -> brain or FC: one Gram for both
                scaler = StandardScaler().fit(source)
                self.model_ = make_pipeline(scaler, WideRidge(self.alphas).fit(scaler.transform(source), target))
            else:
                self.model_ = make_pipeline(StandardScaler(), RidgeCV(alphas=self.alphas)).fit(source, target)
        self.target_mean_ = target.mean(0)
        return self

    def transform(self, brain: Any, genetics: Any) -> tuple[np.ndarray, np.ndarray]:
        """(brain side, genetics side) in the target space: the mapped source rows and the true target rows."""
        b, d = _paired(brain, genetics, "test")
        source, target = self._source_target(b, d)
        pred, true = self.model_.predict(source) - self.target_mean_, target - self.target_mean_
        return (pred, true) if self.direction == "brain_to_genetics" else (true, pred)

    def r2(self, brain: Any, genetics: Any) -> float:
        """Held-out R^2 of the mapped embeddings (uniform average over target dimensions)."""
        source, target = self._source_target(*_paired(brain, genetics, "test"))
        return float(r2_score(target, self.model_.predict(source)))


def reinitialised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Copy of `module` with every submodule's `reset_parameters()` re-run under `seed` (same architecture, untrained;
    buffers such as fitted input statistics are kept)."""
    fresh = copy.deepcopy(module)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in fresh.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
    return fresh.eval()


def random_head_embeddings(
    brain: Any,
    genetics: Any,
    *,
    brain_head: torch.nn.Module | None = None,
    genetics_head: torch.nn.Module | None = None,
    out_dim: int = 512,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Untrained baseline: re-initialised copies of the trained heads when given, else Gaussian random linear
    projections to `out_dim` (N(0, 1/in_dim) entries); returns (brain side, genetics side)."""
    b, d = _paired(brain, genetics, "test")
    out = []
    for i, (x, head) in enumerate(((b, brain_head), (d, genetics_head))):
        if head is None:
            w = np.random.default_rng([seed, i]).normal(
                scale=1 / np.sqrt(x.shape[1]), size=(x.shape[1], out_dim)
            )
            out.append(x @ w)
        else:
            param = next(head.parameters(), torch.empty(0))
            with torch.no_grad():
                z = reinitialised(head, seed + i)(torch.as_tensor(x, dtype=param.dtype, device=param.device))
            out.append(z.float().cpu().numpy())
    return out[0], out[1]


def shuffled_pairs(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation without fixed points: pair brain row i with genetics row perm[i] for a shuffled-pair run."""
    if n < 2:
        raise AlignmentInputError(f"shuffled_pairs: need at least 2 rows, got {n}")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def space_records(name: str, brain: Any, genetics: Any, **retrieval_kw: Any) -> list[dict[str, Any]]:
    """Retrieval records (see `retrieval_report`) of held-out embeddings in a common space, tagged `model=name`.
    One entry point for baselines, the trained model and shuffled-pair runs."""
    report: RetrievalReport = retrieval_report(brain, genetics, **retrieval_kw)
    return [{"model": name, **r} for r in report.records]


@dataclass
class BaselineReport:
    """Tidy records (model, direction, level, metric, value, ci_low, ci_high, chance, ... and p_value for canonical
    correlations) and the fitted baselines."""

    records: list[dict[str, Any]]
    models: dict[str, Any] = field(default_factory=dict)

    def flat(self, prefix: str = "") -> dict[str, float]:
        """MLflow-safe `<prefix>/<model>/<direction>[/<level>]/<metric>` plus CI, chance and p-value suffixes."""
        return flatten_records(self.records, _name, ("ci_low", "ci_high", "chance", "p_value"), prefix)


def _name(r: Mapping[str, Any]) -> str:
    level = None if r.get("level") in (None, "recording") else r["level"]
    return "/".join(str(p) for p in (r["model"], r.get("direction"), level, r["metric"]) if p)


def _column_corr(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return column_corr(u, v)


def _correlation_records(
    name: str, u: np.ndarray, v: np.ndarray, n_permutations: int, n_boot: int, level: float, seed: int,
    strata: Any = None,
) -> list[dict[str, Any]]:
    """Held-out correlation of each score pair, percentile bootstrap CI over test rows, permutation p-value
    (test pairing shuffled): `alignment.significance.correlation_records`, the same as the trained model's."""
    return correlation_records(name, u, v, n_perm=n_permutations, n_boot=n_boot, level=level, seed=seed,
                               strata=strata)


def run_baselines(
    brain_train: Any,
    genetics_train: Any,
    brain_test: Any,
    genetics_test: Any,
    *,
    brain_val: Any = None,
    genetics_val: Any = None,
    baselines: Sequence[str] = BASELINES,
    n_components: int = 8,
    n_permutations: int = 1000,
    brain_head: torch.nn.Module | None = None,
    genetics_head: torch.nn.Module | None = None,
    out_dim: int = 512,
    seed: int = 0,
    retrieval_kw: Mapping[str, Any] | None = None,
) -> BaselineReport:
    """Fit each baseline on the paired training rows, evaluate on the paired test rows: retrieval in its space
    (`space_records`, extra arguments in `retrieval_kw`), plus held-out canonical correlations with permutation
    p-values (CCA, PLS) and held-out R^2 (ridge maps). With validation rows, CCA/PLS choose their PCA size and number
    of pairs on them (`select_cca`); without, PCA keeps 90 % of the variance and `n_components` pairs are fitted."""
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise AlignmentInputError(f"baselines: unknown {unknown}; choose from {list(BASELINES)}")
    b_train, d_train = _paired(brain_train, genetics_train, "train")
    b_test, d_test = _paired(brain_test, genetics_test, "test")
    kw = {"seed": seed, **(retrieval_kw or {})}
    report = BaselineReport(records=[])
    with threadpool_limits(limits=1, user_api="blas"):  # small iterative fits: BLAS threads only add overhead
        for name in baselines:
            if name in ("cca", "pls"):
                if brain_val is None:
                    model = CCABaseline(name, n_components=n_components).fit(b_train, d_train)  # type: ignore[arg-type]
                else:
                    model = select_cca(name, b_train, d_train, brain_val, genetics_val, n_components)  # type: ignore[arg-type]
                u, v = model.transform(b_test, d_test)
                report.records += _correlation_records(
                    name, u, v, n_permutations, kw.get("n_boot", 1000), kw.get("level", 0.95), seed, kw.get("strata")
                )
            elif name.startswith("ridge_"):
                model = RidgeMap(name.removeprefix("ridge_")).fit(b_train, d_train)  # type: ignore[arg-type]
                u, v = model.transform(b_test, d_test)
                report.records.append(
                    {
                        "model": name,
                        "direction": model.direction,
                        "level": None,
                        "metric": "r2",
                        "value": model.r2(b_test, d_test),
                        "ci_low": None,
                        "ci_high": None,
                        "chance": 0.0,
                        "n_queries": len(b_test),
                        "n_candidates": None,
                    }
                )
            else:
                model = None
                u, v = random_head_embeddings(
                    b_test, d_test, brain_head=brain_head, genetics_head=genetics_head, out_dim=out_dim, seed=seed
                )
            report.models[name] = model
            report.records += space_records(name, u, v, **kw)
    return report
