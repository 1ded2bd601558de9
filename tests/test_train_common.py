"""`brainmm.train.common`, the training-loop core of both drivers: the RNG state round trip, CheckpointDir
(keeps the previous checkpoint, falls back to it), resume refuses a checkpoint that does not fit the model;
`brainmm align` and `brainmm pretrain` killed with SIGKILL at a random step (real processes), resumed with
`--resume`, end with the weights, metrics and MLflow history of an uninterrupted run (CPU, same seed).

A half-written temp file next to the newest checkpoint (what a kill during a save leaves) must not matter, the
MLflow run must be the same one, and no metric step may be logged twice.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from stage_inputs import (
    BRAINLM_ARCH,
    REPO,
    WINDOW,
    World,
    align_argv,
    check_error,
    run,
    write_fmri_cohort,
    write_tables,
)

from brainmm.cli import main
from brainmm.errors import BrainmmError
from brainmm.train.common import CheckpointDir, capture_rng_state, restore_rng_state, save_checkpoint


def test_resume_after_the_model_shape_changed(world: World, tmp_path: Path, capsys, monkeypatch) -> None:
    from brainmm.embeddings import EmbeddingTable

    monkeypatch.chdir(tmp_path)
    tables = tmp_path / "tables"
    tables.mkdir()
    brain = EmbeddingTable.load(world.root / "tables" / "brain")
    brain.save(tables / "brain")
    out = tmp_path / "align"
    assert main(align_argv(world, out, "train.checkpoint_every=1", brain=tables / "brain")) == 0
    saved = out / "config.yaml"
    original = saved.read_text()
    saved.write_text(original.replace("hidden_dim: 8", "hidden_dim: 12"))  # the head size, edited in place
    code, err = run(["-q", "align", "--config", str(saved), "--resume"], capsys)
    check_error(code, err, r"align --resume \(.*checkpoints\): the checkpoint does not fit the model this run builds: "
                           r"tensor '.*' is \[.*8.*\] in the checkpoint, \[.*12.*\] now \(a model size in the config or "
                           r"the width of an input table changed")
    saved.write_text(original)
    EmbeddingTable(brain.ids, np.hstack([brain.vectors, brain.vectors[:, :1]]), brain.meta).save(tables / "brain")
    code, err = run(["-q", "align", "--config", str(saved), "--resume"], capsys)
    check_error(code, err, r"align --resume .*: tensor '.*' is \[.*6.*\] in the checkpoint, \[.*7.*\] now")


KILL_SEED = 20240611  # picks the step marker and the delay after it


def db_uri(tmp_path: Path, template: Path, name: str) -> str:
    shutil.copy(template, tmp_path / name)
    return f"sqlite:///{tmp_path / name}"


def run_and_kill(argv: list[str], cwd: Path, ready: Callable[[], bool], delay: float, timeout: float = 240) -> None:
    """Start `python -m brainmm.cli argv`, wait for `ready()`, sleep `delay` s, SIGKILL it; it must not have ended."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "BRAINMM_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "brainmm.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point: "
                        f"{proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the kill point was never reached")
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the run finished before it was killed (rc {proc.returncode})"


def partial_temp_file(checkpoint: Path) -> Path:
    """What a kill during `atomic_file` leaves: a half-written temp sibling of the checkpoint."""
    tmp = checkpoint.with_name(f".{checkpoint.name}.k1ll3d.pt.tmp")
    tmp.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    return tmp


def history(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a run: sorted (step, value) pairs."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
            for k in client.get_run(run_id).data.metrics}


def same_tensors(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f"{a} != {b}"


def check_history(uri_a: str, run_a: str, uri_b: str, run_b: str, train_key: str, killed_at: int) -> None:
    """Same metrics with the same values at the same steps; every step once, past the kill to the end."""
    import mlflow

    assert mlflow.MlflowClient(uri_b).get_run(run_b).info.status == "FINISHED"
    ha, hb = history(uri_a, run_a), history(uri_b, run_b)
    assert ha.keys() == hb.keys()
    for key in ha:
        got = [s for s, _ in hb[key]]
        assert len(got) == len(set(got)), f"{key}: a step was logged twice: {got}"
        assert hb[key] == ha[key], key
    steps = [s for s, _ in hb[train_key]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > killed_at


@pytest.mark.slow
def test_align_killed_at_a_random_step_resumes_to_the_uninterrupted_result(
        tmp_path: Path, _migrated_mlflow_db: Path, monkeypatch) -> None:
    from brainmm.embeddings import EmbeddingTable

    monkeypatch.chdir(tmp_path)
    write_tables(tmp_path / "tables", n=30)
    t = tmp_path / "tables"
    epochs, steps_per_epoch = 30, 5  # 21 training pairs, batches of 4; no early stop

    def argv(out: Path, uri: str) -> list[str]:
        return ["-q", "align", "--config", str(REPO / "configs" / "align_clip.yaml"), f"data.brain={t / 'brain'}",
                f"data.genetics={{dna: {t / 'dna'}}}", f"data.split={t / 'split.csv'}", f"output_dir={out}",
                "head.hidden_dim=16", "head.out_dim=8", "train.batch_size=4", f"train.epochs={epochs}",
                "train.warmup_steps=3", "train.lr=0.003", "train.log_every=1", "train.checkpoint_every=3", "train.patience=0",
                "train.device=cpu", f"tracking.uri={uri}", "tracking.experiment=crash"]

    uri_a, uri_b = db_uri(tmp_path, _migrated_mlflow_db, "a.db"), db_uri(tmp_path, _migrated_mlflow_db, "b.db")
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert main(argv(straight, uri_a)) == 0

    rng = random.Random(KILL_SEED)
    epoch = rng.randint(1, 6)  # kill somewhere after the end of this epoch: between or during checkpoints
    log = crashed / "brainmm.log"
    run_and_kill(argv(crashed, uri_b), tmp_path,
                 lambda: log.is_file() and f"align: epoch {epoch} step" in log.read_text(), rng.uniform(0, 0.1))
    killed_run = json.loads((crashed / "run.json").read_text())["mlflow_run_id"]
    assert not (crashed / "metrics.json").exists()
    checkpoint = max((crashed / "checkpoints").glob("step-*.pt"))
    killed_at = torch.load(checkpoint, weights_only=True)["progress"]["step"]
    assert epoch * steps_per_epoch <= killed_at < epochs * steps_per_epoch
    partial_temp_file(checkpoint)

    assert main(["-q", "align", "--config", str(crashed / "config.yaml"), "--resume"]) == 0
    assert json.loads((crashed / "run.json").read_text())["mlflow_run_id"] == killed_run
    same_tensors(straight / "heads.safetensors", crashed / "heads.safetensors")
    assert json.loads((straight / "metrics.json").read_text()) == json.loads((crashed / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        for side in ("brain", "dna"):
            a = EmbeddingTable.load(straight / "embeddings" / split / side)
            b = EmbeddingTable.load(crashed / "embeddings" / split / side)
            assert a.ids == b.ids and (a.vectors == b.vectors).all()
    run_a = json.loads((straight / "run.json").read_text())["mlflow_run_id"]
    check_history(uri_a, run_a, uri_b, killed_run, "align/train/loss", killed_at)


@pytest.mark.slow
def test_pretrain_killed_at_a_random_step_resumes_to_the_uninterrupted_result(
        tmp_path: Path, _migrated_mlflow_db: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_fmri_cohort(tmp_path / "src", n_subjects=8)
    assert main(["-q", "fmri", "ingest", "--cohort", str(tmp_path / "src" / "cohort.csv"), "--coords",
                 str(tmp_path / "src" / "coords.tsv"), "--out", str(tmp_path / "dataset"),
                 "--num-timepoints", str(WINDOW)]) == 0
    max_steps = 48

    def argv(out: Path, uri: str) -> list[str]:
        arch = [f"model.arch.{k}={'null' if v is None else v}" for k, v in BRAINLM_ARCH.items()]
        return ["-q", "pretrain", f"data.dataset={tmp_path / 'dataset'}", f"output_dir={out}",
                "data.windows_per_recording=4", "model.mask_ratio=0.3", f"train.max_steps={max_steps}",
                "train.batch_size=4", "train.micro_batch_size=2", "train.base_lr=0.05", "train.warmup_ratio=0.1",
                "train.log_every=1", "train.checkpoint_every=4", "train.device=cpu", "eval.every=6",
                "eval.batch_size=4", f"tracking.uri={uri}", "tracking.experiment=crash", *arch]

    uri_a, uri_b = db_uri(tmp_path, _migrated_mlflow_db, "a.db"), db_uri(tmp_path, _migrated_mlflow_db, "b.db")
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert main(argv(straight, uri_a)) == 0

    rng = random.Random(KILL_SEED + 1)
    step = 4 * rng.randint(1, 4)  # kill after the checkpoint of this step (or a later one) appears

    def checkpointed() -> bool:
        folder = crashed / "checkpoints"
        return folder.is_dir() and any(p.name.startswith("step-") and p.suffix == ".pt"
                                       and int(p.stem.split("-")[1]) >= step for p in folder.iterdir())

    run_and_kill(argv(crashed, uri_b), tmp_path, checkpointed, rng.uniform(0, 0.1))
    killed_run = json.loads((crashed / "run.json").read_text())["mlflow_run_id"]
    assert not (crashed / "metrics.json").exists()
    newest = max((crashed / "checkpoints").glob("step-*.pt"))
    killed_at = int(newest.stem.split("-")[1])
    assert step <= killed_at < max_steps
    partial_temp_file(newest)

    assert main(["-q", "pretrain", "--config", str(crashed / "config.yaml"), "--resume"]) == 0
    assert json.loads((crashed / "run.json").read_text())["mlflow_run_id"] == killed_run
    same_tensors(straight / "model" / "model.safetensors", crashed / "model" / "model.safetensors")
    assert json.loads((straight / "metrics.json").read_text()) == json.loads((crashed / "metrics.json").read_text())
    run_a = json.loads((straight / "run.json").read_text())["mlflow_run_id"]
    check_history(uri_a, run_a, uri_b, killed_run, "pretrain/train/loss", killed_at)


def test_rng_state_round_trip_covers_python_numpy_torch():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first



def test_checkpoint_dir_keeps_previous_and_falls_back(tmp_path: Path):
    ckpts = CheckpointDir(tmp_path / "ckpt", keep=2)
    for step in (1, 2, 3):
        ckpts.save(step, {"model": {"w": torch.full((2,), float(step))}, "rng": capture_rng_state()})
    assert [p.name for p in ckpts.paths()] == ["step-000000002.pt", "step-000000003.pt"]
    assert ckpts.load_latest()["model"]["w"][0] == 3
    newest = ckpts.paths()[-1]
    newest.write_bytes(newest.read_bytes()[:50])  # damaged newest checkpoint: the previous one is used
    assert ckpts.load_latest()["model"]["w"][0] == 2
    with pytest.raises(BrainmmError, match="non-finite"):
        save_checkpoint(tmp_path / "bad.pt", {"model": {"w": torch.tensor([float("nan")])}})
    assert not (tmp_path / "bad.pt").exists() and not list(tmp_path.glob(".bad.pt*"))
    with pytest.raises(BrainmmError, match="no checkpoint"):
        CheckpointDir(tmp_path / "empty").load_latest()
