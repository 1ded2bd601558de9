"""A baseline is registered in one place (brainmm.evaluate.baseline_registry): the config's choices, the shipped
config, the docs, the fits, the preflight sizes and the pipeline's connectivity wiring all follow the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainmm.config import load_config, read_yaml
from brainmm.errors import BrainmmError
from brainmm.evaluate import EvaluateConfig
from brainmm.evaluate.baseline_registry import (
    BASELINES,
    Baseline,
    baseline_names,
    baseline_needs,
    connectivity_methods,
    register_baseline,
)
from brainmm.preflight import BASELINE_NEEDS, Need

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_and_docs_list_every_registered_baseline() -> None:
    assert baseline_names() == ("cca", "pls", "ridge", "random_head", "fc_cca", "fc_pls", "fc_ridge")
    assert EvaluateConfig().baselines.methods == list(baseline_names())
    assert read_yaml(REPO / "configs" / "evaluate.yaml")["baselines"]["methods"] == list(baseline_names())
    docs = (REPO / "docs" / "evaluation.md").read_text()
    bullets = [line for line in docs.splitlines() if line.startswith("- `")]
    for name, b in BASELINES.items():  # its row names it, or every model it fits
        assert any(f"`{name}`" in line or all(f"`{f}`" in line for f in b.fit) for line in bullets), name
        assert b.doc and b.table in ("brain", "connectivity")


def test_config_choices_and_pipeline_wiring_follow_the_registry(tmp_path: Path) -> None:
    with pytest.raises(BrainmmError, match=r"baselines.methods.*fc_cca"):
        load_config(EvaluateConfig, None, ["baselines.methods=[cca, nope]"])
    assert connectivity_methods(["cca", "fc_pls", "ridge", "fc_cca"]) == ["fc_pls", "fc_cca"]
    assert baseline_needs(["cca", "fc_cca"]) == BASELINE_NEEDS
    with pytest.raises(ValueError, match="already registered"):
        register_baseline(Baseline("cca", ("cca",), "brain", "again"))

    from brainmm.pipeline.config import PipelineConfig
    from brainmm.pipeline.plan import FC_TABLE, make_plan

    out = tmp_path / "out"
    plan = make_plan(load_config(PipelineConfig, REPO / "configs" / "demo.yaml", [f"output_dir={out}"]))
    assert plan.runs["connectivity"] and plan.connectivity == out / FC_TABLE
    assert plan.config.evaluate.data.brain_fc == str(out / FC_TABLE)  # the plan hands its table to evaluate
    given = tmp_path / "fc"
    plan = make_plan(load_config(PipelineConfig, REPO / "configs" / "demo.yaml",
                                 [f"output_dir={out}", f"evaluate.data.brain_fc={given}"]))
    assert not plan.runs["connectivity"] and plan.connectivity == given
    none = make_plan(load_config(PipelineConfig, REPO / "configs" / "demo.yaml", [
        f"output_dir={out}", "brain_inputs=[brainlm]", "evaluate.baselines.methods=[cca]"]))
    assert not none.runs["connectivity"] and none.connectivity is None and none.config.evaluate.data.brain_fc == ""


def test_a_baseline_brings_its_own_preflight_sizes() -> None:
    extra = Baseline("toy_needs_val", ("cca",), "brain", "a toy", (*BASELINE_NEEDS, Need("val", 5, "the toy")))
    register_baseline(extra)
    try:
        assert Need("val", 5, "the toy") in baseline_needs(["cca", "toy_needs_val"])
        assert Need("val", 5, "the toy") not in baseline_needs(["cca"])
    finally:
        del BASELINES["toy_needs_val"]
