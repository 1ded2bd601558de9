"""Resampling helpers shared by retrieval, probes and baselines: cluster bootstrap weights, percentile,
normal-approximation and Wilson CIs, small-N warnings, permutation p-values, and flattening of tidy records into
MLflow-safe metric names."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from alignment.errors import AlignmentInputError

# MLflow's own rule for metric and param names (mlflow.utils.validation): word characters, / . - space :
_UNSAFE = re.compile(r"[^/\w.\- :]")
MAX_NAME = 250  # MLflow's longest metric / param name
RIDGE_ALPHAS = np.logspace(-3, 5, 9)  # the ridge penalty grid of probes, baselines and confound checks
SMALL_N = 20  # below this many subjects a bootstrap interval is unreliable (and can collapse to a point)


def cluster_codes(labels: Sequence[Any] | np.ndarray | None, n: int, what: str) -> np.ndarray:
    """Integer cluster code per item (0..n_clusters-1); each item is its own cluster when `labels` is None."""
    if labels is None:
        return np.arange(n)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise AlignmentInputError(f"{what}: expected {n} labels (one per row), got shape {labels.shape}")
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def bootstrap_weights(codes: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield `n_boot` int64 vectors [n_clusters]: how often each cluster is drawn in one bootstrap replicate
    (as many draws as there are clusters, with replacement). Seeded; index items with `weights[codes]`."""
    if not isinstance(n_boot, int) or n_boot < 1:
        raise AlignmentInputError(f"n_boot: expected a positive integer, got {n_boot!r}")
    n_clusters = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.bincount(rng.integers(0, n_clusters, size=n_clusters), minlength=n_clusters)


def percentile_ci(samples: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval ((1-level)/2, (1+level)/2) along `axis`, ignoring NaN replicates."""
    if not 0.0 < level < 1.0:
        raise AlignmentInputError(f"level: expected a number in (0, 1), got {level!r}")
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)], axis=axis)
    return lo, hi


def normal_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and normal-approximation CI of the mean over repeats (MindEye's fixed-pool protocol)."""
    from scipy.stats import norm

    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        raise AlignmentInputError(f"repeats: need at least 2 values for a CI, got {values.size}")
    mean = float(values.mean())
    half = float(norm.ppf(0.5 + level / 2) * values.std(ddof=1) / np.sqrt(values.size))
    return mean, mean - half, mean + half


def wilson_ci(p: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion `p` observed on `n` independent units (subjects).

    Honest at small n (never a single point: at n = 2 and p = 1 it is [0.34, 1]); for the mean of any values in
    [0, 1] (e.g. reciprocal ranks) it is conservative, since their variance is at most p(1 - p).
    """
    from scipy.stats import norm

    if not 0.0 < level < 1.0:
        raise AlignmentInputError(f"level: expected a number in (0, 1), got {level!r}")
    if n < 1:
        raise AlignmentInputError(f"wilson_ci: need at least 1 unit, got {n}")
    p = min(max(float(p), 0.0), 1.0)
    z = float(norm.ppf(0.5 + level / 2))
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def small_n_cis(
    ci: dict[str, tuple[float, float]], point: Mapping[str, float], proportions: Sequence[str],
    bounded: Sequence[str], n: int, level: float = 0.95, what: str = "retrieval",
) -> dict[str, tuple[float, float]]:
    """Intervals that stay honest at small n (subjects): Wilson for the `proportions` (R@k), and for `bounded`
    means of values in [0, 1] (MRR) the bootstrap interval widened to contain the Wilson one when n < SMALL_N
    (a bootstrap of 2 subjects with equal ranks would claim an exact value). Warns below SMALL_N."""
    out = dict(ci)
    for name in proportions:
        out[name] = wilson_ci(point[name], n, level)
    if n < SMALL_N:
        warnings.warn(f"{what}: only {n} subjects; intervals are wide, and bootstrap intervals (ranks, MRR) are "
                      f"unreliable below {SMALL_N}", UserWarning, stacklevel=3)
        for name in bounded:
            lo, hi = wilson_ci(point[name], n, level)
            out[name] = (min(out[name][0], lo), max(out[name][1], hi))
    return out


def permutation_pvalue(observed: np.ndarray | float, null: np.ndarray) -> np.ndarray:
    """One-sided p-value (1 + #{null >= observed}) / (1 + n_perm); `null` is [n_perm, ...]."""
    null = np.asarray(null)
    return (1.0 + (null >= np.asarray(observed)).sum(axis=0)) / (1.0 + null.shape[0])


def metric_name(*parts: str | None) -> str:
    """MLflow-safe name from the non-empty parts joined by '/': '@' -> '_at_', any other character MLflow refuses
    -> '_', cut to MLflow's 250 characters (the one name cleaner; `brainmm.tracking.sanitize_metric_name` is it)."""
    name = "/".join(str(p) for p in parts if p not in (None, ""))
    return _UNSAFE.sub("_", name.replace("@", "_at_"))[:MAX_NAME]


STATS = ("ci_low", "ci_high", "chance", "perm_mean", "perm_std", "p_value")


def stat_name(name: str, stat: str | None = None) -> str:
    """The metric name of `stat` of metric `name`: `<name>` itself, or `<name>_<stat>` (`R_at_1_chance`,
    `R_at_1_ci_low`, `R_at_1_ci_high`, ...): the one spelling every report uses."""
    if stat is None:
        return name
    if stat not in STATS:
        raise ValueError(f"stat: expected one of {list(STATS)}, got {stat!r}")
    return f"{name}_{stat}"


def flatten_records(
    records: Sequence[Mapping[str, Any]],
    name_of: Callable[[Mapping[str, Any]], str],
    fields: Sequence[str] = ("ci_low", "ci_high", "chance"),
    prefix: str = "",
) -> dict[str, float]:
    """Flat {name: value} dict: `<prefix>/<name_of(record)>` for the value and `..._<field>` for each field.

    Fields that are missing, None or NaN in a record are skipped.
    """
    flat: dict[str, float] = {}
    for record in records:
        name = metric_name(prefix, name_of(record))
        flat[name] = float(record["value"])
        for field in fields:
            value = record.get(field)
            if value is not None and np.isfinite(value):
                flat[stat_name(name, field)] = float(value)
    return flat
