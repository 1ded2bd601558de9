"""Confound adjustment fitted on training subjects only: a covariate design (standardised numeric columns, one-hot
categoricals), least-squares residualisation of either modality, and the `confounds_only` retrieval baseline
(each modality mapped into the covariate space; how much retrieval the confounds alone could explain)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.linalg import LinAlgWarning
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from alignment.baselines import _matrix
from alignment.errors import AlignmentInputError
from alignment.stats import RIDGE_ALPHAS

DEGENERATE_EPS = 10.0  # a residual within this many units of roundoff of its column's magnitude is rounding noise
Covariates = Mapping[str, Any]  # column name -> values per row (a pandas DataFrame works)


def _features(x: Any, what: str, n: int | None = None) -> np.ndarray:
    """float64 [n, dim] array with finite values (`baselines._matrix`), rows aligned with the covariates."""
    x = _matrix(x, what)
    if n is not None and len(x) != n:
        raise AlignmentInputError(f"{what}: {len(x)} rows but the covariates have {n} (rows must be aligned)")
    return x


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return ~np.isfinite(values)
    if values.dtype.kind == "O":
        return np.array([_is_missing(v) for v in values], dtype=bool)
    return np.zeros(len(values), dtype=bool)


def _is_missing(value: Any) -> bool:
    """None, NaN, pandas NA/NaT."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except TypeError:  # pandas.NA: comparisons are ambiguous
        return True


class CovariateDesign:
    """Design matrix [n, p] without intercept: numeric columns standardised with the training mean/SD, categorical
    columns one-hot with the training levels, the first (sorted) level dropped as the reference.

    Columns are numeric when their dtype is (bool, int, float) unless named in `categorical`; text columns are
    always categorical. A level unseen in training is an error (it cannot be adjusted for: split by that column
    or drop it), as are a missing column, a missing value and a column constant over the training rows.
    """

    def __init__(self, columns: Sequence[str], categorical: Sequence[str] = ()) -> None:
        if isinstance(columns, str) or not columns:
            raise AlignmentInputError(f"confound columns: expected a non-empty list of names, got {columns!r}")
        unknown = sorted(set(categorical) - set(columns))
        if unknown:
            raise AlignmentInputError(f"categorical: {unknown} are not among the confound columns {list(columns)}")
        self.columns, self.categorical = list(columns), set(categorical)

    def _column(self, covariates: Covariates, name: str, n: int | None) -> np.ndarray:
        try:
            values = np.asarray(covariates[name])
        except (KeyError, IndexError):
            have = list(getattr(covariates, "columns", getattr(covariates, "keys", list)()))
            raise AlignmentInputError(f"confound column {name!r}: not in the covariate table (columns: {have})") \
                from None
        if values.ndim != 1 or (n is not None and len(values) != n):
            raise AlignmentInputError(f"confound column {name!r}: expected {n} values (one per row), got "
                                      f"shape {values.shape}")
        missing = _missing(values)
        if missing.any():
            raise AlignmentInputError(f"confound column {name!r}: {int(missing.sum())} of {len(values)} rows have "
                                      "a missing value (impute or drop those subjects first)")
        return values

    def _rows(self, covariates: Covariates) -> int:
        return len(np.asarray(covariates[self.columns[0]])) if self.columns[0] in covariates else 0

    def fit(self, covariates: Covariates) -> CovariateDesign:
        """Learn means/SDs and levels from the training rows."""
        n = self._rows(covariates)
        self.kinds_: dict[str, str] = {}
        self.stats_: dict[str, tuple[float, float]] = {}
        self.levels_: dict[str, np.ndarray] = {}
        for name in self.columns:
            values = self._column(covariates, name, n or None)
            n = len(values)
            if name in self.categorical or values.dtype.kind not in "biuf":
                levels = np.unique(values.astype(str))
                if len(levels) < 2:
                    raise AlignmentInputError(f"confound column {name!r}: constant over the training rows "
                                              f"(one level {levels.tolist()}); drop it")
                self.kinds_[name], self.levels_[name] = "categorical", levels
            else:
                v = values.astype(np.float64)
                sd = float(v.std())
                rounding = DEGENERATE_EPS * np.finfo(np.float64).eps * float(np.sqrt(np.mean(v**2)))
                if np.ptp(v) == 0 or not sd > rounding:  # standardising rounding noise would make it a covariate
                    raise AlignmentInputError(f"confound column {name!r}: constant over the training rows "
                                              f"(value {float(v[0])!r}, SD {sd:.3g}); drop it")
                self.kinds_[name], self.stats_[name] = "numeric", (float(v.mean()), sd)
        self.n_train_ = n
        return self

    @property
    def names(self) -> list[str]:
        """Design column names: numeric names and `<column>=<level>` for one-hot columns."""
        out = []
        for name in self.columns:
            if self.kinds_[name] == "numeric":
                out.append(name)
            else:
                out += [f"{name}={lvl}" for lvl in self.levels_[name][1:]]
        return out

    def transform(self, covariates: Covariates) -> np.ndarray:
        """float64 design [n, p] (no intercept) for any split, with the training statistics and levels."""
        if not hasattr(self, "kinds_"):
            raise AlignmentInputError("CovariateDesign: call fit() on the training rows first")
        n = self._rows(covariates)
        blocks = []
        for name in self.columns:
            values = self._column(covariates, name, n)
            if self.kinds_[name] == "numeric":
                if values.dtype.kind not in "biuf":
                    raise AlignmentInputError(f"confound column {name!r}: numeric in training, got {values.dtype}")
                mean, sd = self.stats_[name]
                blocks.append(((values.astype(np.float64) - mean) / sd)[:, None])
            else:
                text, levels = values.astype(str), self.levels_[name]
                unseen = sorted(str(u) for u in set(text) - set(levels))
                if unseen:
                    raise AlignmentInputError(
                        f"confound column {name!r}: levels {unseen[:10]} do not occur in the training rows "
                        f"(training levels {levels.tolist()}); split by {name!r} or drop those subjects")
                blocks.append((text[:, None] == levels[None, 1:]).astype(np.float64))
        return np.hstack(blocks)


class Residualiser:
    """Least squares of features on [1, design(covariates)] fitted on training rows only (float64); `transform`
    returns the residuals features - [1, design] @ beta of any split (training residuals have mean 0)."""

    def __init__(self, columns: Sequence[str], categorical: Sequence[str] = ()) -> None:
        self.design = CovariateDesign(columns, categorical)

    def fit(self, features: Any, covariates: Covariates) -> Residualiser:
        """Fit the design statistics and the regression on the training rows.

        A feature column whose training residual is within `DEGENERATE_EPS` units of roundoff of its own magnitude
        (root mean square; the unit: the input float type's epsilon, or float64's times the rows or the design's
        condition number when larger, the error scale of the least-squares residual) is (near-)collinear with the
        covariates: what is left of it is rounding noise, so `transform` returns 0 for it (`degenerate_` lists
        those columns) instead of a noise column that later rescaling would stretch.
        """
        self.design.fit(covariates)
        x = self._design(covariates)
        dtype = np.asarray(features).dtype
        y = _features(features, "features to residualise", len(x))
        if len(x) <= x.shape[1]:
            raise AlignmentInputError(f"confounds: {len(x)} training rows for {x.shape[1]} design columns "
                                      "(intercept included); need more rows than columns")
        self.coef_, _, self.rank_, _ = np.linalg.lstsq(x, y, rcond=None)  # min-norm if collinear
        resid = y - x @ self.coef_
        eps64 = np.finfo(np.float64).eps
        eps = max(np.finfo(dtype).eps if dtype.kind == "f" else 0.0, eps64 * len(x), eps64 * np.linalg.cond(x))
        rms = np.sqrt((resid**2).mean(0)), np.sqrt((y**2).mean(0))
        self.degenerate_ = np.flatnonzero(rms[0] <= DEGENERATE_EPS * eps * rms[1])
        total = ((y - y.mean(0)) ** 2).sum()
        self.r2_ = float(1 - (resid**2).sum() / total) if total > 0 else 0.0  # variance the confounds explain
        return self

    def _design(self, covariates: Covariates) -> np.ndarray:
        d = self.design.transform(covariates)
        return np.hstack([np.ones((len(d), 1)), d])

    def transform(self, features: Any, covariates: Covariates) -> np.ndarray:
        """Residuals of `features` [n, dim] (rows aligned with `covariates`) under the training fit."""
        if not hasattr(self, "coef_"):
            raise AlignmentInputError("Residualiser: call fit() on the training rows first")
        x = self._design(covariates)
        y = _features(features, "features to residualise", len(x))
        if y.shape[1] != self.coef_.shape[1]:
            raise AlignmentInputError(f"features to residualise: {y.shape[1]} columns, fitted on "
                                      f"{self.coef_.shape[1]}")
        out = y - x @ self.coef_
        out[:, self.degenerate_] = 0.0
        return out

    def fit_transform(self, features: Any, covariates: Covariates) -> np.ndarray:
        """fit() then transform() on the same (training) rows."""
        return self.fit(features, covariates).transform(features, covariates)


MIN_STRATUM_ROWS = 20  # training rows a stratum needs for its own location and scale


def merged_strata(levels: Sequence[Sequence[Any]], train: Any, min_rows: int = MIN_STRATUM_ROWS) -> np.ndarray:
    """One stratum label per row from nested labelings, finest first (e.g. ancestry cluster x site, then ancestry
    cluster): among the rows not yet placed, each group of a level with >= `min_rows` training rows becomes a
    stratum. Rows left after the coarsest level never mix its groups: they join the largest stratum of their own
    coarsest group, else form that group's stratum (>= 2 training rows), else join the largest stratum. Mixing
    groups would let a covariate fitted across them (a genetic PC) carry the groups' difference into the residuals
    of everybody (docs/confounds.md)."""
    train = np.asarray(train, dtype=bool)
    if not isinstance(min_rows, int) or min_rows < 1:
        raise AlignmentInputError(f"min_rows: expected an integer >= 1, got {min_rows!r}")
    if not len(levels):
        raise AlignmentInputError("strata: expected at least one level of labels")
    labels = np.full(len(train), "", dtype=object)
    left = np.ones(len(train), dtype=bool)
    values = []
    for depth, level in enumerate(levels):
        values.append(np.asarray(level).astype(str))
        if values[-1].shape != train.shape:
            raise AlignmentInputError(f"strata level {depth}: expected {len(train)} labels, got shape "
                                      f"{values[-1].shape}")
        for value in np.unique(values[-1][left]):
            rows = left & (values[-1] == value)
            if (rows & train).sum() >= min_rows:
                labels[rows], left[rows] = f"{depth}:{value}", False
    coarse = values[-1]
    for value in np.unique(coarse[left]):
        rows = left & (coarse == value)
        placed = ~left & (coarse == value) & train
        if placed.any():
            names, counts = np.unique(labels[placed].astype(str), return_counts=True)
            labels[rows] = names[np.argmax(counts)]
        elif (rows & train).sum() >= 2 or not (~left & train).any():
            labels[rows] = f"{len(levels) - 1}:{value}"
        else:
            names, counts = np.unique(labels[~left & train].astype(str), return_counts=True)
            labels[rows] = names[np.argmax(counts)]
    return labels.astype(str)


class StratumScaler:
    """Per-stratum scale of residual features (the scale step of ComBat-style harmonisation, without empirical-Bayes
    shrinkage): each column of a row is multiplied by pooled SD / its stratum's SD, both fitted on training rows,
    so groups (sites, ancestry clusters) that differ in feature variance, not only in mean, look alike. Columns
    constant within a stratum keep their scale there; strata unseen in training are left unchanged."""

    def fit(self, features: Any, strata: Sequence[Any]) -> StratumScaler:
        """Per-stratum and pooled SD of every column on the training rows."""
        x = _features(features, "features to scale")
        labels = np.asarray(strata).astype(str)
        if labels.shape != (len(x),):
            raise AlignmentInputError(f"strata: expected {len(x)} labels (one per row), got shape {labels.shape}")
        pooled = x.std(0)
        self.factors_: dict[str, np.ndarray] = {}
        for value in np.unique(labels):
            sd = x[labels == value].std(0)
            self.factors_[value] = np.where(sd > 0, pooled / np.where(sd > 0, sd, 1.0), 1.0)
        return self

    def transform(self, features: Any, strata: Sequence[Any]) -> np.ndarray:
        """Rows of any split scaled by their stratum's training factor."""
        if not hasattr(self, "factors_"):
            raise AlignmentInputError("StratumScaler: call fit() on the training rows first")
        x = _features(features, "features to scale")
        labels = np.asarray(strata).astype(str)
        if labels.shape != (len(x),):
            raise AlignmentInputError(f"strata: expected {len(x)} labels (one per row), got shape {labels.shape}")
        out = x.copy()
        for value, factor in self.factors_.items():
            out[labels == value] *= factor
        return out


class ConfoundSpace:
    """The `confounds_only` baseline: a ridge from each modality's training features to the training covariate
    design (StandardScaler + RidgeCV, alpha by leave-one-out), so a test subject's brain and genetic features are
    each turned into the confounds they reveal, then compared by cosine in that space (centred on the training
    design mean, which is 0 for the standardised numeric columns). A modality that carries no confound maps to
    near-constant predictions and retrieval stays at chance; the score is what confounds alone could explain."""

    def __init__(self, columns: Sequence[str], categorical: Sequence[str] = (),
                 alphas: Sequence[float] = RIDGE_ALPHAS) -> None:
        self.design = CovariateDesign(columns, categorical)
        self.alphas = np.asarray(alphas)

    def fit(self, brain: Any, genetics: Any, covariates: Covariates) -> ConfoundSpace:
        """Fit the design and both ridge maps on training rows only."""
        target = self.design.fit(covariates).transform(covariates)
        self.target_mean_ = target.mean(0)
        self.maps_: list[Pipeline] = []
        for what, x in (("brain", brain), ("genetics", genetics)):
            x = _features(x, f"train {what} features", len(target))
            with warnings.catch_warnings():  # tiny alphas on collinear features: the LOO CV rejects them
                warnings.simplefilter("ignore", LinAlgWarning)
                self.maps_.append(make_pipeline(StandardScaler(), RidgeCV(alphas=self.alphas)).fit(x, target))
        return self

    def transform(self, brain: Any, genetics: Any) -> tuple[np.ndarray, np.ndarray]:
        """(brain side, genetics side) of new paired rows in the covariate space."""
        if not hasattr(self, "maps_"):
            raise AlignmentInputError("ConfoundSpace: call fit() on the training rows first")
        b = _features(brain, "test brain features")
        g = _features(genetics, "test genetics features", len(b))
        return (self.maps_[0].predict(b) - self.target_mean_, self.maps_[1].predict(g) - self.target_mean_)


def confounds_only_records(
    brain_train: Any,
    genetics_train: Any,
    covariates_train: Covariates,
    brain_test: Any,
    genetics_test: Any,
    columns: Sequence[str],
    categorical: Sequence[str] = (),
    **retrieval_kw: Any,
) -> list[dict[str, Any]]:
    """Retrieval records (model `confounds_only`) of the test pairs in the `ConfoundSpace` fitted on train."""
    from alignment.baselines import space_records

    space = ConfoundSpace(columns, categorical).fit(brain_train, genetics_train, covariates_train)
    u, v = space.transform(brain_test, genetics_test)
    return space_records("confounds_only", u, v, **retrieval_kw)
