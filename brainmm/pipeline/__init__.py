"""The whole pipeline in one command: simulate -> ingest -> pretrain -> embed -> genetics -> align -> evaluate.

    from brainmm.config import load_config
    from brainmm.pipeline import PipelineConfig, run_pipeline
    result = run_pipeline(load_config(PipelineConfig, "configs/demo.yaml", ["output_dir=runs/demo"]))
    print(result.summary)
"""

from brainmm.lazy import lazy_exports

# public name -> defining module, imported on first use (the config loads without torch)
_EXPORTS = {
    "STAGES": "brainmm.pipeline.config",
    "GeneticsSection": "brainmm.pipeline.config",
    "PipelineConfig": "brainmm.pipeline.config",
    "PipelineData": "brainmm.pipeline.config",
    "StageSwitches": "brainmm.pipeline.config",
    "Plan": "brainmm.pipeline.plan",
    "make_plan": "brainmm.pipeline.plan",
    "PipelineResult": "brainmm.pipeline.run",
    "StageRecord": "brainmm.pipeline.run",
    "dry_run": "brainmm.pipeline.run",
    "run_pipeline": "brainmm.pipeline.run",
}

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
__getattr__ = lazy_exports(__name__, _EXPORTS)
