"""`brainmm.tracking` with a real `mlflow server` (tests/conftest.py): a short alignment logs over HTTP and is
read back with the client; an unreachable server stops every stage's command before any work, with one line and
exit code 2."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import mlflow
import numpy as np
import pytest

from brainmm.align import AlignConfig, run_align
from brainmm.cli import main
from brainmm.config import load_config
from brainmm.data.splits import make_split, save_split
from brainmm.embeddings import EmbeddingTable

pytestmark = pytest.mark.slow  # end to end (the fast lane, -m 'not slow', leaves it out)

REPO = Path(__file__).resolve().parents[1]


def _tables(root: Path, n: int = 60) -> dict[str, str]:
    """Brain and genetics tables sharing a latent factor, and a split."""
    rng = np.random.default_rng(0)
    ids = [f"s{i:03d}" for i in range(n)]
    z = rng.normal(size=(n, 4))
    EmbeddingTable(ids, z @ rng.normal(size=(4, 12)) + 0.2 * rng.normal(size=(n, 12)), {}).save(root / "brain")
    EmbeddingTable(ids, z @ rng.normal(size=(4, 8)) + 0.2 * rng.normal(size=(n, 8)), {}).save(root / "dna")
    save_split(make_split(ids, seed=0), root / "split.csv")
    return {"brain": str(root / "brain"), "dna": str(root / "dna"), "split": str(root / "split.csv")}


def _align_overrides(paths: dict[str, str], out: Path, uri: str) -> list[str]:
    return [f"data.brain={paths['brain']}", f"data.genetics={{dna: {paths['dna']}}}", f"data.split={paths['split']}",
            f"output_dir={out}", "head.hidden_dim=16", "head.out_dim=8", "train.batch_size=16", "train.epochs=4",
            "train.warmup_steps=2", "train.lr=0.003", "train.device=cpu", "train.log_every=1", f"tracking.uri={uri}",
            "tracking.experiment=server-test"]


@pytest.fixture
def dead_uri() -> str:
    """An http URI on a local port nobody listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_alignment_logs_over_http_and_reads_back(tmp_path: Path, mlflow_server: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = _tables(tmp_path)
    cfg = load_config(AlignConfig, REPO / "configs" / "align_clip.yaml",
                      _align_overrides(paths, tmp_path / "align", mlflow_server))
    result = run_align(cfg)
    assert json.loads((tmp_path / "align" / "run.json").read_text())["tracking_uri"] == mlflow_server

    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["brainmm.stage"] == "align"
    assert run.data.tags["brainmm.run_dir"] == str((tmp_path / "align").resolve())
    assert run.data.params["train.epochs"] == "4" and run.data.params["data.train_pairs"] == "42"
    # metric values and histories arrive as logged: the final validation score is the last epoch's
    score = client.get_metric_history(result.run_id, "align/val/score")
    assert [m.step for m in score] == sorted(m.step for m in score) and len(score) == 4
    assert score[-1].value == pytest.approx(result.metrics["history"][-1]["score"])
    loss = client.get_metric_history(result.run_id, "align/train/loss")
    assert len(loss) == result.metrics["steps"] and all(np.isfinite(m.value) for m in loss)
    # artifacts: listed and downloaded over HTTP (the server proxies its artifact store)
    listed = {a.path for a in client.list_artifacts(result.run_id, "align")}
    assert {"align/heads.safetensors", "align/heads.json", "align/metrics.json", "align/model_card.md"} <= listed
    local = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="align/metrics.json",
                                                     tracking_uri=mlflow_server, dst_path=str(tmp_path / "dl")))
    assert json.loads(local.read_text())["best_step"] == result.metrics["best_step"]
    config = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="config.yaml",
                                                      tracking_uri=mlflow_server, dst_path=str(tmp_path / "dl")))
    assert load_config(AlignConfig, config) == cfg


@pytest.mark.parametrize("command", ["align", "pretrain", "evaluate", "demo", "run"])
def test_unreachable_server_fails_before_any_work(command: str, tmp_path: Path, dead_uri: str,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "out"
    if command == "align":
        paths = _tables(tmp_path)
        argv = ["align", "--config", str(REPO / "configs" / "align_clip.yaml"), *_align_overrides(paths, out, dead_uri)]
    elif command == "pretrain":
        argv = ["pretrain", f"data.dataset={tmp_path}", f"output_dir={out}", f"tracking.uri={dead_uri}"]
    elif command == "evaluate":  # an align folder whose run lives on the dead server
        out.mkdir()
        (out / "run.json").write_text(json.dumps({"mlflow_run_id": "0" * 32, "tracking_uri": dead_uri}))
        argv = ["evaluate", "--align-dir", str(out)]
    elif command == "demo":
        argv = ["demo", "--out", str(out), f"tracking.uri={dead_uri}"]
    else:
        argv = ["run", str(REPO / "configs" / "pipeline_real.yaml"), f"output_dir={out}", f"tracking.uri={dead_uri}"]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("brainmm: error: tracking server http://127.0.0.1:") and "unreachable" in err
    assert "\n" not in err  # one line, no traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was written: no data read, no training
