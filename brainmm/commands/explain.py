"""`brainmm explain --run RUN_ID | --align-dir DIR [--config configs/evaluate.yaml] [KEY=VALUE ...]`."""

from __future__ import annotations

import argparse

from brainmm.commands.evaluate import align_run_arguments, evaluate_config


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
    align_run_arguments(p, "e.g. explain.n_permutations=5000 explain.genes=genes.bed")
    p.set_defaults(func=_explain)


def _explain(args: argparse.Namespace) -> int:
    cfg = evaluate_config(args)  # checked before torch and mlflow load
    from brainmm.evaluate.explain import run_explain

    folder, run_id, summary = run_explain(cfg)
    print(summary)
    print(f"explain written to {folder} (MLflow run {run_id})")
    return 0
