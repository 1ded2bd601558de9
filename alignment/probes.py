"""Linear probes on frozen embeddings: subject/group-wise cross-validation, pooled out-of-fold metrics with
bootstrap CIs over groups, a group-level label-permutation baseline and the chance level next to every score."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.linalg import LinAlgWarning
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegressionCV, Ridge, RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from alignment.errors import AlignmentInputError
from alignment.stats import RIDGE_ALPHAS, bootstrap_weights, cluster_codes, flatten_records, percentile_ci

log = logging.getLogger(__name__)

Task = Literal["classification", "regression"]
CLASSIFICATION_METRICS = ("balanced_accuracy", "macro_f1", "auroc")
REGRESSION_METRICS = ("r2", "mae", "r")
LOGREG_CS = np.logspace(-4, 2, 7)
INNER_SPLITS = 3


# --------------------------------------------------------------------------------- weighted metrics
# One implementation serves the point estimate (unit weights) and every bootstrap replicate (multiplicities).


def _balanced_accuracy(y: np.ndarray, proba: np.ndarray, w: np.ndarray) -> float:
    c = proba.shape[1]
    pred = proba.argmax(1)
    total = np.bincount(y, weights=w, minlength=c)
    hits = np.bincount(y, weights=w * (pred == y), minlength=c)
    present = total > 0
    return float(np.mean(hits[present] / total[present]))


def _macro_f1(y: np.ndarray, proba: np.ndarray, w: np.ndarray) -> float:
    c = proba.shape[1]
    pred = proba.argmax(1)
    true_total = np.bincount(y, weights=w, minlength=c)
    pred_total = np.bincount(pred, weights=w, minlength=c)
    hits = np.bincount(y, weights=w * (pred == y), minlength=c)
    present = (true_total + pred_total) > 0  # labels seen in y or in the predictions (as sklearn)
    return float(np.mean(2 * hits[present] / (true_total[present] + pred_total[present])))


@dataclass
class _AucIndex:
    """Per class: rows sorted by predicted probability, tie-group id per sorted row, positive flags."""

    order: list[np.ndarray]
    groups: list[np.ndarray]
    positive: list[np.ndarray]

    @classmethod
    def build(cls, y: np.ndarray, proba: np.ndarray) -> _AucIndex:
        scores = [proba[:, 1]] if proba.shape[1] == 2 else [proba[:, c] for c in range(proba.shape[1])]
        labels = [y == 1] if proba.shape[1] == 2 else [y == c for c in range(proba.shape[1])]
        index = cls([], [], [])
        for s, pos in zip(scores, labels):
            order = np.argsort(s, kind="stable")
            index.order.append(order)
            index.groups.append(np.concatenate([[0], np.cumsum(np.diff(s[order]) != 0)]))
            index.positive.append(pos[order])
        return index


def _auroc(index: _AucIndex, w: np.ndarray) -> float:
    """Weighted Mann-Whitney AUROC (ties count 1/2); one-vs-rest macro average over classes for multiclass."""
    values = []
    for order, groups, pos in zip(index.order, index.groups, index.positive):
        ws = w[order]
        gp = np.bincount(groups, weights=ws * pos)
        gn = np.bincount(groups, weights=ws * ~pos)
        n_pos, n_neg = gp.sum(), gn.sum()
        if n_pos > 0 and n_neg > 0:
            values.append(float(gp @ (np.cumsum(gn) - 0.5 * gn)) / (n_pos * n_neg))
    return float(np.mean(values)) if values else float("nan")


def _r2(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> float:
    mean = np.average(y, weights=w)
    denom = w @ (y - mean) ** 2
    return float(1 - (w @ (y - pred) ** 2) / denom) if denom > 0 else float("nan")


def _mae(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> float:
    return float(np.average(np.abs(y - pred), weights=w))


def _pearson_r(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> float:
    dy, dp = y - np.average(y, weights=w), pred - np.average(pred, weights=w)
    denom = np.sqrt((w @ dy**2) * (w @ dp**2))
    return float((w @ (dy * dp)) / denom) if denom > 0 else float("nan")


def _scores(
    task: Task, y: np.ndarray, out: np.ndarray, w: np.ndarray, auc: _AucIndex | None = None
) -> list[float]:
    if task == "classification":
        auc = auc or _AucIndex.build(y, out)
        return [_balanced_accuracy(y, out, w), _macro_f1(y, out, w), _auroc(auc, w)]
    return [_r2(y, out, w), _mae(y, out, w), _pearson_r(y, out, w)]


def _chance(task: Task, y: np.ndarray, n_classes: int) -> list[float]:
    """Balanced accuracy 1/C, macro-F1 and AUROC of a majority-class predictor; R^2, MAE and r of the mean."""
    if task == "classification":
        p = np.bincount(y, minlength=n_classes).max() / len(y)
        return [1.0 / n_classes, 2 * p / (1 + p) / n_classes, 0.5]
    return [0.0, float(np.mean(np.abs(y - y.mean()))), 0.0]


# ------------------------------------------------------------------------------------ cross-validation


def _logistic(cv: list[tuple[np.ndarray, np.ndarray]]) -> LogisticRegressionCV:
    kwargs: dict[str, Any] = {
        "Cs": LOGREG_CS,
        "cv": cv,
        "scoring": "balanced_accuracy",
        "max_iter": 500,
        "n_jobs": 1,
    }
    params = inspect.signature(LogisticRegressionCV).parameters
    if "use_legacy_attributes" in params:  # scikit-learn >= 1.8: pin the future defaults, no warnings
        kwargs.update(l1_ratios=(0.0,), use_legacy_attributes=False)
    return LogisticRegressionCV(**kwargs)


def _stratified(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep groups whole; StratifiedKFold when every group is one row (the same constraint,
    without StratifiedGroupKFold's per-group search: 0.23 s vs 0.002 s for 2,400 rows)."""
    if len(np.unique(groups)) == len(groups):
        return list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y, groups))


def _outer_splits(
    task: Task, y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    if task == "classification":
        return _stratified(y, groups, n_splits, seed)
    shuffled = np.random.default_rng(seed).permutation(int(groups.max()) + 1)[groups]  # random group order
    return list(GroupKFold(n_splits=n_splits).split(np.zeros(len(y)), y, shuffled))


class RowSpace(BaseEstimator, TransformerMixin):
    """Coordinates of rows in the span of the training rows, when there are fewer rows than columns: an L2-penalised
    linear model's weights lie in that span (also for any subset of those rows, centred: the inner CV) and its
    penalty is rotation-invariant, so the model fitted on these coordinates makes the same predictions as on the
    columns (p >> n: 20,000 variants -> n_train coordinates)."""

    def fit(self, x: np.ndarray, y: Any = None) -> RowSpace:
        """The training rows' Gram eigenvectors, scaled to map new rows onto their orthonormal row basis."""
        self.fit_transform(x)
        return self

    def fit_transform(self, x: np.ndarray, y: Any = None, **_: Any) -> np.ndarray:
        """Fit, and the training rows' coordinates U S (no second product with the rows)."""
        self.map_ = None
        if x.shape[1] <= x.shape[0]:
            return x
        x = np.asarray(x, dtype=np.float64)
        values, vectors = np.linalg.eigh(x @ x.T)
        keep = values > 1e-10 * max(values.max(), 1e-300)
        if not keep.any():  # constant training rows (scaled to 0): one zero coordinate, so a head predicts the mean
            self.train_, self.map_ = x, np.zeros((len(x), 1))
            return np.zeros((len(x), 1))
        scale = np.sqrt(values[keep])
        self.train_, self.map_ = x, vectors[:, keep] / scale  # V = X' U S^-1
        return vectors[:, keep] * scale

    def transform(self, x: np.ndarray) -> np.ndarray:
        """x V (unchanged when the columns were not more than the training rows)."""
        return x if self.map_ is None else (np.asarray(x, dtype=np.float64) @ self.train_.T) @ self.map_


class FoldRidgeCV(BaseEstimator):
    """sklearn's RidgeCV(alphas, cv=folds) (a grid search over Ridge: mean R^2 over the folds, the first best alpha,
    then Ridge refitted on every row) with each fold's whole alpha path from one eigendecomposition (of its centred
    training rows' covariance, or Gram matrix when columns outnumber rows) instead of one solve per alpha and fold
    (benchmarks/fold_ridge.py: 1.79x at 2,400 x 2,400); RidgeCV is the test oracle."""

    def __init__(self, alphas: Any = RIDGE_ALPHAS, cv: Any = None) -> None:
        self.alphas, self.cv = alphas, cv

    def fit(self, x: np.ndarray, y: np.ndarray) -> FoldRidgeCV:
        """alpha_ by the folds' mean R^2, then the refit."""
        alphas = np.asarray(self.alphas, dtype=np.float64)
        score = np.zeros(len(alphas))
        for train, test in self.cv:
            mean, y_mean = x[train].mean(axis=0), y[train].mean()
            xc, yc = x[train] - mean, y[train] - y_mean
            if xc.shape[1] <= len(xc):  # primal: w = V (L + alpha)^-1 V' X'y from the covariance's eigenvectors V
                values, v = np.linalg.eigh(xc.T @ xc)
                basis, coef = (x[test] - mean) @ v, v.T @ (xc.T @ yc)
            else:  # dual: K_test U (L + alpha)^-1 U' y from the Gram's eigenvectors U
                values, u = np.linalg.eigh(xc @ xc.T)
                basis, coef = ((x[test] - mean) @ xc.T) @ u, u.T @ yc
            for i, alpha in enumerate(alphas):
                score[i] += r2_score(y[test], basis @ (coef / (np.maximum(values, 0.0) + alpha)) + y_mean)
        self.alpha_ = float(alphas[np.argmax(score)])
        self.model_ = Ridge(alpha=self.alpha_).fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The refitted Ridge's predictions."""
        return self.model_.predict(x)


def _head(task: Task, y: np.ndarray, groups: np.ndarray, seed: int) -> LogisticRegressionCV | RidgeCV | FoldRidgeCV:
    """LogisticRegressionCV, RidgeCV (leave-one-out) or FoldRidgeCV (grouped) on a fold's prepared rows (_prepare);
    the inner CV is grouped as well."""
    if task == "classification":
        per_class = min(len(np.unique(groups[y == c])) for c in np.unique(y))
        return _logistic(_stratified(y, groups, max(2, min(INNER_SPLITS, per_class)), seed))
    if len(np.unique(groups)) == len(groups):
        return RidgeCV(alphas=RIDGE_ALPHAS)  # efficient leave-one-out
    inner = GroupKFold(n_splits=min(INNER_SPLITS, len(np.unique(groups))))
    return FoldRidgeCV(alphas=RIDGE_ALPHAS, cv=list(inner.split(y, y, groups)))


def _prepare(x: np.ndarray, confounds: np.ndarray | None, train: np.ndarray,
             test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fold's (train, test) rows as its head sees them: residualised on the confounds (fold_residuals), scaled
    (StandardScaler) and, when columns outnumber rows, in the training rows' row space (RowSpace), all fitted on
    the fold's training rows. The same for every target and permutation that uses the fold."""
    x_train, x_test = (x[train], x[test]) if confounds is None else fold_residuals(x, confounds, train, test)
    scaler = StandardScaler().fit(x_train)
    rows = RowSpace()
    return rows.fit_transform(scaler.transform(x_train)), rows.transform(scaler.transform(x_test))


def fold_residuals(
    x: np.ndarray, confounds: np.ndarray, train: np.ndarray, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of `x` minus their least-squares fit on [1, confounds] fitted on the train rows.

    Inputs adjusted once on other subjects keep a shift along each confound in new subjects (the error of that
    fit); a probe trained on them would learn the confound back. Fitted inside each fold, the probe's training
    rows carry no linear trace of the confounds."""
    design = np.hstack([np.ones((len(confounds), 1)), confounds])
    if len(train) <= design.shape[1]:
        raise AlignmentInputError(f"confounds: a probe fold has {len(train)} training rows for {design.shape[1]} "
                                  "confound columns (intercept included); need more rows than columns (fewer "
                                  "covariates or folds, or more subjects)")
    # the minimum-norm least-squares fit through the SVD of the small design (as lstsq), applied to every column
    # with two products instead of lstsq's per-column solve (20,000 variants: 1.2 s -> 0.1 s per fold)
    u, s, vt = np.linalg.svd(design[train], full_matrices=False)
    keep = s > s[0] * max(design.shape) * np.finfo(np.float64).eps
    b = u[:, keep].T @ x[train]  # [rank, p]
    to_test = design[test] @ (vt[keep].T / s[keep])
    return x[train] - u[:, keep] @ b, x[test] - to_test @ b


def _cross_val_predict(
    task: Task, folds: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], y: np.ndarray,
    groups: np.ndarray, n_classes: int, seed: int,
) -> tuple[np.ndarray, float]:
    """Pooled out-of-fold class probabilities [n, C] (or predictions [n]) and the median chosen C / alpha, from
    the folds' (train, test, prepared train rows, prepared test rows) (_prepare)."""
    out = np.zeros((len(y), n_classes)) if task == "classification" else np.zeros(len(y))
    chosen = []
    for train, test, x_train, x_test in folds:
        with warnings.catch_warnings():  # tiny ridge alphas on collinear embeddings: the inner CV rejects them
            warnings.simplefilter("ignore", LinAlgWarning)
            head = _head(task, y[train], groups[train], seed).fit(x_train, y[train])
        if task == "classification":
            out[np.ix_(test, head.classes_)] = head.predict_proba(x_test)  # classes absent from a fold stay 0
            chosen.append(float(np.median(head.C_)))
        else:
            out[test] = head.predict(x_test)
            chosen.append(float(head.alpha_))
    return out, float(np.median(chosen))


def _folds(task: Task, x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int,
           confounds: np.ndarray | None, cache: dict[bytes, tuple[np.ndarray, np.ndarray]],
           ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The outer folds of `y` with their prepared rows, each prepared once per `cache` (one representation)."""
    out = []
    for train, test in _outer_splits(task, y, groups, n_splits, seed):
        key = train.tobytes()
        if key not in cache:
            cache[key] = _prepare(x, confounds, train, test)
        out.append((train, test, *cache[key]))
    return out


# ------------------------------------------------------------------------------------------ public API


def permute_by_group(y: np.ndarray, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One permutation of `y` that respects the groups (`codes`, 0..G-1 per row), so that the null keeps the
    dependence between a subject's rows.

    Labels constant within every group: the group -> label mapping is permuted (all groups exchangeable).
    Otherwise whole-block permutation (Winkler et al. 2015, NeuroImage): groups of equal size swap their label
    vectors as a whole, each keeping its row order.
    """
    n_groups = int(codes.max()) + 1
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    first = y[order[starts]]  # one label per group
    if np.array_equal(y, first[codes]):
        return first[rng.permutation(n_groups)][codes]
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - np.repeat(starts, sizes)  # position of each row inside its group
    target = np.arange(n_groups)
    for size in np.unique(sizes):
        same = np.flatnonzero(sizes == size)
        target[same] = same[rng.permutation(len(same))]
    return y[order[starts[target[codes]] + rank]]


def _encode_target(
    y: np.ndarray, task: Task, target: str, group_codes: np.ndarray, n_splits: int
) -> tuple[np.ndarray, int]:
    """Class indices 0..C-1 (classification) or float values (regression), and the number of model outputs."""
    if task == "regression":
        y_fit = np.asarray(y, dtype=np.float64)
        if not np.isfinite(y_fit).all():
            raise AlignmentInputError(
                f"target {target!r}: {int((~np.isfinite(y_fit)).sum())} missing or infinite values"
            )
        if np.ptp(y_fit) == 0:
            raise AlignmentInputError(f"target {target!r}: constant values; nothing to predict")
        return y_fit, 1
    if task != "classification":
        raise AlignmentInputError(
            f"target {target!r}: task must be 'classification' or 'regression', got {task!r}"
        )
    try:
        classes, y_fit = np.unique(np.asarray(y), return_inverse=True)
    except TypeError:  # labels of mixed types (1 and "x"): compared as text
        classes, y_fit = np.unique(np.asarray(y).astype(str), return_inverse=True)
    y_fit = y_fit.reshape(-1)
    if len(classes) < 2:
        raise AlignmentInputError(
            f"target {target!r}: only one class ({classes[0]!r}); a classifier needs two or more"
        )
    per_class = [len(np.unique(group_codes[y_fit == c])) for c in range(len(classes))]
    if min(per_class) < n_splits:
        raise AlignmentInputError(
            f"target {target!r}: class {classes[int(np.argmin(per_class))]!r} occurs in {min(per_class)} "
            f"subjects/groups, fewer than n_splits={n_splits} (merge rare classes or use fewer folds)"
        )
    return y_fit, len(classes)


def linear_probe(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | Sequence[Any] | None = None,
    *,
    task: Task,
    n_splits: int = 5,
    n_boot: int = 1000,
    n_permutations: int = 3,
    level: float = 0.95,
    seed: int = 0,
    representation: str = "x",
    target: str = "y",
    confounds: np.ndarray | None = None,
    fold_cache: dict[bytes, tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[dict[str, Any]]:
    """Cross-validated linear probe of `y` from `x` (rows grouped by `groups`: subjects or families/sites).

    Classification: StandardScaler + LogisticRegressionCV (balanced accuracy, macro F1, AUROC one-vs-rest macro);
    regression: StandardScaler + RidgeCV (R^2, MAE, Pearson r). Folds: StratifiedGroupKFold / GroupKFold; the
    metrics are computed once on the pooled out-of-fold predictions, with a percentile bootstrap CI over groups
    and the mean/std of the same CV run on labels permuted between groups (`permute_by_group`, `n_permutations`
    repeats), never between the rows of one subject; the permuted runs keep the folds of `y` (unless one leaves a
    class out of a training fold), so each fold's rows are residualised, scaled and reduced once (`_prepare`;
    `fold_cache`: a dict shared by the calls on the same `x` and `confounds`, e.g. one per representation across
    targets). `confounds` [n, q] (a covariate design): `x` is residualised on them inside each fold
    (`fold_residuals`). Returns tidy records.
    """
    x = np.asarray(x)
    if x.ndim != 2 or len(x) != len(y):
        raise AlignmentInputError(
            f"representation {representation!r}: expected [n={len(y)}, dim] rows, got shape {x.shape}"
        )
    bad = int((~np.isfinite(x).all(axis=1)).sum())
    if bad:
        raise AlignmentInputError(
            f"representation {representation!r}: {bad} of {len(x)} rows contain NaN or inf"
        )
    if not isinstance(n_splits, int) or n_splits < 2:
        raise AlignmentInputError(f"n_splits: expected an integer >= 2, got {n_splits!r}")
    group_codes = cluster_codes(groups, len(y), f"target {target!r} groups")
    n_groups = int(group_codes.max()) + 1
    if n_groups < n_splits:
        raise AlignmentInputError(
            f"target {target!r}: {n_groups} subjects/groups are fewer than n_splits={n_splits} folds"
        )
    y_fit, n_out = _encode_target(y, task, target, group_codes, n_splits)
    if confounds is not None:
        confounds = np.asarray(confounds, dtype=np.float64).reshape(len(y), -1)
        if not np.isfinite(confounds).all():
            raise AlignmentInputError(f"representation {representation!r}: confounds contain NaN or inf")

    # many small fits: BLAS threads only add overhead, except for wider-than-tall representations (variants), whose
    # row-space Gram products are large
    cache = {} if fold_cache is None else fold_cache
    with threadpool_limits(limits=1 if x.shape[1] <= len(x) else None, user_api="blas"):
        folds = _folds(task, x, y_fit, group_codes, n_splits, seed, confounds, cache)
        out, hparam = _cross_val_predict(task, folds, y_fit, group_codes, n_out, seed)
        ones = np.ones(len(y_fit))
        auc = _AucIndex.build(y_fit, out) if task == "classification" else None
        point = _scores(task, y_fit, out, ones, auc)
        boot = np.array(
            [
                _scores(task, y_fit, out, w[group_codes].astype(np.float64), auc)
                for w in bootstrap_weights(group_codes, n_boot, seed)
            ]
        )
        low, high = percentile_ci(boot, level)
        rng = np.random.default_rng(seed + 1)
        perm = []
        for _ in range(n_permutations):
            y_perm = permute_by_group(y_fit, group_codes, rng)
            lost = task == "classification" and any(len(np.unique(y_perm[f[0]])) < n_out for f in folds)
            same = _folds(task, x, y_perm if lost else y_fit, group_codes, n_splits, seed, confounds, cache)
            perm.append(_scores(task, y_perm, _cross_val_predict(task, same, y_perm, group_codes, n_out, seed)[0],
                                ones))
        perm = np.array(perm).reshape(n_permutations, len(point))
    chance = _chance(task, y_fit, n_out)
    names = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    return [
        {
            "representation": representation,
            "target": target,
            "task": task,
            "metric": name,
            "value": point[i],
            "ci_low": float(low[i]),
            "ci_high": float(high[i]),
            "chance": chance[i],
            "perm_mean": float(perm[:, i].mean()) if n_permutations else float("nan"),
            "perm_std": float(perm[:, i].std()) if n_permutations else float("nan"),
            "n": len(y_fit),
            "n_groups": n_groups,
            "n_splits": n_splits,
            "hparam": hparam,
        }
        for i, name in enumerate(names)
    ]


@dataclass
class ProbeReport:
    """Tidy records (representation, target, task, metric, value, ci_low, ci_high, chance, perm_mean, perm_std,
    n, n_groups, n_dropped, n_splits, hparam) and the number of rows dropped per target for a missing value."""

    records: list[dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)

    def flat(self, prefix: str = "") -> dict[str, float]:
        """MLflow-safe `<prefix>/<representation>/<target>/<metric>` plus `_ci_low/_ci_high/_chance/_perm_mean`."""
        return flatten_records(
            self.records,
            lambda r: f"{r['representation']}/{r['target']}/{r['metric']}",
            ("ci_low", "ci_high", "chance", "perm_mean"),
            prefix,
        )


def infer_task(column: Any) -> Task:
    """'classification' for bool/text/categorical columns and numeric columns with two distinct values,
    else 'regression'."""
    values = column.dropna() if hasattr(column, "dropna") else column
    dtype = getattr(values, "dtype", np.asarray(values).dtype)
    if getattr(dtype, "kind", "O") in "iuf" and len(np.unique(np.asarray(values))) != 2:
        return "regression"
    return "classification"


def probe_representations(
    representations: Mapping[str, np.ndarray],
    table: Any,
    targets: Sequence[str],
    *,
    subject_col: str = "subject_id",
    group_col: str | None = None,
    tasks: Mapping[str, Task] | None = None,
    n_splits: int = 5,
    n_boot: int = 1000,
    n_permutations: int = 3,
    level: float = 0.95,
    seed: int = 0,
    confounds: np.ndarray | None = None,
    adjusted: Sequence[str] = (),
) -> ProbeReport:
    """Run the same probe (same folds, same seeds) for every target column of `table` (a pandas DataFrame whose
    rows align with the rows of each representation) on every named representation, e.g. {"brain": ...,
    "dna": ..., "shared": ..., "brain+dna": np.hstack(...)}. Rows with a missing target are dropped (counted in
    `dropped` and logged); folds are grouped by `group_col` (families/sites) when given, else by subject. The
    representations named in `adjusted` are residualised on `confounds` [n, q] inside each fold."""
    if not representations:
        raise AlignmentInputError("representations: expected at least one named embedding array")
    columns = list(getattr(table, "columns", []))
    for col in [subject_col, *([group_col] if group_col else []), *targets]:
        if col not in columns:
            raise AlignmentInputError(f"table: no column {col!r} (columns: {columns})")
    n = len(table)
    arrays = {}
    for name, x in representations.items():
        arrays[name] = np.asarray(x)
        if arrays[name].ndim != 2 or len(arrays[name]) != n:
            raise AlignmentInputError(
                f"representation {name!r}: expected [n={n}, dim] rows (one per table row), got shape {arrays[name].shape}"
            )
    unknown = sorted(set(adjusted) - set(arrays))
    if unknown:
        raise AlignmentInputError(f"adjusted: {unknown} are not among the representations {list(arrays)}")
    if adjusted and (confounds is None or len(confounds) != n):
        raise AlignmentInputError(f"confounds: expected [n={n}, q] rows for the adjusted representations, got "
                                  f"{None if confounds is None else np.shape(confounds)}")
    subjects = np.asarray(table[subject_col], dtype=object)
    groups = subjects if group_col is None else _group_labels(subjects, table[group_col], group_col)
    tasks = dict(tasks or {})
    report = ProbeReport(records=[])
    kept = {}
    for target in targets:
        column = table[target]
        keep = ~np.asarray(column.isna())
        report.dropped[target] = int((~keep).sum())
        if report.dropped[target]:
            log.info(
                "probe target %r: dropped %d of %d rows with a missing value",
                target,
                report.dropped[target],
                n,
            )
        if not keep.any():
            raise AlignmentInputError(f"target {target!r}: no row has a value (all {n} missing)")
        kept[target] = keep
    records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for name, x in arrays.items():  # one representation's prepared folds at a time, shared by its targets
        caches: dict[bytes, dict[bytes, tuple[np.ndarray, np.ndarray]]] = {}
        for target in targets:
            keep = kept[target]
            task = tasks.get(target) or infer_task(table[target])
            y = np.asarray(table[target])[keep]
            records[target, name] = linear_probe(
                x[keep],
                y,
                groups[keep],
                task=task,
                n_splits=n_splits,
                n_boot=n_boot,
                n_permutations=n_permutations,
                level=level,
                seed=seed,
                representation=name,
                target=target,
                confounds=confounds[keep] if confounds is not None and name in adjusted else None,
                fold_cache=caches.setdefault(keep.tobytes(), {}),
            )
    for target in targets:
        for name in arrays:
            report.records += [r | {"n_dropped": report.dropped[target]} for r in records[target, name]]
    return report


def _group_labels(subjects: np.ndarray, column: Any, group_col: str) -> np.ndarray:
    """Group per row (the subject where the group is missing); each subject must sit in one group."""
    raw = np.asarray(column, dtype=object)
    missing = np.asarray(column.isna())
    groups = np.where(missing, np.array(["subject:" + str(s) for s in subjects], dtype=object), raw)
    seen: dict[Any, Any] = {}
    clash = sorted({str(s) for s, g in zip(subjects, groups) if seen.setdefault(s, g) != g})
    if clash:
        raise AlignmentInputError(f"{group_col}: subjects {clash[:10]} belong to more than one group")
    return groups.astype(str)
