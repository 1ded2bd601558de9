"""`brainmm evaluate`: retrieval, linear probes and baselines of an align run, reported into MLflow.

    from brainmm.config import load_config
    from brainmm.evaluate import EvaluateConfig, run_evaluate
    result = run_evaluate(load_config(EvaluateConfig, "configs/evaluate.yaml", ["align_dir=runs/align/clip"]))
"""

from brainmm.lazy import lazy_exports

# public name -> defining module, imported on first use (the config loads without torch)
_EXPORTS = {
    "EvaluateConfig": "brainmm.evaluate.config",
    "EvaluateResult": "brainmm.evaluate.driver",
    "run_evaluate": "brainmm.evaluate.driver",
}

__all__ = ["EvaluateConfig", "EvaluateResult", "run_evaluate"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
