"""brainmm: align brain activity (BrainLM) and genetics in one shared embedding space."""

import os as _os

__version__ = "0.1.0"

# No network at run time: MLflow 3 sends usage telemetry (a DNS lookup and an HTTPS post) unless one of these is
# set before `import mlflow`. A user's explicit setting wins.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("DO_NOT_TRACK", "true")
