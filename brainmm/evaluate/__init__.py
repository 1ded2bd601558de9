"""`brainmm evaluate`: retrieval, linear probes and baselines of an align run, reported into MLflow.

    from brainmm.config import load_config
    from brainmm.evaluate import EvaluateConfig, run_evaluate
    result = run_evaluate(load_config(EvaluateConfig, "configs/evaluate.yaml", ["align_dir=runs/align/clip"]))
"""

from brainmm.evaluate.config import EvaluateConfig
from brainmm.evaluate.driver import EvaluateResult, run_evaluate

__all__ = ["EvaluateConfig", "EvaluateResult", "run_evaluate"]
