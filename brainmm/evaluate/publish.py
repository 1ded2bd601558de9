"""Log a finished evaluation to MLflow: params, metrics, the metric table (JSON + CSV), figures, summary, the
subject/split tables as dataset inputs and the trained heads as models; into a child of the align run or the run
itself."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from brainmm.errors import BrainmmError
from brainmm.evaluate.config import SPLIT_NAMES, EvaluateConfig
from brainmm.evaluate.inputs import EvalInputs

ARTIFACT_DIR = "evaluation"


class SharedSpaceProjector(nn.Module):
    """One side of the trained heads as a plain module: inputs [B, in_dim] -> L2-normalised shared space [B, D]."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(x), dim=-1)


def exportable(projector: nn.Module) -> SharedSpaceProjector:
    """The projector of one side as an exportable module (genotype towers without their input checks)."""
    from brainmm.align import kind_of

    kind = kind_of(projector[0]) if isinstance(projector, nn.Sequential) else None
    if kind is not None:
        projector = nn.Sequential(kind.export(projector[0]), *projector[1:])
    return SharedSpaceProjector(projector).eval()


def subject_tables(inputs: EvalInputs) -> dict[str, pd.DataFrame]:
    """Per split: subject_id, group, split, brain rows and genetics presence (ids and counts only, no data)."""
    brain_rows = pd.Series([s for sides in inputs.shared.values() if "brain" in sides
                            for s in sides["brain"].subjects], dtype=str).value_counts()
    out = {}
    for split in SPLIT_NAMES:
        rows = inputs.split[inputs.split["split"] == split]
        subjects = rows["subject_id"].astype(str).tolist()
        table = pd.DataFrame({"subject_id": subjects, "group": [inputs.group_of.get(s, s) for s in subjects],
                              "split": split,
                              "brain_rows": [int(brain_rows.get(s, 0)) for s in subjects]})
        for m in inputs.modalities:
            table[f"has_{m}"] = [s in inputs.genetics[m].subject_set for s in subjects]
        out[split] = table
    return out


def refuse_second_evaluation(run_id: str, uri: str) -> None:
    """With mlflow_run=same: an align run that already holds an evaluation is refused (log_table would append)."""
    import mlflow

    logged = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id, ARTIFACT_DIR)]
    if f"{ARTIFACT_DIR}/metrics.json" in logged:
        raise BrainmmError(f"evaluate config field 'mlflow_run': run {run_id} already holds an evaluation "
                           f"({ARTIFACT_DIR}/metrics.json); use mlflow_run=nested to add another one")


def _log_params(cfg: EvaluateConfig, counts: dict[str, Any]) -> None:
    import mlflow

    from brainmm.config import flatten, to_dict
    from brainmm.tracking import sanitize_metric_name

    params = {f"evaluate.{k}": v for k, v in flatten(to_dict(cfg)).items()}
    params.update({f"evaluate.counts.{k}": v for k, v in counts.items()})
    mlflow.log_params({sanitize_metric_name(k): str(v)[:6000] for k, v in params.items()})  # MLflow batches them


def _log_heads(inputs: EvalInputs, cfg: EvaluateConfig) -> dict[str, dict[str, str]]:
    """Each side of the heads as an MLflow model `heads_<side>` (explicit serialization_format and input_example)."""
    import mlflow

    rng = np.random.default_rng(cfg.seed)
    models = {}
    for side, projector in inputs.projectors.items():
        module = exportable(projector)
        in_dim = inputs.heads.brain_head.in_dim if side == "brain" else inputs.genetics[side].table.dim
        example = rng.uniform(0, 2, size=(2, in_dim)).astype(np.float32)  # synthetic: no subject data in the model
        info = mlflow.pytorch.log_model(
            module, name=f"heads_{side}", serialization_format=cfg.model.serialization_format,
            input_example=example, pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        models[side] = {"uri": info.model_uri, "id": info.model_id}
    return models


def _log_datasets(inputs: EvalInputs) -> None:
    import mlflow

    with warnings.catch_warnings():  # MLflow registers the local-file source twice, and hints about int columns
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        for split, table in subject_tables(inputs).items():
            if len(table):
                dataset = mlflow.data.from_pandas(table, source=str(Path(inputs.split_path).resolve()),
                                                  name=f"subjects_{split}")
                mlflow.log_input(dataset, context=split)


def publish(cfg: EvaluateConfig, inputs: EvalInputs, stage: Path, table: pd.DataFrame, flat: dict[str, float],
            figures: dict[str, Any], summary: str, counts: dict[str, Any], tags: dict[str, str]) -> tuple[str, dict]:
    """Log everything to MLflow (the files in `stage` are the local copies); returns (run id, models)."""
    import mlflow

    from brainmm import tracking

    run = inputs.run
    tcfg = tracking.TrackingConfig(uri=run.tracking_uri, experiment=run.experiment)
    client = mlflow.MlflowClient(run.tracking_uri)
    before = client.get_run(run.run_id).info  # reopening the align run must not change its status
    try:
        with tracking.start_run(tcfg, run_id=run.run_id) as parent:
            child = (tracking.start_run(tcfg, run_name=cfg.name, nested=True,
                                        tags={"brainmm.stage": "evaluate", "brainmm.align_run_id": run.run_id})
                     if cfg.mlflow_run == "nested" else contextlib.nullcontext(parent))
            with child as active:
                # models first: log_model links every metric already in the run to the model, seconds per model
                models = _log_heads(inputs, cfg) if cfg.model.log else {}
                for side, info in models.items():
                    tags.update({f"evaluate.model.{side}.uri": info["uri"], f"evaluate.model.{side}.id": info["id"]})
                mlflow.set_tags(tags)
                _log_params(cfg, counts)
                tracking.log_metrics(flat)
                mlflow.log_table(table, f"{ARTIFACT_DIR}/metrics.json")
                for name in ("metrics.csv", "metrics_flat.json", "summary.md", "config.yaml"):
                    mlflow.log_artifact(str(stage / name), ARTIFACT_DIR)
                for path, fig in figures.items():
                    mlflow.log_figure(fig, f"{ARTIFACT_DIR}/{path}")
                for path in sorted((stage / "explain").glob("*.tsv")):  # the explain section's tables
                    mlflow.log_artifact(str(path), f"{ARTIFACT_DIR}/explain")
                _log_datasets(inputs)
                run_id = active.info.run_id
    finally:
        if before.status != "RUNNING":
            client.set_terminated(run.run_id, status=before.status, end_time=before.end_time)
    return run_id, models
