"""`brainmm explain --run RUN_ID | --align-dir DIR [--config configs/evaluate.yaml] [KEY=VALUE ...]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `explain` command."""
    p = sub.add_parser(
        "explain",
        help="which variants, edges, parcels and networks carry the brain-genetics link (held-out, FDR-controlled)",
        description="Link scores of every input feature of an align run on held-out subjects (variants with IDs and "
        "positions, connectivity edges, parcels, networks, genes from a BED), with bootstrap CIs, permutation p-values "
        "and Benjamini-Hochberg q-values, for the model and the CCA baselines. Writes <align run>/explain (TSV tables, "
        "Manhattan plot, brain maps) and logs it to MLflow as a child of the align run. Settings: the evaluate "
        "config's `explain` section (docs/explain.md).",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", dest="run_id", default=None, help="MLflow run id of the align run")
    which.add_argument("--align-dir", default=None, help="folder of the align run (its output_dir)")
    p.add_argument("--config", default=None, help="evaluate YAML config (its data and explain sections are used)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. explain.n_permutations=5000 explain.genes=genes.bed")
    p.set_defaults(func=_explain)


def _explain(args: argparse.Namespace) -> int:
    from brainmm.config import load_config
    from brainmm.evaluate import EvaluateConfig
    from brainmm.evaluate.explain import run_explain

    cfg = load_config(EvaluateConfig, args.config, args.overrides)
    if args.run_id:
        cfg.run_id, cfg.align_dir = args.run_id, ""
    else:
        cfg.align_dir, cfg.run_id = args.align_dir, ""
    folder, run_id, summary = run_explain(cfg)
    print(summary)
    print(f"explain written to {folder} (MLflow run {run_id})")
    return 0
