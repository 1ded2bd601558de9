"""Linear probes of cohort phenotypes on frozen representations of held-out subjects: the input brain and genetics
embeddings, both sides of the shared space and brain + genetics concatenated, on the same rows and folds.

With confounds, the adjusted representations are residualised again inside each probe fold (the adjustment fitted
on train leaves a confound-dependent shift in held-out subjects that a probe would learn back), the unadjusted
inputs are probed beside them (`<representation>_unadjusted`), and a target that is itself an adjusted covariate
is probed on the unadjusted inputs only."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from brainmm.errors import BrainmmError
from brainmm.evaluate.config import EvaluateConfig
from brainmm.evaluate.inputs import EvalInputs

LOG = logging.getLogger("brainmm.evaluate")
SUBJECT, GROUP = "_subject", "_group"  # internal columns of the probe table (cannot clash with a phenotype)


@dataclass
class ProbeData:
    """Rows (subjects) of the probes, their phenotypes and groups, and every representation [n, dim]."""

    table: pd.DataFrame  # _subject, _group, split, one column per phenotype
    representations: dict[str, np.ndarray]
    n_without_genetics: int  # held-out subjects left out for lacking a genetics (or shared) row
    design: np.ndarray | None = None  # covariate design of the rows (confounds set), fitted on train subjects
    adjusted: tuple[str, ...] = ()  # representations computed from adjusted inputs
    covariates: tuple[str, ...] = ()  # adjusted covariate columns (targets among them: unadjusted probes only)


def _shared_rows(inputs: EvalInputs, key: str, subjects: list[str]) -> np.ndarray:
    """Subject-level shared-space rows of `key` ('brain' or a modality) for subjects from several splits."""
    out: dict[str, np.ndarray] = {}
    for split, sides in inputs.shared.items():
        wanted = [s for s in subjects if inputs.split_of.get(s) == split]
        if wanted:
            out.update(zip(wanted, sides[key].subject_level(wanted, normalize=True)))
    return np.stack([out[s] for s in subjects])


def probe_data(inputs: EvalInputs, cfg: EvaluateConfig, confounds: Any = None) -> ProbeData:
    """Held-out subjects (probes.splits) with a brain row and every genetics modality, in both spaces; with
    `confounds` (brainmm.evaluate.confounds.Confounds) also the unadjusted inputs and the covariate design."""
    splits = set(cfg.probes.splits)
    chosen = cfg.probes.representations
    brain_input = inputs.input_brain("probes on 'brain' / 'concat'") if {"brain", "concat"} & set(chosen) else None
    candidates = sorted({s for split in splits if "brain" in inputs.shared.get(split, {})
                         for s in inputs.shared[split]["brain"].subjects})
    keep = []
    for s in candidates:
        sides = inputs.shared[inputs.split_of[s]]
        ok = all(k in sides and s in sides[k].subject_set for k in inputs.modalities)
        ok = ok and all(s in inputs.genetics[m].subject_set for m in inputs.modalities)
        if ok and (brain_input is None or s in brain_input.subject_set):
            keep.append(s)
    left_out = len(candidates) - len(keep)
    if left_out:
        LOG.info("probes: %d of %d subjects of splits %s lack a genetics modality and are left out", left_out,
                 len(candidates), sorted(splits))
    if not keep:
        raise BrainmmError(f"probes: no subject of splits {sorted(splits)} has brain and every genetics modality "
                           f"({inputs.modalities})")
    phen = inputs.phenotypes.reindex(keep)
    table = pd.DataFrame({SUBJECT: keep, GROUP: [inputs.group_of.get(s, s) for s in keep],
                          "split": [inputs.split_of[s] for s in keep]})
    for col in cfg.probes.targets:
        table[col] = phen[col].to_numpy()
    brain = brain_input.subject_level(keep, normalize=False) if brain_input is not None else None
    reps: dict[str, np.ndarray] = {}
    if "brain" in chosen:
        reps["brain"] = brain
    for m in inputs.modalities:
        genetics = inputs.genetics[m].subject_level(keep, normalize=False)
        if "genetics" in chosen:
            reps[m] = genetics
        if "concat" in chosen:
            reps[f"concat_brain_{m}"] = np.hstack([brain, genetics])
    if "shared_brain" in chosen:
        reps["shared_brain"] = _shared_rows(inputs, "brain", keep)
    if "shared_genetics" in chosen:
        reps.update({f"shared_{m}": _shared_rows(inputs, m, keep) for m in inputs.modalities})
    if confounds is None:
        return ProbeData(table, reps, left_out)
    adjusted = tuple(reps)
    reps.update(_unadjusted(confounds.raw, inputs.modalities, chosen, keep))
    return ProbeData(table, reps, left_out, _design(confounds, inputs, keep), adjusted,
                     tuple(confounds.config.columns))


def _unadjusted(raw: dict, modalities: list[str], chosen: list[str], keep: list[str]) -> dict[str, np.ndarray]:
    """`<representation>_unadjusted` of the input representations, from the tables before adjustment."""
    brain = raw["brain"].subject_level(keep, normalize=False) if "brain" in raw else None
    out: dict[str, np.ndarray] = {}
    if "brain" in chosen and brain is not None:
        out["brain_unadjusted"] = brain
    for m in modalities:
        genetics = raw[m].subject_level(keep, normalize=False)
        if "genetics" in chosen:
            out[f"{m}_unadjusted"] = genetics
        if "concat" in chosen and brain is not None:
            out[f"concat_brain_{m}_unadjusted"] = np.hstack([brain, genetics])
    return out


def _design(confounds: Any, inputs: EvalInputs, keep: list[str]) -> np.ndarray:
    """The covariate design of the probe rows, standardised/one-hot with the train subjects' statistics."""
    from alignment.confounds import CovariateDesign

    c, cov = confounds.config, confounds.covariates
    train = [s for s in cov.index if inputs.split_of.get(s) == "train"]
    absent = [s for s in keep if s not in cov.index]
    if absent:
        raise BrainmmError(f"probes: {len(absent)} probe subject(s) have no covariates, e.g. {absent[:5]}")
    design = CovariateDesign(c.columns, c.categorical).fit(cov.loc[train])
    return design.transform(cov.loc[keep])


def probe_records(data: ProbeData, cfg: EvaluateConfig) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Probe records (section 'probe') and the number of subjects dropped per target for a missing value."""
    from alignment.probes import probe_representations

    p = cfg.probes
    kw = {"subject_col": SUBJECT, "group_col": GROUP, "tasks": dict(p.tasks), "n_splits": p.n_splits,
          "n_boot": p.n_boot, "n_permutations": p.n_permutations, "level": cfg.level, "seed": cfg.seed}
    covariate_targets = [t for t in p.targets if t in data.covariates]
    others = [t for t in p.targets if t not in data.covariates]
    report = probe_representations(data.representations, data.table, others, confounds=data.design,
                                   adjusted=data.adjusted, **kw)
    if covariate_targets:
        unadjusted = {k: v for k, v in data.representations.items() if k not in data.adjusted}
        LOG.warning("probe target(s) %s are adjusted covariates (confounds.covariates): probed on the unadjusted "
                    "inputs only (%s); on adjusted representations they would measure the adjustment, not the data",
                    covariate_targets, ", ".join(unadjusted) or "none chosen")
        if unadjusted:
            extra = probe_representations(unadjusted, data.table, covariate_targets, **kw)
            report.records += extra.records
            report.dropped.update(extra.dropped)
    for target, n in report.dropped.items():
        if n:
            LOG.info("probe target %r: %d of %d subjects have no value and are dropped", target, n, len(data.table))
    records = [{**r, "section": "probe", "split": "+".join(p.splits), "model": None} for r in report.records]
    return records, dict(report.dropped)
