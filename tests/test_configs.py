"""The shipped `configs/*.yaml`: each loads into its stage's typed config, and the real-data pipeline configs
(BGEN + .sample, covariates, parcel time series without an atlas) plan as written."""

from __future__ import annotations

from pathlib import Path

import pytest
from stage_inputs import REPO

from brainmm.config import load_config
from brainmm.pipeline import PipelineConfig, make_plan


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_into_its_typed_config(path: Path) -> None:
    """configs/<stage>_*.yaml must load with no unknown key or wrong type (a renamed field breaks this test)."""
    from brainmm.align import AlignConfig
    from brainmm.data.simulate import SimulationConfig
    from brainmm.embed import EmbedConfig
    from brainmm.evaluate import EvaluateConfig
    from brainmm.pipeline import PipelineConfig
    from brainmm.train.pretrain import PretrainConfig

    kinds = {"align": AlignConfig, "embed": EmbedConfig, "pretrain": PretrainConfig, "evaluate": EvaluateConfig,
             "simulate": SimulationConfig, "demo": PipelineConfig, "pipeline": PipelineConfig}
    stage = path.stem.split("_")[0]
    assert stage in kinds, f"{path.name}: no config type for stage {stage!r}; name configs <stage>_*.yaml"
    cfg = load_config(kinds[stage], path)
    assert isinstance(cfg, kinds[stage])


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
