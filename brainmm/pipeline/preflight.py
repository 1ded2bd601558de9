"""`brainmm run` checks every stage's config against the data before the first stage starts: split sizes (align,
retrieval; the baselines are skipped with a warning), align's batch against the training subjects, probe targets
against the cohort's columns, and that every given input path is the kind of output its field expects, in one
message."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from brainmm.errors import BrainmmError
from brainmm.evaluate.baseline_registry import baseline_needs
from brainmm.pipeline.inputs import input_problems
from brainmm.pipeline.plan import Plan
from brainmm.preflight import (
    ALIGN_NEEDS,
    PIPELINE_SPLIT_FIX,
    SPLITS,
    describe,
    minimum_total,
    retrieval_needs,
    shortfalls,
    split_sizes,
)

LOG = logging.getLogger("brainmm.pipeline")
# the columns of a simulated cohort.csv (brainmm.data.simulate.cohort); ancestry with population.n_groups > 1
SIMULATED_COLUMNS = ("recording_id", "subject_id", "session", "family", "site", "tr", "file", "age", "sex",
                     "diagnosis")


def _counts(split: pd.DataFrame) -> dict[str, int]:
    return {s: int((split["split"] == s).sum()) for s in SPLITS}


def _data(plan: Plan) -> tuple[dict[str, int] | None, str, list[str] | None]:
    """(subjects per split, where they come from, cohort columns) as far as they are known before any stage."""
    from brainmm.data.splits import load_split

    cfg = plan.config
    split_path = Path(cfg.align.data.split)
    if not plan.runs["ingest"] or split_path != plan.fmri_dataset / "split.csv":
        if split_path.is_file():  # a given dataset's (or a given) split table
            return _counts(load_split(split_path)), f"split table {split_path}", None
        return None, "", None
    if plan.runs["simulate"]:
        sim = cfg.simulate
        columns = [*SIMULATED_COLUMNS, *(["ancestry"] if sim.population.n_groups > 1 else [])]
        if cfg.ingest.split_from is not None:
            return _counts(load_split(cfg.ingest.split_from)), f"split table {cfg.ingest.split_from}", columns
        sizes = split_sizes(sim.n_subjects, tuple(cfg.ingest.split_fractions))  # families: sizes are in groups
        return sizes, (f"simulate.n_subjects {sim.n_subjects} split by ingest.split_fractions "
                       f"{list(cfg.ingest.split_fractions)}"), columns
    from brainmm.data.fmri.ingest import planned_split

    cohort, split = planned_split(plan.fmri_cohort, cfg.ingest)
    split = split[split["subject_id"].astype(str).isin(set(cohort["subject_id"].astype(str)))]
    source = f"split table {cfg.ingest.split_from}" if cfg.ingest.split_from else f"the split of cohort {plan.fmri_cohort}"
    return _counts(split), source, list(cohort.columns)


def _probe_columns(plan: Plan, columns: list[str] | None) -> list[str] | None:
    """The cohort columns evaluate's probes / figures will find (None when unknown before the stages run)."""
    v = plan.config.evaluate
    target = Path(v.data.cohort) if v.data.cohort else None
    if target is None:
        return None
    if target == plan.fmri_dataset and plan.runs["ingest"]:
        return None if columns is None else [*columns, "split"]
    if target.exists():
        from brainmm.evaluate.inputs import read_cohort

        return list(read_cohort(target).columns)
    return None


def _batch_problem(plan: Plan, counts: dict[str, int] | None, source: str) -> list[str]:
    """align.train.batch_size larger than the training subjects (an upper bound of the training pairs)."""
    cfg = plan.config
    if counts is None or not plan.runs["align"]:
        return []
    train, batch = counts["train"], cfg.align.train.batch_size
    if plan.runs["simulate"] and cfg.ingest.split_from is None and cfg.simulate.genotypes.family_fraction > 0:
        train = cfg.simulate.n_subjects - (counts["val"] > 0) - (counts["test"] > 0)  # sibships split as groups
        source = f"at most {train} of simulate.n_subjects {cfg.simulate.n_subjects} after val and test"
    if batch <= train:
        return []
    return [f"align.train.batch_size {batch} is larger than the {train} training subjects ({source}), so align "
            f"would fail after the earlier stages; set align.train.batch_size <= {train}"]


def check_plan(plan: Plan) -> None:
    """Raise ONE error listing every size shortfall and unknown probe column; warn about baselines that will be
    skipped. Nothing has been written when this runs."""
    cfg = plan.config
    given = input_problems(plan)  # first: a missing cohort table is named as its field, with every other input
    unreadable = any(line.startswith("data.fmri_cohort ") for line in given)
    counts, source, columns = (None, "", None) if unreadable else _data(plan)
    problems: list[str] = []
    if counts is not None:
        needs = [*(ALIGN_NEEDS if plan.runs["align"] else ()),
                 *(retrieval_needs(cfg.evaluate.retrieval.splits) if plan.runs["evaluate"] else ())]
        problems += shortfalls(counts, needs)
    fix = [f"this run needs {minimum_total(needs)}; {PIPELINE_SPLIT_FIX}"] if problems else []
    if not problems:  # the batch against split sizes that can run (short splits are fixed first)
        problems += _batch_problem(plan, counts, source)
    v = cfg.evaluate
    wanted = list(dict.fromkeys([*v.probes.targets, *([v.probes.group_col] if v.probes.group_col else []),
                                 *([v.figures.color_by] if v.figures.color_by else [])]))
    available = _probe_columns(plan, columns) if plan.runs["evaluate"] and wanted else None
    if available is not None and (missing := [c for c in wanted if c not in available]):
        shown = [c for c in available if c not in ("subject_id", "split")]
        problems.append(f"evaluate.probes.targets / probes.group_col / figures.color_by name {missing}, not columns "
                        f"of the cohort (it has {shown})")
        fix.append("name cohort columns there, or set evaluate.probes.targets=[]")
    problems += given
    if problems:
        sizes = f"subjects per split: {describe(counts)} from {source}; " if counts is not None else ""
        raise BrainmmError(f"pipeline: the stages cannot run on this data ({sizes}nothing was run): "
                           f"{'; '.join(problems + fix)}")
    if counts is not None and plan.runs["evaluate"] and cfg.evaluate.baselines.methods:
        if short := shortfalls(counts, baseline_needs(cfg.evaluate.baselines.methods)):
            LOG.warning("pipeline: the evaluation will skip baselines %s (%s): %s", cfg.evaluate.baselines.methods,
                        describe(counts), "; ".join(short))
