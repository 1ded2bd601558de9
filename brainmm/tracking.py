"""MLflow in one place: tracking URI and artifact location, metric-name sanitising, runs, config logging.

Every stage logs through these helpers so names, locations and the fail-fast server check are uniform.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from brainmm.config import flatten, to_dict
from brainmm.errors import BrainmmError
from brainmm.interrupts import caused_by_interrupt, deferred_interrupts

_SUPPORTED_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "databricks")
# runs this process started and has not ended yet (run id -> tracking URI): the CLI ends them KILLED on an interrupt
OPEN_RUNS: dict[str, str] = {}
LOCK_RETRIES = 4  # tries of a run's final status update while sqlite reports "database is locked"
LOCK_WAIT_S = 0.5  # first wait between those tries (doubled each time)


@dataclass
class TrackingConfig:
    """Where runs go: tracking URI (default sqlite:///mlflow.db in the working folder) and experiment."""

    uri: str | None = None
    experiment: str = "brainmm"
    artifact_location: str | None = None  # default: ./mlartifacts beside a sqlite DB
    run_name: str | None = None


def resolve_tracking_uri(uri: str | None) -> str:
    """Explicit URI, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (never the refused file store)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        raise BrainmmError(
            f"tracking URI {uri!r}: the MLflow file store is refused by MLflow 3; "
            "use sqlite:///path/to/mlflow.db or http://host:port"
        )
    if scheme.split("+")[0] not in _SUPPORTED_SCHEMES:
        raise BrainmmError(
            f"tracking URI {uri!r}: unsupported scheme {scheme!r}; expected one of "
            + ", ".join(s + "://" for s in _SUPPORTED_SCHEMES[:3])
        )
    return uri


def default_artifact_location(uri: str) -> str | None:
    """For a sqlite backend: an `mlartifacts` folder beside the DB file (as a file URI)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    db_path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else Path("mlflow.db")
    return (db_path.resolve().parent / "mlartifacts").as_uri()


def check_tracking_server(uri: str, timeout: float = 3.0) -> None:
    """Fail in seconds, before any work, when an HTTP tracking server cannot be reached."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        if parsed.scheme == "sqlite":
            db = Path(uri[len("sqlite:///") :])
            if not db.resolve().parent.exists():
                raise BrainmmError(f"tracking URI {uri!r}: folder {db.resolve().parent} does not exist")
        return
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as resp:  # noqa: S310 (user-configured server)
            if resp.status >= 400:
                raise BrainmmError(f"tracking server {uri}: /health answered HTTP {resp.status}")
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise BrainmmError(
            f"tracking server {uri} is unreachable ({reason}); start it (mlflow server --host 127.0.0.1 "
            "--port PORT) or set tracking.uri to sqlite:///mlflow.db"
        ) from None


def sanitize_metric_name(name: str) -> str:
    """MLflow-safe metric/param name: `alignment.stats.metric_name` ('@k' -> '_at_k', other invalid characters ->
    '_'), imported here on first use so that importing this module stays light (the CLI's config-error path)."""
    from alignment.stats import metric_name

    return metric_name(name)


def setup(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured backend and experiment; returns the experiment id."""
    import mlflow

    uri = resolve_tracking_uri(cfg.uri)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    # a new sqlite file announces its schema migration at INFO: not news for brainmm users
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        location = cfg.artifact_location or default_artifact_location(uri)
        exp_id = client.create_experiment(cfg.experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@contextlib.contextmanager
def start_run(
    cfg: TrackingConfig,
    run_name: str | None = None,
    run_id: str | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
) -> Iterator[Any]:
    """Start (or, with `run_id`, continue) a run in the configured experiment."""
    import mlflow

    if not nested or mlflow.active_run() is None:
        setup(cfg)
    all_tags = {"brainmm.version": _version()}
    all_tags.update(tags or {})
    run, status = None, "FAILED"
    try:
        with deferred_interrupts():  # a signal now is raised once the run is started and registered
            run = mlflow.start_run(
                run_id=run_id, run_name=None if run_id else (run_name or cfg.run_name), nested=nested, tags=all_tags
            )
            OPEN_RUNS[run.info.run_id] = mlflow.get_tracking_uri()
        yield run
        status = "FINISHED"
    except BaseException as err:
        status = "KILLED" if caused_by_interrupt(err) else "FAILED"
        raise
    finally:
        if run is not None:
            _end_run(run.info.run_id, status)


def _end_run(run_id: str, status: str) -> None:
    """End the active run `run_id` with `status` (retrying a locked store); an interrupted run's close never raises."""
    import mlflow

    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:  # ended already (by the code inside the block)
        OPEN_RUNS.pop(run_id, None)
        return
    try:
        with deferred_interrupts():
            try:
                mlflow.end_run(status)  # leaves the active runs first, then sets the status
                OPEN_RUNS.pop(run_id, None)
            except Exception as err:
                if "database is locked" not in str(err):
                    raise
                terminate(mlflow.MlflowClient(), run_id, status)
    except Exception as err:
        if status != "KILLED" and not caused_by_interrupt(sys.exc_info()[1]):
            raise
        reason = " ".join(str(err).split())[:300]
        print(f"brainmm: could not mark MLflow run {run_id} as KILLED ({type(err).__name__}: {reason})", file=sys.stderr)


def terminate(client: Any, run_id: str, status: str, end_time: int | None = None) -> None:
    """`client.set_terminated`, tried again (with growing waits) while the sqlite store reports a lock; the run
    leaves OPEN_RUNS."""
    for attempt in range(LOCK_RETRIES):
        try:
            with deferred_interrupts():
                client.set_terminated(run_id, status, end_time=end_time)
                OPEN_RUNS.pop(run_id, None)
            return
        except Exception as err:
            if "database is locked" not in str(err) or attempt == LOCK_RETRIES - 1:
                raise
            import gc

            gc.collect()  # a connection an interrupt left checked out holds the lock until it is collected
            time.sleep(LOCK_WAIT_S * 2**attempt)


def log_config(cfg: Any, artifact_file: str = "config.yaml") -> None:
    """Log a resolved config: flattened params (values cut to MLflow's limit) and the YAML artifact."""
    import mlflow
    import yaml

    data = to_dict(cfg)
    params = {sanitize_metric_name(k): str(v)[:6000] for k, v in flatten(data).items()}
    with deferred_interrupts():
        mlflow.log_params(params)  # one MlflowClient.log_batch, which splits at MLflow's own batch limits
        mlflow.log_text(yaml.safe_dump(data, sort_keys=False), artifact_file)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log metrics with sanitised names (non-finite values are logged as they are: MLflow accepts NaN)."""
    import mlflow

    clean = {sanitize_metric_name(k): float(v) for k, v in metrics.items()}
    with deferred_interrupts():
        mlflow.log_metrics(clean, step=step)  # one MlflowClient.log_batch (split at MLflow's batch limits)


def _version() -> str:
    from brainmm import __version__

    return __version__
