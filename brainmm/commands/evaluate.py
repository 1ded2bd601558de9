"""`brainmm evaluate --run RUN_ID | --align-dir DIR [--config configs/evaluate.yaml] [KEY=VALUE ...]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `evaluate` command."""
    p = sub.add_parser(
        "evaluate",
        help="retrieval, linear probes and baselines of an align run, reported into MLflow",
        description="Evaluate an align run: brain <-> genetics retrieval with chance levels and bootstrap CIs, linear "
        "probes of phenotypes, CCA/PLS/ridge/random-head (and shuffled-pair) baselines. Writes <align run>/evaluation "
        "and logs metrics, tables, figures, a summary and the heads to MLflow (a child of the align run by default).",
    )
    align_run_arguments(p, "e.g. probes.targets=[age,sex]")
    p.set_defaults(func=_evaluate)


def align_run_arguments(p: argparse.ArgumentParser, example: str) -> None:
    """--run RUN_ID | --align-dir DIR, --config (an EvaluateConfig YAML) and KEY=VALUE overrides."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", dest="run_id", default=None, help="MLflow run id of the align run")
    which.add_argument("--align-dir", default=None, help="folder of the align run (its output_dir)")
    p.add_argument("--config", default=None, help="YAML config (see configs/evaluate.yaml); default: built-in defaults")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"dotted overrides, {example}")


def evaluate_config(args: argparse.Namespace):
    """The EvaluateConfig of `align_run_arguments` (the align run by id or by folder)."""
    from brainmm.config import load_config
    from brainmm.evaluate import EvaluateConfig

    cfg = load_config(EvaluateConfig, args.config, args.overrides)
    if args.run_id:
        cfg.run_id, cfg.align_dir = args.run_id, ""
    else:
        cfg.align_dir, cfg.run_id = args.align_dir, ""
    cfg.check_paths()
    return cfg


def _evaluate(args: argparse.Namespace) -> int:
    cfg = evaluate_config(args)  # checked before torch and mlflow load
    from brainmm.evaluate import run_evaluate

    result = run_evaluate(cfg)
    print(result.summary)
    print(f"evaluation written to {result.output_dir} (MLflow run {result.run_id}, align run {result.align_run_id})")
    return 0
