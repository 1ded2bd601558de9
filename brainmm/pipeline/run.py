"""`run_pipeline`: run the planned stages in one output folder, under one parent MLflow run, and summarise."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainmm.config import save_config
from brainmm.errors import BrainmmError
from brainmm.io import atomic_write_json, atomic_write_text, run_lock
from brainmm.pipeline.config import PipelineConfig
from brainmm.pipeline.plan import Plan, make_plan
from brainmm.pipeline.tracking import PipelineRun

LOG = logging.getLogger("brainmm.pipeline")
MARKER = "pipeline.json"  # written first: marks a folder the pipeline may replace with overwrite


@dataclass
class StageRecord:
    """What one stage did: its folder, MLflow run (if it logs one), time (wall and this process's CPU) and this
    process's peak resident memory during the stage (MB)."""

    stage: str
    output: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0  # VmHWM: includes the file pages it mapped (datasets, memmapped tables)
    peak_anon_mb: float | None = None  # the anonymous part alone (sampled): the memory the stage needs
    run_id: str | None = None
    status: str = "running"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    """A finished pipeline: folder, parent run, per-stage records, the evaluation and the printed summary."""

    output_dir: Path
    run_id: str
    tracking_uri: str
    experiment: str
    stages: dict[str, StageRecord]
    evaluation: Any = None  # brainmm.evaluate.EvaluateResult when the evaluate stage ran
    summary: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    previous_summary: str = ""  # the summary of the run whose evaluate stage --resume reused


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS (Linux: VmHWM via /proc/self/clear_refs); elsewhere the peak stays cumulative."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    """Peak RSS of this process since the last reset (VmHWM), else since it started (getrusage)."""
    from brainmm.memory import proc_status_mb

    peak = proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prepare_output(out: Path, overwrite: bool, resume: bool = False) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite and not resume:
            raise BrainmmError(f"output_dir {out}: already exists and is not empty; pass --resume to continue an "
                               "earlier pipeline run there (finished stages with unchanged config and inputs are "
                               "reused) or --overwrite to replace it, or set output_dir to another folder")
        if not (out / MARKER).is_file():
            if resume:
                raise BrainmmError(f"output_dir {out}: --resume continues a pipeline folder (with {MARKER}); this one "
                                   "is not")
            raise BrainmmError(f"output_dir {out}: --overwrite only replaces a pipeline folder (with {MARKER}); this "
                               "one is not, so nothing was deleted")
        if not resume:
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def dry_run(cfg: PipelineConfig, resume: bool = False) -> str:
    """The plan `brainmm run --dry-run` prints: stages with estimated wall time, peak memory and disk, warnings for
    long stages and, with `resume`, which finished stages would be reused. Runs nothing, writes nothing."""
    from brainmm.pipeline.preflight import check_plan

    plan = make_plan(cfg)
    check_plan(plan)
    lines = [*plan.notes, _cost_text(plan)]
    if resume and (plan.out / MARKER).is_file():
        from brainmm.pipeline.resume import reusable

        reused, why = reusable(plan)
        lines.append(f"--resume: reuses {', '.join(reused) or 'no stage'}" + (f"; runs from {why}" if why else ""))
    return "\n".join(lines)


def _cost_text(plan: Plan) -> str:
    """The cost table and its warnings (brainmm.pipeline.cost)."""
    from brainmm.pipeline.cost import estimate, render, warnings

    costs = estimate(plan.config, plan.stages)
    plan.costs = costs
    return "\n".join([render(costs), *warnings(costs)])


def run_pipeline(cfg: PipelineConfig, overwrite: bool = False, resume: bool = False,
                 show: Callable[[str], None] | None = None) -> PipelineResult:
    """Run the pipeline of `cfg` (see docs/pipeline.md). `show` gets the cost plan before any stage starts (the CLI
    prints it); `resume` reuses the finished stages whose config and inputs are unchanged (brainmm.pipeline.resume).
    """
    import mlflow

    from brainmm.pipeline.preflight import check_plan
    from brainmm.tracking import check_tracking_server

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BrainmmError("brainmm run/demo runs in one process; under torchrun, run the stages that support several "
                           "processes (pretrain, embed, genetics embed, align) with their own commands (docs/pipeline.md)")
    plan = make_plan(cfg)
    check_tracking_server(plan.tracking_uri)  # fail in seconds, before any work
    if mlflow.active_run() is not None:
        raise BrainmmError(f"an MLflow run ({mlflow.active_run().info.run_id}) is active; end it before running the "
                           "pipeline (its stages start their own runs)")
    check_plan(plan)  # every stage's config against the data, before the first stage starts
    text = "\n".join([*plan.notes, _cost_text(plan)])
    for line in text.splitlines():
        (LOG.warning if line.startswith("warning:") else LOG.debug)("%s", line)
    if show is not None:
        show(text)
    with run_lock(plan.out):
        return _run_locked(cfg, plan, overwrite, resume)


def _run_locked(cfg: PipelineConfig, plan: Plan, overwrite: bool, resume: bool = False) -> PipelineResult:
    """`run_pipeline` once the output folder is locked."""
    import torch

    from brainmm.pipeline.resume import clear_outputs, digests, reusable, write_marker
    from brainmm.runtime import log_to_file

    out = plan.out
    reused: dict[str, dict[str, Any]] = {}
    if resume and (out / MARKER).is_file():
        reused, why = reusable(plan)
        LOG.info("--resume: reusing %s%s", ", ".join(reused) or "no stage", f"; running from {why}" if why else "")
    previous = json.loads((out / MARKER).read_text()) if reused else {}
    old_summary = out / "summary.txt"
    previous_summary = old_summary.read_text() if "evaluate" in reused and old_summary.is_file() else ""
    _prepare_output(out, overwrite, resume)
    digest = digests(plan)
    threads_before = torch.get_num_threads()
    blas = contextlib.ExitStack()
    if cfg.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(cfg.threads)
        blas.enter_context(threadpool_limits(limits=cfg.threads))  # numpy / scikit-learn
    started, cpu_started = time.perf_counter(), time.process_time()
    records: dict[str, StageRecord] = {}
    log_to_file(out)
    save_config(cfg, out / "config.yaml")
    _write_state(plan, records, None, "running")
    parent = PipelineRun(plan.tracking_uri, cfg.tracking, cfg.name,
                         {"brainmm.run_dir": str(out), "brainmm.stages": ",".join(plan.stages)})
    _write_state(plan, records, parent.run_id, "running")
    parent.log_config(cfg)
    if reused:
        parent.set_tags({"brainmm.resumed_from": str(previous.get("mlflow_run_id"))})
    LOG.info("pipeline %s: stages %s -> %s (MLflow run %s, torch threads %d)", cfg.name, ", ".join(plan.stages), out,
             parent.run_id, torch.get_num_threads())
    evaluation = None
    ok = False
    try:
        steps = _steps(plan)
        measured: dict[str, float] = {}
        for i, stage in enumerate(plan.stages, 1):
            if stage in reused:
                records[stage] = _reused_record(parent, reused[stage])
                if plan.costs is not None:  # not part of this run's remaining estimate
                    plan.costs.stages.pop(stage, None)
                LOG.info("[%d/%d] %s reused (finished earlier; config and inputs unchanged) -> %s", i,
                         len(plan.stages), stage, records[stage].output)
                continue
            if resume:
                clear_outputs(plan, stage)
            _warn_if_long(plan, stage)
            LOG.info("[%d/%d] %s", i, len(plan.stages), stage)
            record = StageRecord(stage, "")
            records[stage] = record
            _reset_peak_rss()
            t0, c0 = time.perf_counter(), time.process_time()
            from brainmm.memory import AnonPeak

            anon = AnonPeak()
            try:
                with anon:
                    value = steps[stage](record)
            finally:
                record.seconds = time.perf_counter() - t0
                record.cpu_seconds = time.process_time() - c0
                record.peak_rss_mb, record.peak_anon_mb = _peak_rss_mb(), anon.peak_mb
                log_to_file(out)  # stages move the log file to their own folders
                _adopt(parent, plan, record)
            record.status = "finished"
            write_marker(plan, stage, digest[stage], vars(record))
            _write_state(plan, records, parent.run_id, "running")
            measured[stage] = record.seconds
            _refine(plan, stage, measured)
            if stage == "evaluate":
                evaluation = value
            LOG.info("[%d/%d] %s done in %.1f s (CPU %.1f s) -> %s", i, len(plan.stages), stage, record.seconds,
                     record.cpu_seconds, record.output)
        ok = True
    finally:
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        torch.set_num_threads(threads_before)
        blas.close()
        result = PipelineResult(out, parent.run_id, plan.tracking_uri, cfg.tracking.experiment, records, evaluation,
                                seconds=seconds, cpu_seconds=cpu, previous_summary=previous_summary)
        _finish(parent, plan, result, ok)
    return result


def _finish(parent: PipelineRun, plan: Plan, result: PipelineResult, ok: bool) -> None:
    """Summary, pipeline.json, parent-run metrics and artifacts; the parent run ends FINISHED or FAILED."""
    from brainmm.pipeline.summary import headline_metrics, render_summary

    try:
        timing = {f"pipeline/time/{s}_s": r.seconds for s, r in result.stages.items()}
        timing.update({f"pipeline/cpu/{s}_s": r.cpu_seconds for s, r in result.stages.items()})
        timing.update({f"pipeline/peak_rss/{s}_mb": r.peak_rss_mb for s, r in result.stages.items()})
        timing.update({f"pipeline/peak_anon/{s}_mb": r.peak_anon_mb for s, r in result.stages.items()
                       if r.peak_anon_mb is not None})
        timing.update({"pipeline/time/total_s": result.seconds, "pipeline/cpu/total_s": result.cpu_seconds})
        metrics = dict(timing)
        if ok:
            result.summary = render_summary(result)
            if result.evaluation is None and result.previous_summary:
                result.summary = (f"every stage reused (--resume); the summary of the run that computed them:\n\n"
                                  f"{result.previous_summary.rstrip()}")
            atomic_write_text(result.output_dir / "summary.txt", result.summary + "\n")
            parent.log_artifact(str(result.output_dir / "summary.txt"))
            if result.evaluation is not None:
                metrics.update(headline_metrics(result.evaluation.metrics))
        parent.log_metrics(metrics)
        _write_state(plan, result.stages, parent.run_id, "finished" if ok else "failed", result)
        parent.log_artifact(str(result.output_dir / MARKER))
        parent.log_artifact(str(result.output_dir / "brainmm.log"))
        for stage, path in _stage_configs(plan).items():
            if stage in result.stages and path.is_file():
                parent.log_artifact(str(path), f"stages/{stage}")
    finally:
        parent.end(ok)
    LOG.info("pipeline %s: %s in %.1f s (CPU %.1f s)", plan.config.name, "finished" if ok else "FAILED",
             result.seconds, result.cpu_seconds)


def _write_state(plan: Plan, records: dict[str, StageRecord], run_id: str | None, status: str,
                 result: PipelineResult | None = None) -> None:
    state = {
        "status": status, "name": plan.config.name, "mlflow_run_id": run_id, "tracking_uri": plan.tracking_uri,
        "experiment": plan.config.tracking.experiment, "stages": plan.stages,
        "inputs": {"fmri_cohort": str(plan.fmri_cohort) if plan.fmri_cohort else None,
                   "fmri_dataset": str(plan.fmri_dataset), "brain_model": str(plan.brain_model)},
        "records": {s: vars(r) for s, r in records.items()},
    }
    if result is not None:
        state.update(seconds=result.seconds, cpu_seconds=result.cpu_seconds)
    atomic_write_json(plan.out / MARKER, state)


def _stage_configs(plan: Plan) -> dict[str, Path]:
    """The resolved config each stage wrote next to its output."""
    c = plan.config
    genetics_out = c.genetics.matrix.out if c.genetics.kind == "genotype_matrix" else c.genetics.dna.out
    return {"simulate": plan.cohort_dir / "config.yaml", "ingest": plan.out / "ingest.config.yaml",
            "connectivity": Path(f"{plan.connectivity}.config.yaml"),
            "pretrain": Path(c.pretrain.output_dir) / "config.yaml", "embed": Path(c.embed.out + ".config.yaml"),
            "genetics": Path(genetics_out + ".config.yaml"), "align": Path(c.align.output_dir) / "config.yaml",
            "evaluate": Path(c.evaluate.output_dir) / "config.yaml"}


def _adopt(parent: PipelineRun, plan: Plan, record: StageRecord) -> None:
    """Nest the stage's MLflow run (from its run.json when it failed before returning) under the parent."""
    folder = {"pretrain": plan.config.pretrain.output_dir, "align": plan.config.align.output_dir}.get(record.stage)
    if record.run_id is None and folder and (Path(folder) / "run.json").is_file():
        record.run_id = json.loads((Path(folder) / "run.json").read_text()).get("mlflow_run_id")
    if record.run_id:  # the evaluate run stays a child of its align run
        parent.adopt(record.run_id, record.stage, nest=record.stage != "evaluate")
    for key, name in (("shuffled_pairs_run_id", "shuffled_pairs"), ("unadjusted_run_id", "unadjusted")):
        if record.extra.get(key):
            parent.adopt(record.extra[key], name)


def _reused_record(parent: PipelineRun, saved: dict[str, Any]) -> StageRecord:
    """The record of a stage --resume reuses (its original times); its MLflow run is named on the new parent."""
    record = StageRecord(**{k: saved[k] for k in StageRecord.__dataclass_fields__ if k in saved})
    record.status = "reused"
    if record.run_id:
        parent.set_tags({f"brainmm.run.{record.stage}": record.run_id})
    return record


def _warn_if_long(plan: Plan, stage: str) -> None:
    """Warn (again, with the refined estimate) right before a stage expected to take over 30 minutes."""
    from brainmm.pipeline.cost import KNOBS, LONG_STAGE_S, human_time

    cost = plan.costs.stages.get(stage) if plan.costs is not None else None
    if cost is not None and cost.seconds is not None and cost.seconds > LONG_STAGE_S:
        LOG.warning("stage %s is expected to take %s; keys that cut it: %s", stage, human_time(cost.seconds),
                    ", ".join(KNOBS[stage]))


def _refine(plan: Plan, stage: str, measured: dict[str, float]) -> None:
    """Log the finished stage's time against its estimate and re-estimate the remaining stages from the ratio."""
    from brainmm.pipeline.cost import human_time, refine

    costs = plan.costs
    if costs is None or costs.stages[stage].table_seconds is None:
        return
    ratio = refine(costs, measured)
    rest = [c for k, c in costs.stages.items() if k not in measured]
    left = ", ".join(f"{c.stage} {human_time(c.seconds)}" for c in rest)
    LOG.info("%s took %s (estimated %s); measured/table rate %.2fx so far%s", stage, human_time(measured[stage]),
             human_time(costs.stages[stage].table_seconds), ratio, f"; remaining: {left}" if left else "")


def _genetic_pcs(c: PipelineConfig) -> str:
    """`genetics pca` on the genetics stage's genotypes, fitted on the train subjects of its split: the confounds'
    PC table (c.confounds.pcs)."""
    import dataclasses

    from brainmm.data.genetics.config import GeneticPcaConfig, GenotypeSourceConfig
    from brainmm.data.genetics.pca import run_pca

    m = c.genetics.matrix
    source = {f.name: getattr(m, f.name) for f in dataclasses.fields(GenotypeSourceConfig)}
    run_pca(GeneticPcaConfig(**source, split=m.split, n_pcs=c.confounds.genetic_pcs, out=c.confounds.pcs))
    return c.confounds.pcs


def _steps(plan: Plan) -> dict[str, Callable[[StageRecord], Any]]:
    """One function per stage; each fills its record (output folder, MLflow run id)."""
    c = plan.config

    def simulate(rec: StageRecord) -> Any:
        from brainmm.data.simulate import simulate_cohort

        rec.output = str(plan.cohort_dir)
        return simulate_cohort(c.simulate, plan.cohort_dir)

    def ingest(rec: StageRecord) -> Any:
        from brainmm.data.fmri import ingest as run_ingest

        rec.output = str(plan.fmri_dataset)
        save_config(c.ingest, plan.out / "ingest.config.yaml")
        return run_ingest(plan.fmri_cohort, plan.fmri_dataset, c.ingest)

    def connectivity(rec: StageRecord) -> Any:
        from brainmm.data.fmri.connectivity import connectivity_table

        rec.output = str(plan.connectivity)
        save_config(c.connectivity, Path(rec.output + ".config.yaml"))
        return connectivity_table(plan.fmri_dataset, rec.output, c.connectivity)

    def pretrain(rec: StageRecord) -> Any:
        from brainmm.train.pretrain import run_pretrain

        rec.output = c.pretrain.output_dir
        result = run_pretrain(c.pretrain)
        rec.run_id = result.run_id
        rec.extra = {k: result.metrics.get("test", {}).get(k) for k in ("masked_mse", "baseline_mean_mse", "r2")}
        return result

    def embed(rec: StageRecord) -> Any:
        from brainmm.embed import run_brain_embed

        rec.output = c.embed.out
        result = run_brain_embed(c.embed)
        rec.extra = {"cache_hit": result.cache_hit, "recordings": result.num_recordings,
                     "subjects": result.num_subjects}
        return result

    def genetics(rec: StageRecord) -> Any:
        g = c.genetics
        if g.kind == "genotype_matrix":
            from brainmm.data.genetics import run_matrix

            rec.output = g.matrix.out
            table = run_matrix(g.matrix)
            if plan.genetic_pcs:
                rec.extra["genetic_pcs"] = _genetic_pcs(c)
        else:
            from brainmm.data.genetics import run_embed as run_genetics_embed

            rec.output = g.dna.out
            table = run_genetics_embed(g.dna)
        rec.extra.update({"subjects": len(table.ids), "dim": table.dim})
        return table

    def align(rec: StageRecord) -> Any:
        from brainmm.align import run_align

        rec.output = c.align.output_dir
        if c.brain_inputs != ["brainlm"]:
            from brainmm.pipeline.brain_inputs import brain_input_table

            brain_input_table(c.brain_inputs, c.embed.out, str(plan.connectivity or ""), c.align.data.split,
                              c.brain_fc_pca, c.align.data.brain)
        result = run_align(c.align)
        rec.run_id = result.run_id
        rec.extra = {"val_score": result.metrics["val"].get("score"), "best_epoch": result.metrics["best_epoch"]}
        return result

    def evaluate(rec: StageRecord) -> Any:
        from brainmm.evaluate import run_evaluate

        rec.output = c.evaluate.output_dir
        result = run_evaluate(c.evaluate)
        rec.run_id = result.run_id
        rec.extra = {"shuffled_pairs_run_id": result.shuffled_run_id, "unadjusted_run_id": result.unadjusted_run_id}
        return result

    return {"simulate": simulate, "ingest": ingest, "connectivity": connectivity, "pretrain": pretrain, "embed": embed, "genetics": genetics,
            "align": align, "evaluate": evaluate}
