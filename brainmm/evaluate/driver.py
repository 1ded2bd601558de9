"""`run_evaluate`: retrieval, linear probes and baselines of one align run, written to <align run>/evaluation and
logged to MLflow (a child run of the align run by default)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmm.evaluate.config import SPLIT_NAMES, EvaluateConfig
from brainmm.evaluate.inputs import EvalInputs

LOG = logging.getLogger("brainmm.evaluate")


@dataclass
class EvaluateResult:
    """What `run_evaluate` produced."""

    output_dir: Path
    run_id: str  # the MLflow run holding the evaluation (child of the align run, or the align run itself)
    align_run_id: str
    metrics: dict[str, float]  # exactly what was logged to MLflow
    table: pd.DataFrame  # one row per metric: value, CI, chance, permutation baseline, p-value, sizes
    summary: str  # summary.md
    models: dict[str, dict[str, str]] = field(default_factory=dict)  # side -> {"uri", "id"} of the logged heads
    counts: dict[str, Any] = field(default_factory=dict)
    shuffled_run_id: str | None = None
    unadjusted_run_id: str | None = None  # the alignment trained without confounds (confounds set)


def data_counts(inputs: EvalInputs) -> dict[str, int]:
    """Subjects, brain rows, genetics subjects and shared-space pairs per split."""
    counts: dict[str, int] = {}
    for split in SPLIT_NAMES:
        in_split = {s for s, name in inputs.split_of.items() if name == split}
        counts[f"{split}/subjects"] = len(in_split)
        brain = inputs.shared[split].get("brain")
        counts[f"{split}/brain_rows"] = len(brain.subjects) if brain is not None else 0
        for m in inputs.modalities:
            counts[f"{split}/{m}_subjects"] = len(in_split & inputs.genetics[m].subject_set)
            counts[f"{split}/paired_{m}"] = len(inputs.subjects(split, m))
    return counts


def _figures(inputs: EvalInputs, cfg: EvaluateConfig, ranks: dict, table: pd.DataFrame) -> dict[str, Any]:
    from brainmm.evaluate import figures as F

    split = "test" if "test" in cfg.retrieval.splits else cfg.retrieval.splits[0]
    colour = cfg.figures.color_by or (cfg.probes.targets[0] if cfg.probes.targets else "")
    out: dict[str, Any] = {}
    for m in inputs.modalities:
        subjects, brain, genetics = inputs.pairs(split, m)
        out[f"figures/recall_at_k_{m}.png"] = F.recall_curve(
            ranks[(split, m)], f"{split} split: brain vs {m}, N = {len(subjects)} subjects")
        out[f"figures/similarity_{m}.png"] = F.similarity_heatmap(
            brain, genetics, subjects, m, cfg.figures.heatmap_subjects, cfg.seed)
        train_subjects, train_b, train_g = inputs.pairs("train", m)
        train = np.vstack([train_b, train_g]) if len(train_subjects) >= 2 else np.vstack([brain, genetics])
        values = inputs.phenotypes[colour].reindex(subjects).tolist() if colour else None
        out[f"figures/shared_pca_{m}.png"] = F.shared_pca(train, brain, genetics, m, values, colour)
    probes = table[table["section"] == "probe"]
    if len(probes):
        out["figures/probes.png"] = F.probe_bars(probes)
    return out


def _explain(inputs: EvalInputs, cfg: EvaluateConfig, stage: Path, flat: dict[str, float],
             figures: dict[str, Any]) -> str:
    """The explain section (brainmm.evaluate.explain): tables to <stage>/explain, its metrics and figures added;
    returns its summary ("" when explain.enabled is false)."""
    if not cfg.explain.enabled:
        return ""
    from brainmm.evaluate.explain import compute_explain, write_explain

    out = compute_explain(inputs, cfg)
    write_explain(out, stage / "explain")
    flat.update(out.metrics)
    figures.update(out.figures)
    return out.summary


@contextlib.contextmanager
def _section(timings: dict[str, float], name: str) -> Iterator[None]:
    """Progress line before and after an evaluation section; its wall seconds go to `timings`."""
    LOG.info("evaluate: %s ...", name)
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    LOG.info("evaluate: %s done in %.1f s", name, timings[name])


def cost_lines(timings: dict[str, float], main_seconds: float | None) -> str:
    """The 'Cost' section of summary.md: wall seconds per section, controls as a share of the main alignment."""
    lines = ["## Cost", "", "| section | wall s | vs main alignment |", "|---|---:|---:|"]
    for name, t in timings.items():
        share = f"{t / main_seconds:.2f}x" if main_seconds and name.startswith("control") else ""
        lines.append(f"| {name} | {t:.1f} | {share} |")
    if main_seconds:
        lines.append(f"| (main alignment, for reference) | {main_seconds:.1f} | 1.00x |")
    return "\n".join(lines) + "\n"


def run_evaluate(cfg: EvaluateConfig) -> EvaluateResult:
    """Evaluate the align run named by `cfg.run_id` or `cfg.align_dir`: compute everything first, then write
    <output_dir> atomically and log to MLflow (nothing is logged when a computation fails)."""
    from brainmm.config import save_config
    from brainmm.evaluate.baselines import (
        baseline_records,
        control_inputs,
        main_align_seconds,
        shuffled_pair_run,
    )
    from brainmm.evaluate.confounds import prepare_confounds, stratified_records, unadjusted_run
    from brainmm.evaluate.inputs import load_inputs, resolve_align_run
    from brainmm.evaluate.preflight import check_retrieval_sizes, shuffled_shortfall, skip_warning
    from brainmm.evaluate.probes import probe_data, probe_records
    from brainmm.evaluate.publish import publish, refuse_second_evaluation
    from brainmm.evaluate.records import flat_json, flat_metrics, metric_parts, metrics_table
    from brainmm.evaluate.retrieval import confound_strata, retrieval_records
    from brainmm.evaluate.summary import render_summary
    from brainmm.io import atomic_dir, atomic_file, atomic_write_json, atomic_write_text, run_lock
    from brainmm.runtime import log_to_file

    run = resolve_align_run(cfg)
    metric_parts(cfg.probes.targets, "probes.targets")  # names MLflow cannot take fail before any work
    if cfg.mlflow_run == "same":
        refuse_second_evaluation(run.run_id, run.tracking_uri)
    inputs = load_inputs(cfg, run)
    confounds = prepare_confounds(cfg, inputs)  # residualises the inputs; bad covariates fail before any output
    check_retrieval_sizes(inputs, cfg)  # every too-small split in one message, before any work
    shuffled_short = shuffled_shortfall(inputs) if cfg.baselines.shuffled_pairs else []
    counts: dict[str, Any] = data_counts(inputs)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else run.run_dir / "evaluation"
    with run_lock(out_dir), atomic_dir(out_dir, overwrite=True) as stage:
        log_to_file(stage)
        LOG.info("evaluate: align run %s (%s) -> %s", run.run_id, run.run_dir, out_dir)
        records: list[dict[str, Any]] = []
        timings: dict[str, float] = {}
        if cfg.probes.targets:  # first: most likely to stop on user data (one class, fewer subjects than folds)
            with _section(timings, "probes"):
                pdata = probe_data(inputs, cfg, confounds)
                probe_recs, dropped = probe_records(pdata, cfg)
            records += probe_recs
            counts["probe/subjects"] = len(pdata.table)
            counts["probe/left_out_without_genetics"] = pdata.n_without_genetics
            counts.update({f"probe/{t}/dropped_missing": n for t, n in dropped.items()})
            for rec in records:
                rec["n_dropped"] = dropped.get(rec["target"], 0)
        strata = confound_strata(inputs, confounds, cfg) if confounds is not None else None
        with _section(timings, "retrieval"):
            retrieval, ranks = retrieval_records(inputs, cfg, strata)
        records += retrieval
        with _section(timings, "baselines"):
            records += baseline_records(inputs, cfg, strata)
        unadjusted_run_id = None
        controls = control_inputs(inputs, cfg)  # the align run's config with the control epochs
        if confounds is not None:
            records += confounds.records + stratified_records(inputs, confounds, cfg)
            if cfg.baselines.unadjusted:
                with _section(timings, "control: unadjusted alignment"):
                    unadjusted, unadjusted_run_id = unadjusted_run(controls, confounds, cfg, stage / "unadjusted")
                records += unadjusted
                log_to_file(stage)  # run_align moved the log file to its own folder
        shuffled_run_id = None
        if shuffled_short:
            skip_warning("baselines.shuffled_pairs", shuffled_short)
        elif cfg.baselines.shuffled_pairs:
            with _section(timings, "control: shuffled-pair alignment"):
                shuffled, shuffled_run_id = shuffled_pair_run(controls, cfg, stage / "shuffled_pairs")
            records += shuffled
            log_to_file(stage)  # run_align moved the log file to its own folder
        table = metrics_table(records)
        flat = flat_metrics(table)

        with _section(timings, "figures"):
            figures = _figures(inputs, cfg, ranks, table) if cfg.figures.enabled else {}
        with _section(timings, "explain"):
            explained = _explain(inputs, cfg, stage, flat, figures)
        context = {"align_run_id": run.run_id, "align_dir": str(run.run_dir), "modalities": inputs.modalities,
                   "level": cfg.level}
        summary = render_summary(table, counts, context, list(cfg.retrieval.ks))
        summary += f"\n{explained}" if explained else ""
        summary += "\n" + cost_lines(timings, main_align_seconds(inputs))
        with atomic_file(stage / "metrics.json", suffix=".json") as tmp:
            table.to_json(tmp, orient="split", index=False)  # the format of mlflow.log_table
        with atomic_file(stage / "metrics.csv", suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
        atomic_write_json(stage / "metrics_flat.json", flat_json(flat))  # name -> value, readable without pandas
        atomic_write_text(stage / "summary.md", summary)
        save_config(cfg, stage / "config.yaml")
        for path, fig in figures.items():
            with atomic_file(stage / path, suffix=".png") as tmp:
                fig.savefig(tmp, format="png", dpi=100)

        tags = {"brainmm.align_run_id": run.run_id}
        if shuffled_run_id:
            tags["evaluate.shuffled_pairs_run_id"] = shuffled_run_id
        if unadjusted_run_id:
            tags["evaluate.unadjusted_run_id"] = unadjusted_run_id
        run_id, models = publish(cfg, inputs, stage, table, flat, figures, summary, counts, tags)
        atomic_write_json(stage / "result.json", {
            "mlflow_run_id": run_id, "align_run_id": run.run_id, "tracking_uri": run.tracking_uri,
            "mlflow_run": cfg.mlflow_run, "models": models, "shuffled_pairs_run_id": shuffled_run_id,
            "unadjusted_run_id": unadjusted_run_id, "counts": counts, "seconds": timings,
        })
    if shuffled_run_id:  # the shuffled-pair run was trained in the staging folder: point its tag at the final one
        import mlflow

        mlflow.MlflowClient(run.tracking_uri).set_tag(
            shuffled_run_id, "brainmm.run_dir", str((out_dir / "shuffled_pairs" / "align").resolve()))
    if unadjusted_run_id:
        import mlflow

        mlflow.MlflowClient(run.tracking_uri).set_tag(
            unadjusted_run_id, "brainmm.run_dir", str((out_dir / "unadjusted" / "align").resolve()))
    LOG.info("evaluate: wrote %s (MLflow run %s)", out_dir, run_id)
    return EvaluateResult(out_dir, run_id, run.run_id, flat, table, summary, models, counts, shuffled_run_id,
                          unadjusted_run_id)
