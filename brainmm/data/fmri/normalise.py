"""Per-parcel normalisation: robust scaling with training-split statistics, per-recording z-score, or none.

Robust scaling (the BrainLM recipe, corrected): each recording is centred per parcel (its temporal mean
removed, as the original toolkit does), then `(x - median) / IQR` with the median and interquartile range of
each parcel computed over the training recordings only. The original code computed `x - median / IQR`
(operator precedence, BrainLM issue #19) and never released its statistics (issue #23), so statistics from
this module are not interchangeable with the released checkpoints' unpublished ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from brainmm.errors import BrainmmError
from brainmm.io import atomic_write_json

Method = Literal["robust", "zscore", "none"]
METHODS = ("robust", "zscore", "none")


def bad_parcels(signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of parcels with NaN/Inf values, and of finite parcels constant over time, in a [V, T] signal."""
    finite = np.isfinite(signal).all(axis=1)
    constant = finite & (signal.max(axis=1) == signal.min(axis=1))
    return np.nonzero(~finite)[0], np.nonzero(constant)[0]


REL_SPREAD = 1e-6  # a spread below this fraction of the typical parcel's counts as zero
MIN_SPREAD = float(np.finfo(np.float32).tiny)  # ...and so does one float32 cannot hold as a normal number


def near_zero_spread(spread: np.ndarray) -> np.ndarray:
    """Which parcels' spread (IQR or std) is zero in effect: NaN, <= MIN_SPREAD, or <= REL_SPREAD x the median
    positive spread of all parcels (dividing by it would blow values up to inf in float32)."""
    spread = np.asarray(spread, dtype=np.float64)
    positive = spread[np.isfinite(spread) & (spread > 0)]
    typical = float(np.median(positive)) if positive.size else 0.0
    limit = max(MIN_SPREAD, REL_SPREAD * typical)
    return ~np.isfinite(spread) | (spread <= limit)


def centre(signal: np.ndarray) -> np.ndarray:
    """Remove each parcel's temporal mean (float64; NaN rows stay NaN)."""
    x = np.asarray(signal, dtype=np.float64)
    return x - x.mean(axis=1, keepdims=True)


@dataclass
class NormStats:
    """Normalisation method plus, for robust scaling, per-parcel median and IQR (stored parcel order)."""

    method: Method
    parcel_labels: list[str]
    median: np.ndarray | None = None
    iqr: np.ndarray | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)
    zeroed: list[int] = field(default_factory=list)  # parcels with no spread in training: output 0 everywhere

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BrainmmError(f"normalisation {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.method == "robust":
            v = len(self.parcel_labels)
            for name in ("median", "iqr"):
                arr = getattr(self, name)
                if arr is None or np.shape(arr) != (v,):
                    raise BrainmmError(f"robust statistics: {name!r} must hold {v} values (one per parcel)")
                setattr(self, name, np.asarray(arr, dtype=np.float64))

    @property
    def num_parcels(self) -> int:
        """Parcel count these statistics apply to."""
        return len(self.parcel_labels)

    def transform(self, signal: np.ndarray, source: str = "signal") -> np.ndarray:
        """Normalise a [V, T] signal (stored parcel order) -> float32 [V, T]."""
        if signal.ndim != 2 or signal.shape[0] != self.num_parcels:
            raise BrainmmError(
                f"{source}: expected [{self.num_parcels}, T] (parcels x time), got {list(signal.shape)}"
            )
        if self.method == "none":
            return np.ascontiguousarray(signal, dtype=np.float32)
        x = centre(signal)
        if self.method == "zscore":
            std = x.std(axis=1, keepdims=True)
            x = np.divide(x, std, out=np.zeros_like(x), where=~near_zero_spread(std))
        else:
            x = (x - self.median[:, None]) / self.iqr[:, None]
        if self.zeroed:
            x[self.zeroed] = 0.0
        return x.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out: dict[str, Any] = {
            "method": self.method, "parcel_labels": self.parcel_labels, "fitted_on": self.fitted_on,
            "zeroed": [int(i) for i in self.zeroed],
        }
        if self.method == "robust":
            out["median"] = self.median.tolist()
            out["iqr"] = self.iqr.tolist()
        return out

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically); float64 values round-trip exactly."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        """Read statistics written by `save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise BrainmmError(f"normalisation statistics {path}: cannot be read ({err})") from err
        try:
            return cls(
                method=data["method"],
                parcel_labels=[str(x) for x in data["parcel_labels"]],
                median=data.get("median"),
                iqr=data.get("iqr"),
                fitted_on=data.get("fitted_on", {}),
                zeroed=[int(i) for i in data.get("zeroed", [])],
            )
        except KeyError as err:
            raise BrainmmError(f"normalisation statistics {path}: missing field {err}") from err


def fit_robust(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-parcel median and IQR (75th - 25th percentile) of centred training samples [V, N]; NaNs ignored."""
    pct = np.nanpercentile if np.isnan(samples).any() else np.percentile
    q25, q50, q75 = pct(samples, [25, 50, 75], axis=1)
    return q50, q75 - q25


class RobustSampler:
    """Collects a bounded, seeded sample of centred training time points for fitting robust statistics."""

    def __init__(self, num_recordings: int, max_timepoints: int, seed: int) -> None:
        self.per_recording = max(1, -(-max_timepoints // max(1, num_recordings)))
        self.seed = seed
        self.parts: list[np.ndarray] = []
        self.recordings = 0
        self.subsampled = False

    def add(self, signal: np.ndarray, row: int, masked: np.ndarray | None = None) -> None:
        """Add one training recording [V, T]; `masked` parcels (zeroed ones) are excluded (NaN)."""
        x = centre(signal)
        if masked is not None and len(masked):
            x[masked] = np.nan
        t = x.shape[1]
        if t > self.per_recording:
            cols = np.sort(np.random.default_rng([self.seed, row]).choice(t, self.per_recording, replace=False))
            x = x[:, cols]
            self.subsampled = True
        self.parts.append(x.astype(np.float32))
        self.recordings += 1

    def samples(self) -> np.ndarray:
        """All collected samples [V, N] (float64)."""
        if not self.parts:
            raise BrainmmError("robust normalisation: the training split has no recordings to fit statistics on")
        return np.concatenate(self.parts, axis=1).astype(np.float64)
