"""The `brainmm align` driver: outputs, MLflow logging, exact resume, NaN stop, atomic checkpoints, input errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import brainmm.align as align
from brainmm.align import loop
from brainmm.cli import main
from brainmm.config import load_config
from brainmm.data.splits import make_split, save_split
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.train.common import CheckpointDir, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def make_inputs(root: Path, n: int = 40, recordings: bool = False, genotype_missing: int = 0) -> dict[str, str]:
    """Brain and genetics tables sharing a latent signal, and a split table (subject ids s000...)."""
    rng = np.random.default_rng(0)
    subjects = [f"s{i:03d}" for i in range(n)]
    z = rng.normal(size=(n, 4))
    brain_ids, brain_rows, subject_of = [], [], {}
    for i, s in enumerate(subjects):
        for r in range(2 if recordings and i % 3 == 0 else 1):
            rid = f"{s}_run{r}" if recordings else s
            brain_ids.append(rid)
            brain_rows.append(i)
            subject_of[rid] = s
    brain = z[brain_rows] @ rng.normal(size=(4, 10)) + 0.2 * rng.normal(size=(len(brain_rows), 10))
    meta = {"model": "test-brain", "subject_id": subject_of} if recordings else {"model": "test-brain"}
    EmbeddingTable(brain_ids, brain, meta).save(root / "brain")
    EmbeddingTable(subjects, z @ rng.normal(size=(4, 7)) + 0.2 * rng.normal(size=(n, 7)), {"model": "test-dna"}).save(
        root / "dna")
    keep = subjects[genotype_missing:]
    geno = (z[genotype_missing:] @ rng.normal(size=(4, 5)) > 0).astype(np.float32) * 2
    EmbeddingTable(keep, geno, {"model": "genotype"}).save(root / "genotype")
    save_split(make_split(subjects, seed=0), root / "split.csv")
    return {"brain": str(root / "brain"), "dna": str(root / "dna"), "genotype": str(root / "genotype"),
            "split": str(root / "split.csv")}


def tiny(paths: dict[str, str], out: Path, uri: str, *extra: str) -> list[str]:
    """Overrides that make a tiny, fast run of configs/align_*.yaml."""
    return [f"data.brain={paths['brain']}", f"data.genetics={{dna: {paths['dna']}}}", f"data.split={paths['split']}",
            f"output_dir={out}", "head.hidden_dim=16", "head.out_dim=8", "train.batch_size=8", "train.epochs=3",
            "train.warmup_steps=2", "train.lr=0.003", "train.log_every=1", "train.checkpoint_every=4",
            "train.device=cpu", f"tracking.uri={uri}", "tracking.experiment=align-test", *extra]


def config(*overrides: str, name: str = "align_clip.yaml") -> align.AlignConfig:
    return load_config(align.AlignConfig, REPO / "configs" / name, list(overrides))


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    import mlflow

    return sorted((m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key))


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path, mlflow_uri: str, monkeypatch) -> None:
    paths = make_inputs(tmp_path)
    straight = align.run_align(config(*tiny(paths, tmp_path / "a", mlflow_uri)))

    # outputs of a finished run
    run_a = tmp_path / "a"
    for name in ("config.yaml", "heads.safetensors", "heads.json", "metrics.json", "model_card.md", "brainmm.log",
                 "run.json"):
        assert (run_a / name).is_file(), name
    assert list((run_a / "checkpoints").glob("step-*.pt"))
    assert "each epoch drops 4 of 28 training pairs" in (run_a / "brainmm.log").read_text()
    card = (run_a / "model_card.md").read_text()
    assert "| train | 28 | 28 |" in card and "chance R@1" in card and "| brain_to_dna |" in card
    val = EmbeddingTable.load(straight.embeddings["val"]["brain"])
    assert val.dim == 8 and len(val.ids) == 6 and val.meta["split"] == "val"
    assert np.allclose(np.linalg.norm(val.vectors, axis=1), 1, atol=1e-5)
    heads = align.load_heads(run_a)
    source = EmbeddingTable.load(paths["brain"]).subset(val.ids)
    assert np.allclose(align.project_table(heads, source, "brain").vectors, val.vectors, atol=1e-6)
    assert set(straight.embeddings["test"]) == {"brain", "dna"}

    import mlflow

    run = mlflow.get_run(straight.run_id)
    assert run.data.params["loss.kind"] == "clip" and run.data.params["data.train_pairs"] == "28"
    for key in ("align/train/loss", "align/train/temperature", "align/train/logit_scale", "align/train/lr/heads",
                "align/val/brain_to_dna/R_at_1", "align/val/dna_to_brain/R_at_10",
                "align/val/brain_to_dna/R_at_1_chance", "align/val/score"):
        assert key in run.data.metrics, key
    assert run.data.metrics["align/train/temperature"] == pytest.approx(1 / run.data.metrics["align/train/logit_scale"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(straight.run_id, "align")}
    assert {"align/heads.safetensors", "align/model_card.md", "align/metrics.json"} <= artifacts

    # the same run, killed at step 7 (last checkpoint: step 4, mid-epoch 1), then resumed
    original, calls = loop._train_step, {"n": 0}

    def killed_at_step_7(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    cfg_b = config(*tiny(paths, tmp_path / "b", mlflow_uri))
    monkeypatch.setattr(loop, "_train_step", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        align.run_align(cfg_b)
    monkeypatch.setattr(loop, "_train_step", original)
    crashed_run = json.loads((tmp_path / "b" / "run.json").read_text())["mlflow_run_id"]
    assert CheckpointDir(tmp_path / "b" / align.CHECKPOINTS).load_latest()["progress"]["step"] == 4
    with pytest.raises(BrainmmError, match="pass --resume"):
        align.run_align(cfg_b)
    with pytest.raises(BrainmmError, match=r"differs from the saved .* \['train.lr'\]"):
        align.run_align(config(*tiny(paths, tmp_path / "b", mlflow_uri), "train.lr=0.001"), resume=True)
    resumed = align.run_align(cfg_b, resume=True)

    assert resumed.run_id == crashed_run
    from safetensors.torch import load_file

    a, b = load_file(str(run_a / "heads.safetensors")), load_file(str(tmp_path / "b" / "heads.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run_a / "metrics.json").read_text()) == json.loads((tmp_path / "b" / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert np.array_equal(EmbeddingTable.load(straight.embeddings[split]["dna"]).vectors,
                              EmbeddingTable.load(resumed.embeddings[split]["dna"]).vectors)
    for key in ("align/train/loss", "align/val/score"):
        got, want = history(resumed.run_id, key), history(straight.run_id, key)
        assert [s for s, _ in got] == [s for s, _ in want]  # no duplicated steps
        assert np.allclose([v for _, v in got], [v for _, v in want], rtol=0, atol=0)
    assert [s for s, _ in history(resumed.run_id, "align/train/loss")] == list(range(1, 10))


def test_nan_loss_stops_with_step_and_subjects_and_keeps_the_last_checkpoint(tmp_path: Path, mlflow_uri: str,
                                                                             monkeypatch) -> None:
    from alignment.losses import ClipLoss

    paths = make_inputs(tmp_path)
    cfg = config(*tiny(paths, tmp_path / "run", mlflow_uri, "train.checkpoint_every=2"))
    original, calls = ClipLoss.forward, {"n": 0}

    def nan_on_third_step(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(ClipLoss, "forward", nan_on_third_step)
    with pytest.raises(BrainmmError, match=r"non-finite loss at step 3 \(epoch 0\); batch subject ids") as err:
        align.run_align(cfg)
    ids = re.findall(r"'(s\d{3})'", str(err.value))
    train_subjects = set(pd.read_csv(paths["split"], dtype=str).query("split == 'train'")["subject_id"])
    assert len(ids) == 8 and set(ids) <= train_subjects
    ckpt = CheckpointDir(tmp_path / "run" / align.CHECKPOINTS).load_latest()
    assert ckpt["progress"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_nan_gradient_with_a_finite_loss_stops_before_the_step(tmp_path: Path, mlflow_uri: str, monkeypatch) -> None:
    """A finite loss whose gradient is NaN (0 x d sqrt(|u|)/du at u = 0) stops the run like a NaN loss does."""
    from alignment.losses import ClipLoss

    paths = make_inputs(tmp_path)
    cfg = config(*tiny(paths, tmp_path / "run", mlflow_uri, "train.checkpoint_every=2"))
    original, calls = ClipLoss.forward, {"n": 0}

    def nan_gradient_on_third_step(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss + 0.0 * (loss - loss.detach()).abs().sqrt() if calls["n"] == 3 else loss

    monkeypatch.setattr(ClipLoss, "forward", nan_gradient_on_third_step)
    with pytest.raises(BrainmmError, match=r"non-finite gradient norm at step 3 \(epoch 0\); batch subject ids"):
        align.run_align(cfg)
    ckpt = CheckpointDir(tmp_path / "run" / align.CHECKPOINTS).load_latest()
    assert ckpt["progress"]["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_precision_is_resolved_once_and_read_back_from_the_heads(tmp_path: Path, mlflow_uri: str) -> None:
    """`train.precision: auto` is resolved once per run; the value is the run param and heads.json's `precision`, and
    `run_precision` / `load_model` read it from there (not from the config, which still says auto)."""
    import mlflow

    from encoders.precision import resolve_precision

    paths = make_inputs(tmp_path)
    result = align.run_align(config(*tiny(paths, tmp_path / "run", mlflow_uri, "train.epochs=1", "train.precision=auto")))
    heads = json.loads((tmp_path / "run" / "heads.json").read_text())
    assert heads["precision"] == resolve_precision("auto", "cpu") == mlflow.get_run(result.run_id).data.params["precision"]
    assert align.run_precision(tmp_path / "run") == heads["precision"]
    other = "bf16" if heads["precision"] == "fp32" else "fp32"  # as if the run had been made on another machine
    (tmp_path / "run" / "heads.json").write_text(json.dumps({**heads, "precision": other}))
    assert align.run_precision(tmp_path / "run") == other == align.load_model(tmp_path / "run").train_precision


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path, mlflow_uri: str) -> None:
    paths = make_inputs(tmp_path)
    # a learning rate this small leaves the validation score unchanged, so it never improves after epoch 0
    cfg = config(*tiny(paths, tmp_path / "run", mlflow_uri, "train.lr=1.0e-12", "train.epochs=10",
                       "train.patience=2", "train.log_every=50"))
    result = align.run_align(cfg)
    assert result.metrics["stopped_early"] and result.metrics["epochs"] == 3 and result.metrics["best_epoch"] == 0
    assert [h["epoch"] for h in result.metrics["history"]] == [0.0, 1.0, 2.0]
    assert result.metrics["val"]["score"] == result.metrics["history"][0]["score"]


def test_cca_initialised_heads_start_at_the_cca_solution(tmp_path: Path, mlflow_uri: str) -> None:
    from alignment.baselines import select_cca
    from alignment.ranks import pair_ranks

    paths = make_inputs(tmp_path, n=120)
    # lr this small: training cannot move the heads, so the kept state is epoch 0 = the CCA solution
    cfg = config(*tiny(paths, tmp_path / "run", mlflow_uri, "head.kind=linear", "head.init=cca", "train.lr=1.0e-12",
                       "train.epochs=4", "train.patience=2", "train.log_every=50"))
    result = align.run_align(cfg)
    split = pd.read_csv(paths["split"], dtype=str).set_index("subject_id")["split"]
    brain, dna = EmbeddingTable.load(paths["brain"]), EmbeddingTable.load(paths["dna"])
    rows = {name: [s for s in brain.ids if split[s] == name] for name in ("train", "val")}
    b = {k: brain.subset(v).vectors.astype(np.float64) for k, v in rows.items()}
    d = {k: dna.subset(v).vectors.astype(np.float64) for k, v in rows.items()}
    sb = {k: (x - b["train"].mean(0)) / b["train"].std(0) for k, x in b.items()}
    sd = {k: (x - d["train"].mean(0)) / d["train"].std(0) for k, x in d.items()}
    u, v = select_cca("cca", sb["train"], sd["train"], sb["val"], sd["val"]).transform(sb["val"], sd["val"])
    expected = float(np.mean([(r == 0).mean() for r in pair_ranks(u, v)]))  # val score: mean R@1, both directions
    assert result.metrics["val"]["score"] == pytest.approx(expected)
    assert all(h["score"] <= expected + 1e-9 for h in result.metrics["history"])
    with pytest.raises(BrainmmError, match="'head.init': 'cca' needs table inputs on both sides"):
        align.run_align(config(*tiny(paths, tmp_path / "run2", mlflow_uri, "head.kind=linear", "head.init=cca",
                                     f"data.genetics={{dna: {paths['dna']}, genotype: {paths['genotype']}}}")))


def test_a_kill_during_checkpoint_save_leaves_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "progress": {"step": 4}})
    real_save = torch.save

    def killed_mid_write(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "progress": {"step": 8}})
    monkeypatch.setattr(torch, "save", real_save)
    state = load_checkpoint(path, torch.device("cpu"))
    assert state["progress"]["step"] == 4 and torch.equal(state["model"]["w"], torch.ones(2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    with pytest.raises(BrainmmError, match="non-finite weights"):
        save_checkpoint(path, {"model": {"w": torch.tensor([float("nan")])}, "progress": {"step": 9}})
    path.write_bytes(b"garbage")
    with pytest.raises(BrainmmError, match="unreadable"):
        load_checkpoint(path, torch.device("cpu"))


def test_input_errors_name_the_problem(tmp_path: Path, mlflow_uri: str) -> None:
    paths = make_inputs(tmp_path)
    base = tiny(paths, tmp_path / "run", mlflow_uri)
    dna = EmbeddingTable.load(paths["dna"])
    EmbeddingTable([f"g{i:03d}" for i in range(len(dna.ids))], dna.vectors).save(tmp_path / "other")
    with pytest.raises(BrainmmError, match=r"share no subject id: 40 brain subjects .* 40 genetics subjects"):
        align.run_align(config(*base, f"data.genetics={{dna: {tmp_path / 'other'}}}"))
    split = pd.read_csv(paths["split"], dtype=str)
    leaky = pd.concat([split, split.iloc[[0]].assign(split="test" if split.iloc[0]["split"] != "test" else "val")])
    leaky.to_csv(tmp_path / "leaky.csv", index=False)
    with pytest.raises(BrainmmError, match=f"leakage: subject_id \\['{split.iloc[0]['subject_id']}'\\]"):
        align.run_align(config(*base, f"data.split={tmp_path / 'leaky.csv'}"))
    brain = EmbeddingTable.load(paths["brain"])
    brain.vectors[5, 2] = np.nan
    brain.save(tmp_path / "nan_brain")
    with pytest.raises(BrainmmError, match=r"1 rows with NaN/inf values, e.g. \['s005'\]"):
        align.run_align(config(*base, f"data.brain={tmp_path / 'nan_brain'}"))
    with pytest.raises(BrainmmError, match="align config field 'train.batch_size'"):
        config(*base, "train.batch_size=1")
    with pytest.raises(BrainmmError, match="larger than the 28 training pairs"):
        align.run_align(config(*base, "train.batch_size=64"))


def test_cli_multimodal_recordings_and_missing_modality(tmp_path: Path, mlflow_uri: str, capsys) -> None:
    paths = make_inputs(tmp_path, recordings=True, genotype_missing=10)
    out = tmp_path / "run"
    overrides = tiny(paths, out, mlflow_uri, f"data.genetics.dna={paths['dna']}",
                     f"data.genetics.genotype={paths['genotype']}", "train.epochs=8", "train.lr=0.01",
                     "train.log_every=4")
    overrides = [o for o in overrides if not o.startswith("data.genetics={")]
    assert main(["--quiet", "align", "--config", str(REPO / "configs" / "align_multimodal.yaml"), *overrides]) == 0
    assert str(out) in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"brain_to_dna/R_at_1", "genotype_to_brain/R_at_1", "score"} <= set(metrics["val"])
    assert metrics["counts"]["brain_rows"] > metrics["counts"]["brain_subjects"] == 40
    val_brain = EmbeddingTable.load(out / "embeddings" / "val" / "brain")
    assert any("_run1" in i for i in EmbeddingTable.load(out / "embeddings" / "train" / "brain").ids)
    assert set(val_brain.meta["subject_id"]) == set(val_brain.ids)
    geno_all = {i for s in ("train", "val", "test") for i in EmbeddingTable.load(out / "embeddings" / s / "genotype").ids}
    assert len(geno_all) == 30 and "s000" not in geno_all
    run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]
    assert len(history(run_id, "align/train/loss/genotype")) == len(history(run_id, "align/train/loss")) > 0
    # the signal is shared, so the heads retrieve far above chance on the validation subjects
    assert metrics["val"]["score"] > 3 * metrics["val"]["brain_to_dna/R_at_1_chance"]


def test_cli_reports_a_user_error_in_one_line(tmp_path: Path, capsys) -> None:
    code = main(["align", "--config", str(REPO / "configs" / "align_siglip.yaml"), f"output_dir={tmp_path / 'r'}",
                 f"data.brain={tmp_path / 'missing'}", f"data.split={tmp_path / 'missing.csv'}"])
    err = capsys.readouterr().err
    # the inputs are checked before torch loads, tables first: the missing brain table is the one line
    assert code == 2 and err.startswith("brainmm: error: embedding table") and err.count("\n") == 1
    assert "missing" in err


@pytest.mark.parametrize("name", ["align_clip.yaml", "align_siglip.yaml", "align_multimodal.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = config(name=name)
    assert cfg.head.out_dim == 512 and cfg.data.genetics and cfg.loss.kind in ("clip", "siglip")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_run_with_bf16_autocast(tmp_path: Path, mlflow_uri: str) -> None:
    paths = make_inputs(tmp_path)
    result = align.run_align(config(*tiny(paths, tmp_path / "gpu", mlflow_uri, "train.device=cuda", "train.precision=auto"),
                                    name="align_siglip.yaml"))
    assert np.isfinite(result.metrics["val"]["score"])
    assert np.allclose(np.linalg.norm(EmbeddingTable.load(result.embeddings["val"]["brain"]).vectors, axis=1), 1,
                       atol=1e-4)


@pytest.mark.slow
def test_two_ranks_resume_each_with_its_own_rng_stream(tmp_path: Path, mlflow_uri: str) -> None:
    """Head dropout on 2 gloo ranks: every rank's RNG state is checkpointed and each rank gets its own back on
    --resume, so a crashed-then-resumed run ends with the heads of the uninterrupted one (bitwise: same batches,
    same masks, same reduction order)."""
    from crash_resume import run_two_ranks
    from safetensors.torch import load_file

    paths = make_inputs(tmp_path)

    def cfg(out: str) -> align.AlignConfig:
        return config(*tiny(paths, tmp_path / out, mlflow_uri, "head.dropout=0.3"))

    runs = [(cfg("straight"), False, 0), (cfg("crashed"), False, 7), (cfg("crashed"), True, 0)]
    run_two_ranks("brainmm.align.loop", "run_align", runs)
    rng = load_checkpoint(sorted((tmp_path / "crashed" / align.CHECKPOINTS).glob("step-*.pt"))[0])["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # one stream per rank
    a = load_file(str(tmp_path / "straight" / "heads.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "heads.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
