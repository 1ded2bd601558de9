"""Brain <-> genetics retrieval of the trained model in the shared space: subject level (recordings averaged),
recording level (each recording a query; any item of the subject a hit) and the K-random-candidates protocol, each
with permutation p-values over the test pairing; and the held-out correlation of each paired shared dimension."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from brainmm.errors import BrainmmError
from brainmm.evaluate.config import EvaluateConfig
from brainmm.evaluate.inputs import EvalInputs

LOG = logging.getLogger("brainmm.evaluate")


def modality_direction(direction: str | None, modality: str) -> str | None:
    """'brain_to_genetics' -> 'brain_to_<modality>' (the library calls every genetics side 'genetics')."""
    if direction is None:
        return None
    return "_".join(modality if part == "genetics" else part for part in direction.split("_"))


def retrieval_kwargs(cfg: EvaluateConfig) -> dict[str, Any]:
    """Arguments of `alignment.retrieval.retrieval_report` shared by the model and every baseline."""
    r = cfg.retrieval
    return {"ks": tuple(r.ks), "kway": r.kway or None, "kway_repeats": r.kway_repeats, "n_boot": r.n_boot,
            "n_perm": r.n_permutations, "level": cfg.level, "seed": cfg.seed}


Strata = Callable[[Sequence[str]], np.ndarray]  # subjects -> permutation stratum per subject (confounds set)


def confound_strata(inputs: EvalInputs, conf: Any, cfg: EvaluateConfig) -> Strata:
    """Permutation strata with confounds (a `brainmm.evaluate.confounds.Confounds`): the cells of every categorical
    covariate (site, ...) crossed with the ancestry cluster (`brainmm.align.confounds.with_strata`), so test
    pairings shuffle only between subjects who share them and the adjusted p-value stays valid whatever the
    adjustment leaves behind (issue 30)."""
    from brainmm.align import CELL

    cov = conf.covariates

    def strata(subjects: Sequence[str]) -> np.ndarray:
        if CELL not in cov.columns:
            return np.zeros(len(subjects), dtype=np.int64)
        return np.unique(cov.loc[list(subjects), CELL].to_numpy(), return_inverse=True)[1].reshape(-1)

    return strata


def heldout_correlations(inputs: EvalInputs, cfg: EvaluateConfig, modality: str,
                         strata: Strata | None = None) -> list[dict[str, Any]]:
    """`canonical_corr_<k>` of the trained model on test subjects: CCA (PCA size and number of pairs chosen on val,
    as the CCA baseline) fitted on the train subjects' shared-space projections, correlation of each paired
    dimension on test, bootstrap CI and permutation p-value of the test pairing (within `strata`)."""
    from alignment.baselines import CCABaseline, select_cca
    from alignment.significance import correlation_records

    _, b_train, g_train = inputs.pairs("train", modality)
    subjects, b_test, g_test = inputs.pairs("test", modality)
    _, b_val, g_val = inputs.pairs("val", modality)
    if len(b_train) < 3 or len(subjects) < 3:
        LOG.info("held-out correlation (%s): fewer than 3 train or test subjects; skipped", modality)
        return []
    n_comp = cfg.baselines.n_components
    model = (select_cca("cca", b_train, g_train, b_val, g_val, n_comp) if len(b_val) >= 3
             else CCABaseline("cca", n_components=n_comp).fit(b_train, g_train))
    u, v = model.transform(b_test, g_test)
    recs = correlation_records("aligned", u, v, n_perm=cfg.retrieval.n_permutations, n_boot=cfg.retrieval.n_boot,
                               level=cfg.level, seed=cfg.seed, strata=strata(subjects) if strata else None)
    return [library_record(r, modality, section="retrieval", split="test", model="aligned",
                           direction=f"brain_{modality}") for r in recs]


def library_record(record: dict[str, Any], modality: str, **fields: Any) -> dict[str, Any]:
    """A retrieval/baseline record of `alignment` with our names: the modality in the direction, level 'subject'
    for row-paired subject rows, n = number of queries."""
    level = record.get("level")
    out = {k: record.get(k) for k in ("metric", "value", "ci_low", "ci_high", "chance", "p_value", "n_candidates")}
    out.update(direction=modality_direction(record.get("direction"), modality),
               level="subject" if level == "recording" else level, n=record.get("n_queries"))
    out.update(fields)
    return out


def retrieval_records(inputs: EvalInputs, cfg: EvaluateConfig,
                      strata: Strata | None = None) -> tuple[list[dict[str, Any]], dict[tuple, Any]]:
    """Records for every split in `retrieval.splits` and genetics modality (p-values from shuffles within `strata`
    when given: site x ancestry cells with confounds), the model's held-out correlations on test, and the
    subject-level 0-based ranks {(split, modality): {direction: ranks}} (for the recall@k figure)."""
    from alignment.retrieval import DIRECTIONS, retrieval_report

    kw = retrieval_kwargs(cfg)
    records: list[dict[str, Any]] = []
    ranks: dict[tuple, Any] = {}
    for split in cfg.retrieval.splits:
        for m in inputs.modalities:
            subjects, brain, genetics = inputs.pairs(split, m)
            if len(subjects) < 2:
                raise BrainmmError(f"retrieval on split {split!r}: {len(subjects)} subjects have shared-space brain "
                                   f"and {m!r} embeddings; need at least 2")
            n_brain = len(set(inputs.shared[split]["brain"].subjects))
            if n_brain > len(subjects):
                LOG.info("retrieval %s/%s: %d of %d brain subjects have no %s row and are left out", split, m,
                         n_brain - len(subjects), n_brain, m)
            report = retrieval_report(brain, genetics, **kw, strata=strata(subjects) if strata else None)
            base = {"section": "retrieval", "split": split, "model": "aligned"}
            records += [library_record(r, m, **base) for r in report.records]
            ranks[(split, m)] = {modality_direction(d, m): report.ranks[(d, "recording")]
                                 for d in DIRECTIONS}
            rows, labels = inputs.shared[split]["brain"].rows_of(subjects)
            if len(rows) > len(subjects):  # several recordings per subject: each recording is a query
                rec = retrieval_report(rows, genetics, brain_subjects=labels, genetics_subjects=subjects,
                                       **{**kw, "kway": None})
                records += [library_record(r, m, **base, level="recording") for r in rec.records]
            if split == "test":
                records += heldout_correlations(inputs, cfg, m, strata)
    return records, ranks

