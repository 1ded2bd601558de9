"""Scores of one side's input features (and their units) against each method's shared space (contributions to the
held-out paired similarity, or link scores): the trained model and the CCA baselines, with the model's own-side
columns (structure coefficient, head weight, integrated gradients)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from torch import nn

from brainmm.explain.config import ExplainSection

LOG = logging.getLogger("brainmm.explain")
MODEL = "model"  # the trained alignment's name among the methods


@dataclass
class Space:
    """Subject-level projections of one method's shared space, rows paired per split (fitted on train)."""

    brain_train: np.ndarray
    genetics_train: np.ndarray
    brain_test: np.ndarray
    genetics_test: np.ndarray
    genetics_map: np.ndarray | None = None  # [dim, p]: the genetics side's linear map (a baseline's loadings)

    def directions(self, n_dims: int) -> tuple[np.ndarray, np.ndarray]:
        """Shared directions and their training paired similarity (alignment.attribution.shared_directions)."""
        from alignment.attribution import shared_directions

        return shared_directions(self.brain_train, self.genetics_train, n_dims)


@dataclass
class Features:
    """Held-out input columns of one side with their description and the units they aggregate to."""

    name: str  # table name: variants, edges, brain_features, <modality>_features
    side: Literal["brain", "genetics"]
    x_test: np.ndarray  # [n_test, p], rows paired with the spaces' test rows
    table: pd.DataFrame  # one row per column of x_test
    units: dict[str, tuple[pd.DataFrame, Any]] = field(default_factory=dict)  # name -> (description, membership)
    projector: nn.Module | None = None  # the model's map from these columns to the shared space (own-side columns)
    train_mean: np.ndarray | None = None  # integrated-gradients baseline


def _columns(scores: Any, prefix: str, fdr: float) -> dict[str, np.ndarray]:
    cols = {"score": scores.score, "ci_low": scores.ci_low, "ci_high": scores.ci_high, "p": scores.pvalue,
            "q": scores.qvalue, "significant": scores.qvalue <= fdr}
    if prefix:  # a baseline: score, interval and q beside the model's
        return {f"{prefix}_{k}": cols[k] for k in ("score", "ci_low", "ci_high", "q")}
    return cols


def _head_map(feat: Features) -> np.ndarray | None:
    """The model head's linear map [dim, p] from these columns (affine projectors, read off with their
    standardiser); None without a projector or for a nonlinear one (its integrated gradients are the attribution)."""
    from alignment import AlignmentInputError
    from alignment.attribution import affine_map

    if feat.projector is None:
        return None
    try:
        return affine_map(feat.projector, feat.x_test.shape[1])[0]
    except AlignmentInputError:
        return None


def _linear_maps(feat: Features, spaces: dict[str, Space], head: np.ndarray | None) -> dict[str, np.ndarray] | None:
    """Each method's linear map [dim, p] from these columns to its shared space, when every method has one (the
    genetics side with an affine head: the head's and the CCA loadings); None otherwise (link scores for all, so the
    methods stay comparable)."""
    if feat.side != "genetics" or head is None:
        return None
    maps = {MODEL: head, **{name: space.genetics_map for name, space in spaces.items() if name != MODEL}}
    return None if any(m is None for m in maps.values()) else maps


def _own_side(feat: Features, space: Space, q: np.ndarray, head: np.ndarray | None,
              cfg: ExplainSection) -> dict[str, np.ndarray]:
    """The model's own-side columns: structure coefficient with the first shared direction's held-out projection,
    head weight norm on the shared directions (`head`: the affine head's map) and the mean integrated gradient of
    the paired similarity over held-out pairs."""
    from alignment.attribution import structure_coefficients
    from alignment.gradients import similarity_attributions

    own, partner = ((space.brain_test, space.genetics_test) if feat.side == "brain"
                    else (space.genetics_test, space.brain_test))
    out = {"structure_1": structure_coefficients(feat.x_test, own @ q[:, :1])[:, 0]}
    if feat.projector is None:
        return out
    if head is not None:
        out["weight"] = np.linalg.norm(q.T @ head, axis=0)
    attr, delta = similarity_attributions(feat.projector, feat.x_test, partner, feat.train_mean, cfg.ig_steps)
    LOG.info("explain: %s integrated gradients, max completeness error %.2g", feat.name, float(np.abs(delta).max()))
    out["attribution"] = attr.mean(axis=0)
    return out


def explain_features(feat: Features, spaces: dict[str, Space], cfg: ExplainSection,
                     seed: int = 0) -> dict[str, pd.DataFrame]:
    """One table per feature set and unit set: description, the model's score [CI], p, q, significant (and its
    own-side columns), then each baseline's score [CI] and q; rows in input order (every feature, not a top k).
    The score is each feature's contribution to the held-out paired similarity where every method maps the
    columns linearly (variants under linear heads), else the link score (alignment.attribution.link_scores)."""
    from alignment.attribution import link_scores

    tables = {feat.name: feat.table.reset_index(drop=True).copy()}
    tables.update({name: desc.reset_index(drop=True).copy() for name, (desc, _) in feat.units.items()})
    membership = {name: m for name, (_, m) in feat.units.items()}
    head = _head_map(feat)
    maps = _linear_maps(feat, spaces, head)
    LOG.info("explain: %s scored by %s", feat.name, "contribution" if maps else "link score")
    for method, space in spaces.items():
        q, lam = space.directions(cfg.n_dims)
        partner = (space.genetics_test if feat.side == "brain" else space.brain_test) @ q
        loadings = None if maps is None else (q.T @ maps[method]).T
        result = link_scores(feat.x_test, partner, lam, membership, cfg.n_permutations, cfg.n_boot, seed=seed,
                             loadings=loadings, fdr=cfg.fdr)
        prefix = "" if method == MODEL else method
        for name, scores in result.items():
            key = feat.name if name == "features" else name
            for col, values in _columns(scores, prefix, cfg.fdr).items():
                tables[key][col] = values
        if method == MODEL:
            for col, values in _own_side(feat, space, q, head, cfg).items():
                tables[feat.name][col] = values
        elif feat.side == "genetics" and space.genetics_map is not None:  # the baseline's weights, like the head's
            tables[feat.name][f"{method}_weight"] = np.linalg.norm(q.T @ space.genetics_map, axis=0)
    return tables


def top_rows(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k rows with the largest model score (ties by input order)."""
    return table.sort_values("score", ascending=False, kind="stable").head(k)
