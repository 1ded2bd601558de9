"""`brainmm.train.pretrain`: the BrainLM pretraining driver (tiny random-init model, small synthetic dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainmm.config import ConfigError, load_config
from brainmm.errors import BrainmmError
from brainmm.train.common import (
    CheckpointDir,
)
from brainmm.train.pretrain import PretrainConfig, run_pretrain

V, T_REC, WINDOW = 8, 60, 20
TINY_ARCH = {
    "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
    "decoder_hidden_size": 8, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 16, "timepoint_patching_size": 5, "conv_kernel_size": None,
}


def make_dataset(root: Path, n_subjects: int = 5, parcels: int = V, length: int = T_REC, window: int = WINDOW,
                 seed: int = 0) -> Path:
    """Ingest a small synthetic dataset (a shared slow signal per subject plus noise), split 3/1/1."""
    from brainmm.data.fmri import IngestConfig, ingest

    rng = np.random.default_rng(seed)
    src = root / "src"
    src.mkdir(parents=True)
    rows = []
    for s in range(n_subjects):
        common = np.cumsum(rng.normal(size=(length, 1)), axis=0)
        x = common * rng.uniform(0.5, 1.5, size=(1, parcels)) + rng.normal(size=(length, parcels))
        np.save(src / f"s{s}.npy", x.astype(np.float32))
        rows.append({"subject_id": f"sub{s}", "path": f"s{s}.npy"})
    pd.DataFrame(rows).to_csv(src / "cohort.csv", index=False)
    coords = rng.uniform(-60, 60, size=(parcels, 3))
    pd.DataFrame(coords, columns=["x", "y", "z"]).to_csv(src / "coords.tsv", sep="\t", index=False)
    cfg = IngestConfig(coords=src / "coords.tsv", num_timepoints=window, split_fractions=(0.6, 0.2, 0.2), tr=1.0)
    return ingest(src / "cohort.csv", root / "dataset", cfg)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("fmri"))


def tiny_config(dataset: Path, out: Path, **train) -> PretrainConfig:
    data = {
        "output_dir": str(out),
        "data": {"dataset": str(dataset), "windows_per_recording": 4},
        "model": {"arch": TINY_ARCH, "mask_ratio": 0.25},
        "train": {"max_steps": 6, "batch_size": 4, "micro_batch_size": 2, "log_every": 1, "checkpoint_every": 2,
                  "warmup_ratio": 0.2, "base_lr": 0.05, **train},
        "eval": {"every": 2, "batch_size": 3},
    }
    path = out.parent / f"{out.name}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    return load_config(PretrainConfig, path)


# -------------------------------------------------------------------------------------------- training


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def _history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    import mlflow

    client = mlflow.MlflowClient()
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
            for k in client.get_run(run_id).data.metrics}


def test_resume_gives_bit_identical_weights_metrics_and_one_mlflow_run(dataset: Path, tmp_path: Path, mlflow_uri: str):
    from brainmm.cli import main

    tiny_config(dataset, tmp_path / "straight")
    assert main(["-q", "pretrain", "--config", str(tmp_path / "straight.yaml")]) == 0  # the CLI path
    run_a = json.loads((tmp_path / "straight" / "run.json").read_text())["mlflow_run_id"]

    cfg = tiny_config(dataset, tmp_path / "resumed")
    first = run_pretrain(cfg, stop_at_step=3)  # mid-epoch, between two checkpoints of checkpoint_every=2
    assert not first.finished and first.step == 3
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "step-000000002.pt", "step-000000003.pt"]
    torch.manual_seed(999)
    np.random.seed(999)  # the resumed run must not depend on the caller's RNG state
    second = run_pretrain(cfg, resume=True)
    assert second.finished and second.run_id == first.run_id

    wa, wb = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert ma == mb and ma["steps"] == 6 and len(ma["history"]) == 3
    for split in ("val", "test"):
        assert {"masked_mse", "masked_mae", "r2", "r2_clipped", "pearson_r", "baseline_mean_mse",
                "baseline_interp_mse"} <= ma[split].keys()
    ha, hb = _history(run_a), _history(second.run_id)
    assert ha == hb  # same values at the same steps, nothing logged twice
    assert [s for s, _ in hb["pretrain/train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert "pretrain/val/baseline_interp_mse" in hb and "pretrain/test/masked_mse" in hb and "pretrain/lr" in hb

    import mlflow

    run = mlflow.MlflowClient().get_run(run_a)
    assert float(run.data.params["pretrain.lr"]) == pytest.approx(0.05 * 4 / 256)
    assert run.data.params["pretrain.base_lr"] == "0.05"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_a, "model")}
    assert {"model/config.json", "model/model.safetensors"} <= arts
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run_a, "pretrain")} >= {
        "pretrain/reconstruction_val.png", "pretrain/metrics.json"}
    from encoders.brainlm import BrainLMForPretraining

    assert BrainLMForPretraining.from_pretrained(tmp_path / "straight" / "model").config.hidden_size == 8


def test_continue_pretraining_from_a_checkpoint_folder(dataset: Path, tmp_path: Path, mlflow_uri: str):
    first = run_pretrain(tiny_config(dataset, tmp_path / "a", max_steps=2))
    cfg = tiny_config(dataset, tmp_path / "b", max_steps=2)
    cfg.model.init_from = str(first.model_dir)
    cfg.model.arch.hidden_size = 16  # ignored: the checkpoint's architecture is used
    cfg.model.gradient_checkpointing = True
    second = run_pretrain(cfg)
    assert second.finished and (tmp_path / "b" / "model" / "config.json").is_file()
    assert json.loads((tmp_path / "b" / "model" / "config.json").read_text())["hidden_size"] == 8


def test_nan_loss_stops_with_step_and_recordings_and_no_broken_checkpoint(dataset: Path, tmp_path: Path,
                                                                          mlflow_uri: str, monkeypatch):
    from encoders.brainlm import BrainLMForPretraining

    original = BrainLMForPretraining.forward
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 7:  # the first micro-batch of step 4
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(BrainLMForPretraining, "forward", flaky)
    cfg = tiny_config(dataset, tmp_path / "nan")
    with pytest.raises(BrainmmError, match=r"non-finite loss at step 4 .*recording ids in the batch: \['sub"):
        run_pretrain(cfg)
    ckpts = CheckpointDir(tmp_path / "nan" / "checkpoints")
    assert [p.name for p in ckpts.paths()] == ["step-000000002.pt"]
    state = ckpts.load_latest()
    assert state["progress"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_bad_inputs_give_one_clear_error(dataset: Path, tmp_path: Path, mlflow_uri: str):
    cfg = tiny_config(dataset, tmp_path / "x")
    cfg.model.arch.num_brain_voxels = V + 2
    with pytest.raises(BrainmmError, match=f"has {V} parcels .* num_brain_voxels={V + 2}"):
        run_pretrain(cfg)
    cfg = tiny_config(dataset, tmp_path / "y")
    cfg.model.arch.num_timepoints_per_voxel = 40
    with pytest.raises(BrainmmError, match="windows of 20 time points, but the model expects num_timepoints=40"):
        run_pretrain(cfg)
    cfg.data.dataset = str(tmp_path / "missing")
    with pytest.raises(BrainmmError, match="data.dataset.*missing is not a folder"):
        run_pretrain(cfg)
    cfg = tiny_config(dataset, tmp_path / "z", batch_size=64)
    with pytest.raises(BrainmmError, match="batch_size.*64 is more than the 12 training windows"):
        run_pretrain(cfg)
    assert not (tmp_path / "z" / "checkpoints").exists()
    with pytest.raises(ConfigError, match="unknown config key.*'lr'"):
        load_config(PretrainConfig, None, ["train.lr=0.1"])
    with pytest.raises(BrainmmError, match="model.mask_ratio.*in \\(0, 1\\)"):
        load_config(PretrainConfig, None, ["model.mask_ratio=0"])
    with pytest.raises(BrainmmError, match="train.micro_batch_size.*3 must divide"):
        run_pretrain(tiny_config(dataset, tmp_path / "w", micro_batch_size=3))
    done = tiny_config(dataset, tmp_path / "done", max_steps=1)
    run_pretrain(done)
    with pytest.raises(BrainmmError, match="already holds a pretrain run"):
        run_pretrain(done)
    done.train.base_lr = 1.0
    with pytest.raises(BrainmmError, match="differs from the saved .*'train.base_lr'"):
        run_pretrain(done, resume=True)


@pytest.mark.slow
def test_two_torchrun_processes_train_with_ddp_and_rank0_logs(dataset: Path, tmp_path: Path, mlflow_uri: str):
    import os
    import subprocess
    import sys

    import mlflow

    cfg = tiny_config(dataset, tmp_path / "ddp", max_steps=2, batch_size=4, micro_batch_size=1, checkpoint_every=1)
    cfg.tracking.uri = mlflow_uri
    from brainmm.config import save_config

    save_config(cfg, tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BRAINMM_QUIET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "brainmm.cli", "-q", "pretrain", "--config", str(tmp_path / "ddp.yaml"), "train.device=cpu"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = CheckpointDir(tmp_path / "ddp" / "checkpoints").load_latest()
    assert state["progress"]["step"] == 2 and len(state["rng"]) == 2  # every rank's RNG state is saved
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # distinct masks per rank
    run_id = json.loads((tmp_path / "ddp" / "run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(mlflow_uri)
    assert [m.step for m in client.get_metric_history(run_id, "pretrain/train/loss")] == [1, 2]
    params = client.get_run(run_id).data.params
    assert params["pretrain.world_size"] == "2" and params["pretrain.grad_accum_steps"] == "2"
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_two_ranks_resume_each_with_its_own_rng_stream(dataset: Path, tmp_path: Path, mlflow_uri: str):
    """Random masks on 2 gloo ranks (DDP): every rank's RNG state is checkpointed and each rank gets its own back
    on --resume, so a crashed-then-resumed run ends with the weights, metrics and MLflow history of the
    uninterrupted one (bitwise: same windows, same masks, same reduction order)."""
    from crash_resume import run_two_ranks

    def cfg(out: str) -> PretrainConfig:
        c = tiny_config(dataset, tmp_path / out, micro_batch_size=1, device="cpu")
        c.tracking.uri = mlflow_uri
        return c

    # killed at step 5 (epoch 1; the last checkpoint is step 4 of checkpoint_every=2), then resumed
    runs = [(cfg("straight"), False, 0), (cfg("crashed"), False, 5), (cfg("crashed"), True, 0)]
    run_two_ranks("brainmm.train.pretrain", "run_pretrain", runs)
    rng = CheckpointDir(tmp_path / "crashed" / "checkpoints").paths()
    state = torch.load(rng[0], weights_only=True)
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    wa, wb = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert ma == json.loads((tmp_path / "crashed" / "metrics.json").read_text()) and ma["steps"] == 6
    ids = [json.loads((tmp_path / d / "run.json").read_text())["mlflow_run_id"] for d in ("straight", "crashed")]
    ha, hb = _history(ids[0]), _history(ids[1])
    assert ha == hb and [s for s, _ in hb["pretrain/train/loss"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "configs").glob("pretrain_*.yaml")))
def test_shipped_pretrain_configs_load(name: str):
    cfg = load_config(PretrainConfig, Path(__file__).parents[1] / "configs" / name)
    assert cfg.train.max_steps >= 1 and cfg.model.mask_ratio == 0.2
