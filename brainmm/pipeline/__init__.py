"""The whole pipeline in one command: simulate -> ingest -> pretrain -> embed -> genetics -> align -> evaluate.

    from brainmm.config import load_config
    from brainmm.pipeline import PipelineConfig, run_pipeline
    result = run_pipeline(load_config(PipelineConfig, "configs/demo.yaml", ["output_dir=runs/demo"]))
    print(result.summary)
"""

from brainmm.pipeline.config import STAGES, GeneticsSection, PipelineConfig, PipelineData, StageSwitches
from brainmm.pipeline.plan import Plan, make_plan
from brainmm.pipeline.run import PipelineResult, StageRecord, dry_run, run_pipeline

__all__ = [
    "STAGES",
    "GeneticsSection",
    "PipelineConfig",
    "PipelineData",
    "PipelineResult",
    "Plan",
    "StageRecord",
    "StageSwitches",
    "dry_run",
    "make_plan",
    "run_pipeline",
]
