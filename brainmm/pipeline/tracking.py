"""The pipeline's parent MLflow run, driven through the client so that no run is active while the stages run.

Stage runs are started by the stages themselves (pretrain, align, evaluate, the shuffled-pair align run); once a
stage has finished (or failed) its run gets the tags `mlflow.parentRunId` (the pipeline run: the MLflow UI shows
it nested) and `brainmm.pipeline_run_id`. The evaluate run stays a child of its align run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from brainmm.config import dump_yaml, flatten, to_dict
from brainmm.interrupts import caused_by_interrupt
from brainmm.tracking import TrackingConfig, sanitize_metric_name, terminate

PARENT_TAG = "mlflow.parentRunId"
PIPELINE_TAG = "brainmm.pipeline_run_id"


class PipelineRun:
    """The parent run: created at the start, ended FINISHED, FAILED or (Ctrl-C, SIGTERM) KILLED."""

    def __init__(self, uri: str, tracking: TrackingConfig, name: str, tags: dict[str, str]) -> None:
        import mlflow

        from brainmm import tracking as tr

        cfg = TrackingConfig(uri=uri, experiment=tracking.experiment,
                             artifact_location=tracking.artifact_location)
        self.experiment_id = tr.setup(cfg)
        self.client = mlflow.MlflowClient(uri)
        self.uri = uri
        all_tags = {"brainmm.stage": "pipeline", "brainmm.version": _version(), "mlflow.runName": name, **tags}
        self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id
        tr.OPEN_RUNS[self.run_id] = uri  # ended KILLED by the CLI if an interrupt comes before `end`

    def log_config(self, cfg: Any, artifact_file: str = "config.yaml") -> None:
        """Flattened params (MLflow's value limit) and the YAML as an artifact, like brainmm.tracking.log_config."""
        from mlflow.entities import Param

        params = [Param(sanitize_metric_name(k), str(v)[:6000]) for k, v in flatten(to_dict(cfg)).items()]
        self.client.log_batch(self.run_id, params=params)  # MLflow splits it at its own limits
        self.client.log_text(self.run_id, dump_yaml(cfg), artifact_file)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Metrics at step 0 (names sanitised)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(sanitize_metric_name(k), float(v), now, 0)
                                                    for k, v in metrics.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artifact."""
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        """A local file as an artifact."""
        self.client.log_artifact(self.run_id, path, artifact_path)

    def set_tags(self, tags: dict[str, str], run_id: str | None = None) -> None:
        """Tags on the parent run (or on `run_id`), one batch."""
        from mlflow.entities import RunTag

        self.client.log_batch(run_id or self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def adopt(self, run_id: str, stage: str, nest: bool = True) -> None:
        """Tag a stage's run with this run's id and, with `nest`, make it a child of this run."""
        self.set_tags({**({PARENT_TAG: self.run_id} if nest else {}), PIPELINE_TAG: self.run_id}, run_id)
        self.set_tags({f"brainmm.run.{stage}": run_id})

    def end(self, ok: bool) -> None:
        """Mark the run FINISHED, or KILLED while an interrupt (KeyboardInterrupt) propagates, else FAILED."""
        killed = not ok and caused_by_interrupt(sys.exc_info()[1])
        terminate(self.client, self.run_id, "FINISHED" if ok else "KILLED" if killed else "FAILED")


def _version() -> str:
    from brainmm import __version__

    return __version__
