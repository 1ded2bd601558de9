"""Confounds in an evaluation (docs/confounds.md): the inputs residualised as in the align run (before every baseline
and probe), the `confounds_only` baseline, within-stratum retrieval (site, ancestry cluster) and the unadjusted
comparison (the same alignment trained without adjustment, reported as `retrieval/unadjusted/...`)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmm.align import ANCESTRY
from brainmm.errors import BrainmmError
from brainmm.evaluate.config import EvaluateConfig
from brainmm.evaluate.inputs import AlignRun, EvalInputs, Side
from brainmm.evaluate.retrieval import library_record, retrieval_kwargs

LOG = logging.getLogger("brainmm.evaluate")


@dataclass
class Confounds:
    """The resolved confounds of an evaluation and the per-subject covariate table."""

    config: Any  # brainmm.align.ConfoundsConfig
    covariates: pd.DataFrame  # index subject_id
    strata: list[str] = field(default_factory=list)  # categorical covariates: within-<column> retrieval
    records: list[dict[str, Any]] = field(default_factory=list)  # confounds_only (computed on unadjusted inputs)
    raw: dict[str, Side] = field(default_factory=dict)  # the input sides before adjustment ('brain', modalities)


def resolve_confounds(cfg: EvaluateConfig, run: AlignRun) -> Any:
    """The confounds of the evaluation: those of the align run (the evaluate section may repeat them and give other
    paths to the same tables); None when the align run was not adjusted."""
    mine, theirs = cfg.confounds, run.config.confounds
    keys = ("covariates", "categorical", "genetic_pcs")
    if mine.enabled and not theirs.enabled:
        raise BrainmmError(f"evaluate config field 'confounds': align run {run.run_id} was trained without "
                           "confounds; set them in the align config (the evaluation then trains the unadjusted "
                           "comparison itself) or leave evaluate's confounds empty")
    if mine.enabled and any(getattr(mine, k) != getattr(theirs, k) for k in keys):
        raise BrainmmError(f"evaluate config field 'confounds': {[getattr(mine, k) for k in keys]} differs from the "
                           f"align run's {[getattr(theirs, k) for k in keys]} (covariates, categorical, genetic_pcs); "
                           "leave it empty to use the align run's")
    if not theirs.enabled:
        return None
    return dataclasses.replace(theirs, pcs=mine.pcs or theirs.pcs,
                               cohort=mine.cohort or theirs.cohort or cfg.data.cohort)


def prepare_confounds(cfg: EvaluateConfig, inputs: EvalInputs) -> Confounds | None:
    """Read and check the covariates, compute `confounds_only` on the unadjusted inputs, then residualise the input
    tables in place (fitted on train subjects, exactly as `brainmm align` did). None without confounds."""
    from brainmm.align import covariate_table, with_strata

    conf = resolve_confounds(cfg, inputs.run)
    if conf is None:
        return None
    sides = ([inputs.brain] if inputs.brain is not None else []) + list(inputs.genetics.values())
    required = {s for s in inputs.brain.subjects if s in inputs.split_of} if inputs.brain is not None else set()
    for split_sides in inputs.shared.values():  # every paired subject needs covariates (within-stratum retrieval)
        if "brain" in split_sides:
            required |= set(split_sides["brain"].subjects)
    in_split = sorted(required) + [s for side in sides for s in side.subjects if s in inputs.split_of]
    train = {s for s, name in inputs.split_of.items() if name == "train"}
    cov = with_strata(conf, covariate_table(conf, in_split, "evaluate", set(in_split) - required), train)
    strata = [c for c in conf.covariates if c in conf.categorical or not pd.api.types.is_numeric_dtype(cov[c])]
    out = Confounds(conf, cov, strata)
    out.raw = {**({"brain": inputs.brain} if inputs.brain is not None else {}), **inputs.genetics}
    if inputs.brain is not None:
        out.records = _confounds_only(inputs, out, cfg)
        _adjust_side(inputs, out, "brain")
    for m in inputs.modalities:
        _adjust_side(inputs, out, m)
    return out


def _adjust_side(inputs: EvalInputs, conf: Confounds, key: str) -> None:
    """Replace one input table's rows (subjects in the split with covariates) by their residuals."""
    from brainmm.align import residualise_rows, to_dosage_range
    from brainmm.embeddings import EmbeddingTable

    side = inputs.brain if key == "brain" else inputs.genetics[key]
    train = {s for s, name in inputs.split_of.items() if name == "train"}
    keep = [i for i, s in enumerate(side.subjects) if s in inputs.split_of and s in conf.covariates.index]
    subjects = [side.subjects[i] for i in keep]
    fit = residualise_rows(conf.config, conf.covariates, side.table.vectors[keep], subjects, train,
                           f"{key} inputs", "brain" if key == "brain" else "genetics")
    if key != "brain" and side.table.meta.get("kind") == "genotype_matrix":
        fit.vectors = to_dosage_range(fit.vectors, np.array([s in train for s in subjects]))
    table = side.table.subset([side.table.ids[i] for i in keep])
    table = EmbeddingTable(table.ids, fit.vectors, table.meta)
    adjusted = Side(table, subjects, side.path)
    if key == "brain":
        inputs.brain = adjusted
    else:
        inputs.genetics[key] = adjusted


def _confounds_only(inputs: EvalInputs, conf: Confounds, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """`alignment.confounds.confounds_only_records` per modality: both modalities' (unadjusted) input features
    mapped onto the covariate design (ridge fitted on train), test retrieval in that space."""
    from alignment.confounds import confounds_only_records

    records: list[dict[str, Any]] = []
    c = conf.config
    for m in inputs.modalities:
        s_train, b_train, g_train = inputs.pairs("train", m, shared=False)
        s_test, b_test, g_test = inputs.pairs("test", m, shared=False)
        if len(s_train) < 3 or len(s_test) < 2:
            LOG.info("confounds_only (%s): too few train/test subjects with both inputs; skipped", m)
            continue
        recs = confounds_only_records(b_train, g_train, conf.covariates.loc[s_train], b_test, g_test, c.columns,
                                      c.categorical, **retrieval_kwargs(cfg))
        records += [library_record(r, m, section="baseline", split="test", model="confounds_only") for r in recs]
    return records


def stratified_records(inputs: EvalInputs, conf: Confounds, cfg: EvaluateConfig,
                       shared: dict[str, dict[str, Side]] | None = None, variant: str = "") -> list[dict[str, Any]]:
    """Within-stratum retrieval of the test pairs in the shared space: candidates restricted to the query's site
    (every categorical covariate) and ancestry cluster (KMeans on the train subjects' genetic PCs)."""
    from alignment.stratified import within_stratum_report

    cov = conf.covariates
    strata: dict[str, Any] = {}
    for col in conf.strata:
        strata[col] = lambda subjects, col=col: cov.loc[subjects, col].astype(str).to_numpy()
    if ANCESTRY in cov.columns:
        strata[ANCESTRY] = lambda subjects: cov.loc[subjects, ANCESTRY].to_numpy()
    records: list[dict[str, Any]] = []
    r = cfg.retrieval
    for m in inputs.modalities:
        subjects, brain, genetics = _test_pairs(inputs, m, shared)
        if len(subjects) < 2:
            continue
        for name, labels in strata.items():
            try:
                report = within_stratum_report(brain, genetics, labels(subjects), name=name, ks=tuple(r.ks),
                                               n_boot=r.n_boot, level=cfg.level, seed=cfg.seed)
            except ValueError as err:  # no stratum with two test subjects
                LOG.info("within-%s retrieval (%s): %s; skipped", name, m, err)
                continue
            level = f"within_{name}"
            records += [library_record(x, m, section="retrieval", split="test", model="aligned", level=level,
                                       variant="/".join(p for p in (variant, level) if p))
                        for x in report.records]
    return records


def _test_pairs(inputs: EvalInputs, modality: str, shared: dict[str, dict[str, Side]] | None) -> tuple:
    if shared is None:
        return inputs.pairs("test", modality)
    b, g = shared["brain"], shared[modality]
    subjects = sorted(b.subject_set & g.subject_set)
    return subjects, b.subject_level(subjects, True), g.subject_level(subjects, True)


def unadjusted_run(inputs: EvalInputs, conf: Confounds, cfg: EvaluateConfig,
                   folder: Path) -> tuple[list[dict[str, Any]], str]:
    """Train the same alignment without confounds (same input tables, split, settings) into `folder/align` and
    report its test retrieval as `retrieval/unadjusted/...` (and its within-stratum retrieval). Returns the
    records and that run's MLflow id."""
    from alignment.retrieval import retrieval_report
    from brainmm.align import AlignConfig, run_align, table_subjects
    from brainmm.config import from_dict, to_dict
    from brainmm.embeddings import EmbeddingTable

    run = inputs.run
    data = to_dict(run.config)
    data["name"] = f"{run.config.name}-unadjusted"
    data["output_dir"] = str(folder / "align")
    data["confounds"] = to_dict(type(conf.config)())
    data["data"].update(genetics={m: inputs.genetics[m].path for m in inputs.modalities}, split=inputs.split_path)
    if inputs.brain is not None:
        data["data"]["brain"] = inputs.brain.path
    data["tracking"].update(uri=run.tracking_uri, experiment=run.experiment, run_name=None)
    LOG.info("confounds: training the unadjusted alignment in %s", folder / "align")
    result = run_align(from_dict(AlignConfig, data))

    import mlflow

    mlflow.MlflowClient(run.tracking_uri).set_tag(result.run_id, "brainmm.unadjusted_of", run.run_id)
    kw = {**retrieval_kwargs(cfg), "kway": None}
    records: list[dict[str, Any]] = []
    test = result.embeddings["test"]
    sides = {k: Side(t, table_subjects(t, str(test[k])), str(test[k]))
             for k, t in ((k, EmbeddingTable.load(p)) for k, p in test.items())}
    for m in inputs.modalities:
        if "brain" not in sides or m not in sides:
            raise BrainmmError(f"confounds: the unadjusted run wrote no test embeddings for {m!r}")
        subjects = sorted(sides["brain"].subject_set & sides[m].subject_set)
        b, g = (sides[k].subject_level(subjects, normalize=True) for k in ("brain", m))
        for r in retrieval_report(b, g, **kw).records:
            if r.get("level") in (None, "recording", "subject"):
                records.append(library_record(r, m, section="retrieval", split="test", model="aligned_unadjusted",
                                              variant="unadjusted"))
    records += stratified_records(inputs, conf, cfg, sides, variant="unadjusted")
    return records, str(result.run_id)
