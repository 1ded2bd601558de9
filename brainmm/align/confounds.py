"""Confound adjustment of the input features (docs/confounds.md): the per-subject
covariate table (cohort columns + genetic PCs) and residualisation of a table's rows fitted on training subjects."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmm.align.confounds_config import ANCESTRY, CELL, STRATUM, ConfoundsConfig
from brainmm.errors import BrainmmError

LOG = logging.getLogger("brainmm.align")
def _read_cohort(path: str) -> pd.DataFrame:
    from brainmm.data.cohort import read_table

    p = Path(path)
    if p.is_dir():
        from brainmm.data.fmri import FmriDataset

        cohort = FmriDataset.load(p).cohort
    else:
        cohort = read_table(p)
    if "subject_id" not in cohort.columns:
        raise BrainmmError(f"confounds cohort table {path}: no subject_id column")
    cohort = cohort.copy()
    cohort["subject_id"] = cohort["subject_id"].astype(str)
    return cohort


def covariate_table(cfg: ConfoundsConfig, subjects: list[str], where: str, optional: set[str] = frozenset()) \
        -> pd.DataFrame:
    """One row per subject of `subjects` (index subject_id, that order): the cohort covariates (numeric columns
    averaged over a subject's rows, others one value per subject) and pc1..pcK. A column missing from the
    cohort table, a missing value, a subject without a row or PCs, or a constant column is an error naming it;
    subjects in `optional` without a cohort row or PCs are left out instead."""
    cfg.require_sources(where)
    wanted = list(dict.fromkeys(subjects))
    cohort = _read_cohort(cfg.cohort) if cfg.covariates else None
    pcs_table = None
    if cfg.genetic_pcs:
        from brainmm.embeddings import EmbeddingTable

        pcs_table = EmbeddingTable.load(cfg.pcs)
    if optional:
        known = set(cohort["subject_id"]) if cohort is not None else None
        if pcs_table is not None:
            known = set(pcs_table.ids) if known is None else known & set(pcs_table.ids)
        wanted = [s for s in wanted if s not in optional or s in known]
    out = pd.DataFrame(index=pd.Index(wanted, name="subject_id"))
    if cohort is not None:
        have = [c for c in cohort.columns if c != "subject_id"]
        for col in cfg.covariates:
            if col not in cohort.columns:
                raise BrainmmError(f"confound column {col!r} (confounds.covariates): not in the cohort table "
                                   f"{cfg.cohort} (columns: {have})")
        rows = cohort[cohort["subject_id"].isin(set(wanted))]
        present = set(rows["subject_id"])
        absent = [s for s in wanted if s not in present]
        if absent:
            raise BrainmmError(f"confounds cohort table {cfg.cohort}: {len(absent)} subject(s) have no row, e.g. "
                               f"{absent[:5]}")
        grouped = rows.groupby("subject_id", sort=False)
        for col in cfg.covariates:
            values = rows[col]
            if values.isna().any():
                bad = sorted(set(rows.loc[values.isna(), "subject_id"]))
                raise BrainmmError(f"confound column {col!r}: {len(bad)} subject(s) have a missing value, e.g. "
                                   f"{bad[:5]} in {cfg.cohort} (impute or drop those subjects first)")
            if col not in cfg.categorical:
                from brainmm.data.cohort import check_numeric_cells

                check_numeric_cells(values, rows["subject_id"], f"confound column {col!r}", cfg.cohort,
                                    f"list {col!r} in confounds.categorical")
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            if numeric and np.isinf(values.to_numpy(dtype=np.float64)).any():
                bad = sorted(set(rows.loc[np.isinf(values.to_numpy(dtype=np.float64)), "subject_id"]))
                raise BrainmmError(f"confound column {col!r}: {len(bad)} subject(s) have an infinite value, e.g. "
                                   f"{bad[:5]} in {cfg.cohort}; expected finite numbers")
            if numeric and col not in cfg.categorical:
                out[col] = grouped[col].mean().reindex(wanted).to_numpy(dtype=np.float64)
            else:
                text = rows.assign(**{col: values.astype(str)})
                counts = text.groupby("subject_id", sort=False)[col].nunique()
                if (counts > 1).any():
                    bad = counts.index[counts > 1][0]
                    found = sorted(set(text.loc[text["subject_id"] == bad, col]))
                    raise BrainmmError(f"confound column {col!r}: subject {bad!r} has different values {found} on "
                                       f"its rows in {cfg.cohort}; expected one per subject")
                first = text.drop_duplicates("subject_id").set_index("subject_id")[col]
                out[col] = first.reindex(wanted).to_numpy(dtype=object)
            if out[col].nunique() < 2:
                raise BrainmmError(f"confound column {col!r}: constant ({out[col].iloc[0]!r}) over the "
                                   f"{len(wanted)} subjects in {cfg.cohort}; drop it")
    if pcs_table is not None:
        table = pcs_table
        if table.dim < cfg.genetic_pcs:
            raise BrainmmError(f"confounds.pcs {cfg.pcs}: {table.dim} PCs, fewer than confounds.genetic_pcs="
                               f"{cfg.genetic_pcs}")
        index = {s: i for i, s in enumerate(table.ids)}
        absent = [s for s in wanted if s not in index]
        if absent:
            raise BrainmmError(f"confounds.pcs {cfg.pcs}: {len(absent)} subject(s) have no PCs, e.g. {absent[:5]}")
        pcs = table.vectors[[index[s] for s in wanted], : cfg.genetic_pcs].astype(np.float64)
        if not np.isfinite(pcs).all():
            raise BrainmmError(f"confounds.pcs {cfg.pcs}: NaN/inf values")
        for i, name in enumerate(cfg.pc_names):
            out[name] = pcs[:, i]
    return out



def ancestry_clusters(cfg: ConfoundsConfig, covariates: pd.DataFrame, train: set[str]) -> np.ndarray | None:
    """Ancestry cluster per row of `covariates` (KMeans on the train subjects' genetic PCs, number by silhouette,
    seed 0, so align and evaluate draw the same clusters); None without genetic PCs."""
    if not cfg.genetic_pcs:
        return None
    from alignment.stratified import AncestryClusters

    pcs = covariates[cfg.pc_names].to_numpy(dtype=np.float64)
    rows = covariates.index.isin(list(train))
    if rows.sum() < 3:
        raise BrainmmError(f"confounds: {int(rows.sum())} training subjects with genetic PCs; need at least 3 to "
                           "cluster ancestry")
    return AncestryClusters(seed=0).fit(pcs[rows]).predict(pcs)


def with_strata(cfg: ConfoundsConfig, covariates: pd.DataFrame, train: set[str]) -> pd.DataFrame:
    """`covariates` plus ANCESTRY (with genetic PCs), CELL (ancestry cluster x every categorical covariate) and, when that gives >= 2 strata
    with MIN_STRATUM_ROWS training rows, STRATUM: cells merged (categorical columns dropped from the end, then
    the cluster alone, then the rest) until each has that many training rows (`alignment.confounds.merged_strata`).
    `residualise_rows` takes STRATUM as the design's categorical part and scales residuals within it."""
    from alignment.confounds import merged_strata

    categorical = [c for c in cfg.covariates if c in cfg.categorical
                   or not pd.api.types.is_numeric_dtype(covariates[c])]
    parts = [covariates[c].astype(str).to_numpy() for c in categorical]
    clusters = ancestry_clusters(cfg, covariates, train)
    out = covariates.copy()
    if clusters is not None:
        out[ANCESTRY] = clusters
        parts.insert(0, np.array([f"ancestry{c}" for c in clusters]))
    if not parts:
        return out
    levels = [np.array(["|".join(p) for p in zip(*parts[:k])]) for k in range(len(parts), 0, -1)]
    out[CELL] = levels[0]
    fit = covariates.index.isin(list(train))
    stratum = merged_strata(levels, fit)
    if len(np.unique(stratum[fit])) >= 2:
        out[STRATUM] = stratum
    return out


@dataclass
class Adjusted:
    """Residualised rows of one table and what the fit explained."""

    vectors: np.ndarray  # float32 [rows, dim]
    r2: float  # share of the training rows' feature variance the confounds explain
    n_train: int  # training rows the regression was fitted on


def design_columns(cfg: ConfoundsConfig, covariates: pd.DataFrame, side: str) -> tuple[list[str], list[str]]:
    """(columns, categorical) of one side's regression design. Shared by both sides: the categorical covariates
    (or the STRATUM column that carries them, with the ancestry clusters); the brain side adds the numeric
    covariates (age, motion, ...), the genetics side the genetic PCs. A covariate fitted on train and applied to
    held-out subjects on *both* sides leaves its fit error, times the subject's own value, in both residuals, and
    a model links the two through it: PCs regressed out of the brain put each subject's own genotype projection into
    its brain residual, age regressed out of genotypes puts age into them. Strata are constant within a cell, so
    what they leave behind cannot link two subjects' own values (docs/confounds.md)."""
    numeric = [c for c in cfg.covariates if c not in set(cfg.categorical)
               and pd.api.types.is_numeric_dtype(covariates[c])]
    shared = [STRATUM] if STRATUM in covariates.columns else [c for c in cfg.covariates if c not in numeric]
    own = numeric if side == "brain" else cfg.pc_names
    return [*own, *shared], shared


def residualise_rows(cfg: ConfoundsConfig, covariates: pd.DataFrame, vectors: np.ndarray, subjects: list[str],
                     train: set[str], what: str, side: str = "brain") -> Adjusted:
    """Residuals of every row of `vectors` (subject `subjects[i]`, covariates by subject) under the least-squares
    fit on the rows of `train` subjects (`alignment.confounds.Residualiser`) on `design_columns` of `side`
    ('brain' or 'genetics'); with a STRATUM column (`with_strata`) the residuals are also scaled within strata."""
    from alignment.confounds import Residualiser, StratumScaler

    rows = covariates.loc[subjects]
    fit = np.array([s in train for s in subjects], dtype=bool)
    if fit.sum() < 2:
        raise BrainmmError(f"confounds ({what}): {int(fit.sum())} training rows; need more")
    columns, categorical = design_columns(cfg, rows, side)
    if not columns:
        LOG.info("confounds: %s not adjusted (no covariate of the %s side among %s)", what, side, cfg.columns)
        return Adjusted(np.asarray(vectors, dtype=np.float32), 0.0, int(fit.sum()))
    res = Residualiser(columns, categorical).fit(vectors[fit], rows.iloc[np.flatnonzero(fit)])
    out = res.transform(vectors, rows)
    if STRATUM in rows.columns:
        strata = rows[STRATUM].to_numpy()
        out = StratumScaler().fit(out[fit], strata[fit]).transform(out, strata)
    out = out.astype(np.float32)
    LOG.info("confounds: %s residualised on %s (fitted on %d train rows; R^2 %.3f)", what, ", ".join(columns),
             int(fit.sum()), res.r2_)
    if len(res.degenerate_):
        LOG.warning("confounds (%s): %d of %d column(s) (0-based %s; for a genotype matrix, those rows of its "
                    ".variants.tsv) are (near-)exact linear combinations of the covariates %s on the train rows: "
                    "their residual is rounding noise and is set to 0; drop that covariate or those columns if this "
                    "is not intended", what, len(res.degenerate_), out.shape[1], res.degenerate_[:10].tolist(),
                    columns)
    if res.r2_ > 0.5:
        LOG.warning("confounds (%s): the adjustment removed %.0f %% of the variance of the train rows (covariates "
                    "%s); the alignment sees what is left. Check that no covariate duplicates the features (e.g. "
                    "too many genetic PCs for few variants)", what, 100 * res.r2_, columns)
    return Adjusted(out, float(res.r2_), int(fit.sum()))


def input_adjuster(cfg: ConfoundsConfig, report: dict) -> Callable:
    """The `adjust` hook of `load_align_data`: residualise the brain rows and every genetics table on the
    confounds, fitted on the train subjects of the split; `report` receives R^2 and row counts per side."""
    from brainmm.align.data import table_subjects
    from brainmm.embeddings import EmbeddingTable

    def adjust(brain: Any, genetics: dict[str, EmbeddingTable], split_of: dict[str, str]) -> dict[str, EmbeddingTable]:
        if brain.vectors is None:
            raise BrainmmError("align config field 'confounds': a trainable BrainLM tower reads fMRI windows, which "
                               "cannot be residualised; use a brain table or a frozen tower (trainable: frozen)")
        train = {s for s, name in split_of.items() if name == "train"}
        brain_rows = [i for i, s in enumerate(brain.subjects) if s in split_of]
        gen_subjects = {m: table_subjects(t, f"genetics table {m}") for m, t in genetics.items()}
        optional = {s for subjects in gen_subjects.values() for s in subjects} - set(brain.subjects)
        every = [brain.subjects[i] for i in brain_rows]
        every += [s for subjects in gen_subjects.values() for s in subjects if s in split_of]
        cov = with_strata(cfg, covariate_table(cfg, every, "align", optional), train)
        vectors = np.array(brain.vectors, dtype=np.float32, copy=True)
        fit = residualise_rows(cfg, cov, vectors[brain_rows], [brain.subjects[i] for i in brain_rows], train,
                               "brain inputs")
        vectors[brain_rows] = fit.vectors
        brain.vectors = vectors
        report["brain"] = {"r2": fit.r2, "train_rows": fit.n_train}
        out = {}
        for m, table in genetics.items():
            keep = [i for i, s in enumerate(gen_subjects[m]) if s in split_of and s in cov.index]
            dropped = sum(s in split_of for s in gen_subjects[m]) - len(keep)
            if dropped:
                LOG.warning("confounds: %d subject(s) of genetics table %r (no brain rows) have no covariates and are "
                            "left out", dropped, m)
            subjects = [gen_subjects[m][i] for i in keep]
            fit = residualise_rows(cfg, cov, table.vectors[keep], subjects, train, f"{m} inputs", "genetics")
            if table.meta.get("kind") == "genotype_matrix":  # a genotype tower takes dosages in [0, 2]
                fit.vectors = to_dosage_range(fit.vectors, np.array([s in train for s in subjects]))
            part = table.subset([table.ids[i] for i in keep])
            if "subject_id" in table.meta:
                part.meta["subject_id"] = {table.ids[i]: gen_subjects[m][i] for i in keep}
            out[m] = EmbeddingTable(part.ids, fit.vectors, part.meta)
            report[m] = {"r2": fit.r2, "train_rows": fit.n_train}
        return out

    return adjust


def to_dosage_range(residuals: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Per column, the affine map of the training rows' residual range onto [0, 2] (other rows clipped to it):
    a genotype tower takes dosages in [0, 2] and standardises its inputs, so on the training rows this changes
    nothing but the scale; the residuals stay uncorrelated with the confounds."""
    lo, hi = residuals[train].min(axis=0), residuals[train].max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.clip(2.0 * (residuals - lo) / span, 0.0, 2.0).astype(np.float32)
