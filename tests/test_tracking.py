"""`brainmm.tracking`: tracking-URI rules, metric names (one cleaner: `alignment.stats.metric_name`), a run logging
its config and metrics in MLflow's own batches."""

from __future__ import annotations

import pytest
from test_config import _Cfg

from brainmm.errors import BrainmmError
from brainmm.tracking import TrackingConfig, resolve_tracking_uri, sanitize_metric_name


def test_tracking_uri_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == "sqlite:///mlflow.db"
    with pytest.raises(BrainmmError, match="file store"):
        resolve_tracking_uri("file:///tmp/mlruns")
    with pytest.raises(BrainmmError, match="unsupported scheme 'ftp'"):
        resolve_tracking_uri("ftp://x")
    assert sanitize_metric_name("retrieval/brain_to_dna/R@1") == "retrieval/brain_to_dna/R_at_1"
    assert sanitize_metric_name("a(b)") == "a_b_"


def test_mlflow_run_logs_config_and_metrics(mlflow_uri: str) -> None:
    import mlflow

    from brainmm.tracking import log_config, log_metrics, start_run

    with start_run(TrackingConfig(experiment="t"), run_name="r") as run:
        log_config(_Cfg())
        log_metrics({"val/R@1": 0.5}, step=3)
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params["model.hidden_size"] == "32"
    assert got.data.metrics["val/R_at_1"] == 0.5


def test_metric_names_have_one_cleaner() -> None:
    from alignment.stats import metric_name

    for name in ("retrieval/brain_to_dna/R@10", "a(b)", "probe/site:1/ω r2", "x" * 300, "a,b;c=d"):
        assert sanitize_metric_name(name) == metric_name(name)
    assert sanitize_metric_name("probe/site:1/ω r2") == "probe/site:1/ω r2"  # what MLflow itself accepts stays
    assert sanitize_metric_name("a,b;c=d") == "a_b_c_d" and len(sanitize_metric_name("x" * 300)) == 250


def test_configs_and_metrics_beyond_one_batch_are_logged_whole(mlflow_uri: str) -> None:
    """More params than one MLflow batch holds (100) and more metrics (1000): MLflow's log_batch splits them."""
    from dataclasses import make_dataclass

    import mlflow

    from brainmm.tracking import log_config, log_metrics, start_run

    wide = make_dataclass("Wide", [(f"p{i}", int, i) for i in range(250)])
    with start_run(TrackingConfig(experiment="t"), run_name="wide") as run:
        log_config(wide())
        log_metrics({f"m{i}@1": float(i) for i in range(2500)}, step=2)
    got = mlflow.get_run(run.info.run_id).data
    assert got.params == {f"p{i}": str(i) for i in range(250)}
    assert got.metrics == {f"m{i}_at_1": float(i) for i in range(2500)}
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "m2499_at_1")
    assert [(m.step, m.value) for m in history] == [(2, 2499.0)]
