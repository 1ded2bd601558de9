"""`brainmm run CONFIG [KEY=VALUE ...]` and `brainmm demo [--out DIR] [KEY=VALUE ...]`: the whole pipeline."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `run` and `demo` commands."""
    p = sub.add_parser(
        "run", help="run the whole pipeline from one config (simulate/ingest -> pretrain -> embed -> genetics -> "
        "align -> evaluate)",
        description="Run the pipeline of a PipelineConfig YAML (see configs/demo.yaml, configs/pipeline_real.yaml): "
        "every stage writes a folder inside output_dir, logs under one parent MLflow run, and a summary is printed.")
    p.add_argument("config", help="pipeline YAML (PipelineConfig)")
    _common(p)
    p.set_defaults(func=_run)
    d = sub.add_parser(
        "demo", help="the whole pipeline on a simulated cohort with a planted brain-genetics link (a few minutes on CPU)",
        description="Simulate a cohort, ingest it, compute functional connectivity, pretrain a tiny BrainLM, embed "
        "brains, build the genotype dosage matrix, align the brain table [BrainLM embeddings, connectivity PCA] with "
        "the dosages (linear heads initialised by CCA; no genotype tower: genetics.genotype_mlp.kind table), "
        "evaluate retrieval, probes and baselines (CCA/PLS, ridge, random head, fc_* on connectivity, shuffled "
        "pairs) and explain which variants, edges and parcels carry the link, log it all to MLflow (sqlite:///mlflow.db in the working folder unless tracking.uri or "
        "$MLFLOW_TRACKING_URI say otherwise) and print a summary. Settings: configs/demo.yaml.")
    d.add_argument("--out", default=None, help="output folder (default runs/demo)")
    _common(d)
    d.set_defaults(func=_demo)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. pretrain.train.max_steps=50")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an earlier pipeline run in the output folder")
    mode.add_argument("--resume", action="store_true", help="continue an earlier pipeline run in the output folder: "
                      "finished stages whose config and inputs are unchanged are reused, the rest run")
    p.add_argument("--dry-run", action="store_true", help="print the plan (stages, estimated wall time, peak memory "
                   "and disk per stage) and exit without running anything")
    p.add_argument("--quiet", dest="stage_quiet", action="store_true", help="no progress bars or info messages")


def _execute(args: argparse.Namespace, path: str | None, overrides: list[str]) -> int:
    from brainmm.config import load_config
    from brainmm.pipeline import PipelineConfig
    from brainmm.runtime import set_quiet

    if args.stage_quiet:
        set_quiet(True)
    cfg = load_config(PipelineConfig, path, overrides)
    if args.dry_run:
        from brainmm.pipeline import dry_run

        print(dry_run(cfg, resume=args.resume))
        return 0
    from brainmm.pipeline import run_pipeline

    result = run_pipeline(cfg, overwrite=args.overwrite, resume=args.resume, show=print)
    print(result.summary)
    return 0


def _run(args: argparse.Namespace) -> int:
    return _execute(args, args.config, args.overrides)


def _demo(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.out:
        overrides.insert(0, f"output_dir={args.out}")
    return _execute(args, None, overrides)
