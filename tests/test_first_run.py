"""The frictions of a first real run (issue 29): progress in log files, help texts, the shared-space figure, a flat
metrics file, one line per baseline table, and the real-data pipeline configs (BGEN + .sample, covariates, parcel
time series without an atlas) loading as they are."""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from brainmm import runtime
from brainmm.cli import build_parser
from brainmm.config import load_config
from brainmm.evaluate.figures import shared_pca
from brainmm.pipeline import PipelineConfig, make_plan

REPO = Path(__file__).resolve().parents[1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bars_only_on_a_terminal(terminal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log file got a redrawn bar per step (168 KB); now it gets one line per loop."""
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    runtime.setup_logging(quiet=False)
    try:
        assert list(runtime.progress(range(50), desc="align epoch 3", unit="it")) == list(range(50))
    finally:
        runtime.set_quiet(False)
    text = stream.getvalue()
    assert runtime._HF_BARS_OFF is not terminal  # transformers / datasets / hub bars follow the same rule
    if terminal:
        assert "\r" in text and "align epoch 3" in text  # tqdm's bar
    else:
        assert "\r" not in text and text.count("\n") == 1, text
        assert text.startswith("align epoch 3: 50 it in ")


def test_quiet_progress_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    runtime.setup_logging(quiet=True)
    try:
        assert sum(runtime.progress(range(5), desc="x")) == 10
    finally:
        runtime.set_quiet(False)
    assert stream.getvalue() == ""


def _subparsers(parser: argparse.ArgumentParser, path: str = "brainmm") -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found[f"{path} {name}"] = child
                found.update(_subparsers(child, f"{path} {name}"))
    return found


def test_every_command_describes_itself_and_demo_describes_the_demo() -> None:
    commands = _subparsers(build_parser())
    assert "brainmm genetics import" in commands and "brainmm demo" in commands
    assert {name for name, p in commands.items() if not (p.description or "").strip()} == set()
    assert "embedding table" in commands["brainmm genetics import"].format_help()
    demo = " ".join(commands["brainmm demo"].description.split())
    defaults = PipelineConfig()
    assert ("connectivity" in demo) == ("connectivity" in defaults.brain_inputs)
    tower = defaults.genetics.genotype_mlp.kind
    assert "MLP tower" not in demo if tower == "table" else "MLP" in demo
    assert f"genetics.genotype_mlp.kind {tower}" in demo
    assert f"initialised by {defaults.align.head.init.upper()}" in demo
    assert ("explain" in demo) == defaults.evaluate.explain.enabled


def test_shared_pca_shows_pairs_and_the_per_component_link() -> None:
    rng = np.random.default_rng(0)
    n, d = 60, 12
    train = rng.normal(size=(400, d)) * np.r_[3.0, 2.5, np.ones(d - 2)]  # PCs 1-2 = dims 0-1
    z = rng.normal(size=(n, 1))
    brain, genetics = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    brain[:, :1] += 3 * z  # the link lives on PC 1 only
    genetics[:, :1] += 3 * z
    fig = shared_pca(train, brain, genetics, "genotype", n_pairs=7)
    scatter, bars = fig.axes
    assert len(scatter.lines) == 7 + 1  # 7 subjects' pair lines, plus the legend entry
    heights = np.array([b.get_height() for b in bars.containers[0]])
    mean = train.mean(0)
    vt = np.linalg.svd(train - mean, full_matrices=False)[2][: len(heights)]
    expected = [np.corrcoef((brain - mean) @ v, (genetics - mean) @ v)[0, 1] for v in vt]
    np.testing.assert_allclose(heights, expected, atol=1e-12)
    band = 1.96 / math.sqrt(n - 3)
    assert abs(heights[0]) > band and np.mean(np.abs(heights[1:]) < band) >= 0.7
    assert len(shared_pca(train, brain, genetics, "genotype", values=z[:, 0], label="age").axes) == 4  # + colour bar


@pytest.mark.parametrize("name", ["pipeline_real.yaml", "pipeline_real_bgen.yaml"])
def test_the_real_data_pipeline_configs_load_as_written(name: str, tmp_path: Path) -> None:
    cfg = load_config(PipelineConfig, REPO / "configs" / name, [f"output_dir={tmp_path}"])
    plan = make_plan(cfg)
    c = plan.config
    assert plan.stages == ["ingest", "connectivity", "embed", "genetics", "align", "evaluate"]
    assert c.align.confounds.covariates and c.align.confounds == c.evaluate.confounds
    assert not set(c.evaluate.probes.targets) & set(c.confounds.covariates)  # no probe of an adjusted covariate
    if name == "pipeline_real_bgen.yaml":
        m = c.genetics.matrix
        assert m.bgen == str(Path(cfg.genetics.matrix.bgen).resolve()) and m.sample.endswith(".sample")
        assert c.ingest.atlas is None and c.ingest.coords is not None  # parcel time series, no atlas
        assert plan.genetic_pcs and c.confounds.pcs == str(tmp_path / "genetics" / "genetic_pcs")
        assert c.align.towers.genetics["genotype"].kind == "genotype_mlp"
    else:
        assert "configs/pipeline_real_bgen.yaml" in (REPO / "configs" / name).read_text()


def test_evaluate_writes_flat_metrics_and_one_line_per_baseline_table(tmp_path: Path, mlflow_uri: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from test_evaluate import align, evaluate_config, make_inputs

    from brainmm.evaluate import run_evaluate

    paths = make_inputs(tmp_path, n=80)
    aligned = align(paths, tmp_path / "align", mlflow_uri, "train.epochs=2")
    caplog.set_level(logging.INFO, logger="brainmm")
    result = run_evaluate(evaluate_config(f"align_dir={aligned.run_dir}", "baselines.methods=[cca, pls]",
                                          "figures.color_by=age", "model.log=false", "retrieval.splits=[test]",
                                          f"output_dir={tmp_path / 'ev'}", "probes.targets=[age]",
                                          f"data.cohort={paths['cohort']}"))
    flat = json.loads((tmp_path / "ev" / "metrics_flat.json").read_text())
    assert flat == {k: (v if math.isfinite(v) else None) for k, v in result.metrics.items()}
    assert flat["retrieval/brain_to_dna/R_at_1"] == result.metrics["retrieval/brain_to_dna/R_at_1"]
    logged = mlflow.MlflowClient().list_artifacts(result.run_id, "evaluation")
    assert "evaluation/metrics_flat.json" in [a.path for a in logged]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("baselines")]
    pls = [line for line in lines if " pls" in line]
    assert len(pls) == 1 and pls == [line for line in lines if " cca" in line], lines  # one line for the table
    assert pls[0].count("chosen on val") == 2, pls
    assert (tmp_path / "ev" / "figures" / "shared_pca_dna.png").is_file()
