"""The FC-only pipeline (`brain_inputs: [connectivity]`): no pretrain, no embed; align on the connectivity PCA."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from test_pipeline import TINY

from brainmm.cli import main
from brainmm.config import load_config
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.pipeline import PipelineConfig, make_plan

FC_ONLY = ["brain_inputs=[connectivity]", "brain_fc_pca=4"]


def test_plan_has_no_pretrain_or_embed_stage(tmp_path: Path) -> None:
    plan = make_plan(load_config(PipelineConfig, None, [f"output_dir={tmp_path / 'out'}", *FC_ONLY]))
    assert "pretrain" not in plan.stages and "embed" not in plan.stages
    assert plan.stages == ["simulate", "ingest", "connectivity", "genetics", "align", "evaluate"]
    assert plan.brain_model is None and plan.config.embed.model == ""
    c = plan.config
    assert c.align.data.brain == str(tmp_path / "out" / "embed" / "brain_inputs")
    assert c.evaluate.data.brain_fc == str(tmp_path / "out" / "connectivity" / "fc")
    mixed = make_plan(load_config(PipelineConfig, None, [f"output_dir={tmp_path / 'out'}", "stages.pretrain=true"]))
    assert {"pretrain", "embed"} <= set(mixed.stages)  # BrainLM in brain_inputs keeps both stages


@pytest.mark.parametrize("stage", ["pretrain", "embed"])
def test_fc_only_refuses_a_brainlm_stage_switch(stage: str) -> None:
    with pytest.raises(BrainmmError, match=f"'stages.{stage}': true, but brain_inputs .* FC-only"):
        make_plan(load_config(PipelineConfig, None, [*FC_ONLY, f"stages.{stage}=true"]))


def test_tiny_fc_only_run_completes(tmp_path: Path, _migrated_mlflow_db: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["demo", "--quiet", "--out", "out", *TINY, *FC_ONLY, "threads=1"])
    assert rc == 0, stdout.getvalue()
    out = tmp_path / "out"
    state = json.loads((out / "pipeline.json").read_text())
    assert state["stages"] == ["simulate", "ingest", "connectivity", "genetics", "align", "evaluate"]
    assert not (out / "pretrain").exists() and not (out / "embed" / "brain.safetensors").exists()
    table = EmbeddingTable.load(out / "embed" / "brain_inputs")
    fc = EmbeddingTable.load(out / "connectivity" / "fc")
    assert table.ids == fc.ids and table.dim == 4 and table.meta["inputs"] == ["connectivity"]
    assert table.meta["connectivity_pca"]["fitted_on"] == "train"
    assert (out / "align").is_dir() and any((out / "align").rglob("metrics.json"))
    assert {state["records"][s]["status"] for s in state["stages"]} == {"finished"}
