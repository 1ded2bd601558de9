"""Acceptance: `brainmm demo` with no arguments (the default settings of configs/demo.yaml, shuffled-pair baseline on)
recovers the planted brain-genetics link on held-out subjects, beats CCA on its own BrainLM embeddings and the
classical connectivity pipeline (fc_cca; fc_pls and fc_ridge reported), and its shuffled-pair run sits at chance.

One demo run (~1.5-2.5 min on 2 CPU cores) gives every number; the margins over seeds are in docs/pipeline.md."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import binomtest

from brainmm.cli import main

pytestmark = pytest.mark.slow  # end to end (the fast lane, -m 'not slow', leaves it out)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, _migrated_mlflow_db: Path) -> dict:
    """`brainmm demo --quiet` in a fresh working folder (its mlflow.db lands there)."""
    work = tmp_path_factory.mktemp("demo")
    shutil.copy(_migrated_mlflow_db, work / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            rc = main(["demo", "--quiet"])
    table = pd.read_csv(work / "runs" / "demo" / "evaluate" / "metrics.csv").set_index("name")
    return {"rc": rc, "stdout": stdout.getvalue(), "work": work, "table": table}


def test_planted_link_is_found_on_test_subjects(demo: dict) -> None:
    assert demo["rc"] == 0
    t = demo["table"]
    r1 = t.loc["retrieval/brain_to_genotype/R_at_1"]
    assert r1["n"] >= 50  # held-out test subjects, subject level
    # the README's claim: 0.411 [0.305, 0.526], chance 0.014 (30x); held to its CI's low end (22x chance)
    assert r1["value"] >= 22 * r1["chance"], (r1["value"], r1["chance"])
    assert r1["ci_low"] > r1["chance"]
    cca = t.loc["baseline/cca/brain_to_genotype/R_at_1"]
    assert r1["value"] > cca["value"], (r1["value"], cca["value"])
    assert t.loc["retrieval/genotype_to_brain/R_at_1", "value"] >= 5 * r1["chance"]
    # the summary shows the same numbers, and how to open MLflow
    assert f"{r1['value']:.3f} [{r1['ci_low']:.3f}, {r1['ci_high']:.3f}] ({r1['chance']:.3f})" in demo["stdout"]
    assert f"mlflow ui --backend-store-uri sqlite:///{(demo['work'] / 'mlflow.db').resolve()}" in demo["stdout"]


def test_classical_connectivity_pipeline_is_reported(demo: dict) -> None:
    """The fc_* rows (PCA -> CCA / PLS / ridge on Fisher-z connectivity, sizes chosen on val) are in the metrics and
    in the printed table: the comparison a user knows. It finds the planted link too (its CI clears chance), and the
    default recipe is at least as good on test R@1 (issue 13; over seeds: benchmarks/alignment_scaling.md)."""
    t = demo["table"]
    for model in ("fc_cca", "fc_pls", "fc_ridge_brain_to_genotype", "fc_ridge_genotype_to_brain"):
        r1 = t.loc[f"baseline/{model}/brain_to_genotype/R_at_1"]
        assert f"\n{model} " in demo["stdout"] and f"{r1['value']:.3f} [{r1['ci_low']:.3f}" in demo["stdout"], model
    fc = t.loc["baseline/fc_cca/brain_to_genotype/R_at_1"]
    assert fc["ci_low"] > fc["chance"], (fc["ci_low"], fc["chance"])
    model = t.loc["retrieval/brain_to_genotype/R_at_1", "value"]
    assert model >= fc["value"], (model, fc["value"])  # issue 13: the default recipe >= the classical pipeline


def test_shuffled_pairs_sit_at_chance(demo: dict) -> None:
    t = demo["table"]
    mrr = t.loc["baseline/shuffled_pairs/brain_to_genotype/mrr"]
    assert mrr["ci_low"] <= mrr["chance"] <= mrr["ci_high"], (mrr["ci_low"], mrr["chance"], mrr["ci_high"])
    # R@1 is a proportion of hits: its bootstrap CI collapses to [0, 0] with no hit, so use the exact binomial one
    r1 = t.loc["baseline/shuffled_pairs/brain_to_genotype/R_at_1"]
    hits, n = round(r1["value"] * r1["n"]), int(r1["n"])
    low, high = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="exact")
    assert low <= r1["chance"] <= high, (hits, n, r1["chance"])
    # and the trained model is clearly apart from it
    assert t.loc["retrieval/brain_to_genotype/mrr", "ci_low"] > mrr["ci_high"]
