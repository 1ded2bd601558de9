"""Sizes `brainmm evaluate` checks before any work: retrieval needs are one error, baselines that cannot run are
skipped with a warning."""

from __future__ import annotations

import logging

from brainmm.errors import BrainmmError
from brainmm.evaluate.config import EvaluateConfig
from brainmm.evaluate.inputs import EvalInputs
from brainmm.preflight import (
    ALIGN_NEEDS,
    BASELINE_NEEDS,
    SPLIT_FIX,
    Need,
    describe,
    retrieval_needs,
    shortfalls,
)

LOG = logging.getLogger("brainmm.evaluate")


def check_retrieval_sizes(inputs: EvalInputs, cfg: EvaluateConfig) -> None:
    """One error naming every split x modality with fewer than 2 subjects of shared-space pairs."""
    problems = []
    for m in inputs.modalities:
        counts = {s: len(inputs.subjects(s, m)) for s in ("train", "val", "test")}
        problems += [f"{m}: {p} ({describe(counts)})" for p in shortfalls(counts, retrieval_needs(cfg.retrieval.splits))]
    if problems:
        raise BrainmmError(f"evaluate: too few subjects with shared-space brain and genetics embeddings: "
                           f"{'; '.join(problems)}; {SPLIT_FIX}, or evaluate fewer splits (retrieval.splits)")


def baseline_shortfall(inputs: EvalInputs, modality: str, needs: tuple[Need, ...] = BASELINE_NEEDS) -> list[str]:
    """Why the input-table baselines (their registered `needs`) cannot run for `modality` (empty when they can)."""
    counts = {s: len(inputs.subjects(s, modality, shared=False)) for s in ("train", "val", "test")}
    return shortfalls(counts, needs)


def shuffled_shortfall(inputs: EvalInputs) -> list[str]:
    """Why the shuffled-pair alignment cannot run (its align needs, plus test retrieval), empty when it can."""
    out = []
    for m in inputs.modalities:
        counts = {s: len(inputs.subjects(s, m)) for s in ("train", "val", "test")}
        out += [f"{m}: {p}" for p in shortfalls(counts, (*ALIGN_NEEDS, *retrieval_needs(["test"])))]
    return out


def skip_warning(what: str, problems: list[str]) -> None:
    """Log that `what` is skipped, and why."""
    LOG.warning("evaluate: %s skipped: %s", what, "; ".join(problems))
