"""Brain <-> genetics retrieval of the trained model in the shared space: subject level (recordings averaged),
recording level (each recording a query; any item of the subject a hit) and the K-random-candidates protocol."""

from __future__ import annotations

import logging
from typing import Any

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
            "level": cfg.level, "seed": cfg.seed}


def library_record(record: dict[str, Any], modality: str, **fields: Any) -> dict[str, Any]:
    """A retrieval/baseline record of `alignment` with our names: the modality in the direction, level 'subject'
    for row-paired subject rows, n = number of queries."""
    level = record.get("level")
    out = {k: record.get(k) for k in ("metric", "value", "ci_low", "ci_high", "chance", "p_value", "n_candidates")}
    out.update(direction=modality_direction(record.get("direction"), modality),
               level="subject" if level == "recording" else level, n=record.get("n_queries"))
    out.update(fields)
    return out


def retrieval_records(inputs: EvalInputs, cfg: EvaluateConfig) -> tuple[list[dict[str, Any]], dict[tuple, Any]]:
    """Records for every split in `retrieval.splits` and genetics modality, and the subject-level 0-based ranks
    {(split, modality): {direction: ranks}} (for the recall@k figure)."""
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
            report = retrieval_report(brain, genetics, **kw)
            base = {"section": "retrieval", "split": split, "model": "aligned"}
            records += [library_record(r, m, **base) for r in report.records]
            ranks[(split, m)] = {modality_direction(d, m): report.ranks[(d, "recording")]
                                 for d in DIRECTIONS}
            rows, labels = inputs.shared[split]["brain"].rows_of(subjects)
            if len(rows) > len(subjects):  # several recordings per subject: each recording is a query
                rec = retrieval_report(rows, genetics, brain_subjects=labels, genetics_subjects=subjects,
                                       **{**kw, "kway": None})
                records += [library_record(r, m, **base, level="recording") for r in rec.records]
    return records, ranks

