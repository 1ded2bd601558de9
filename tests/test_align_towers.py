"""`brainmm align` with towers: BrainLM on fMRI windows (frozen + cached / last N / full), genotype MLP on dosages.

Tiny random BrainLM checkpoints, a 16-subject synthetic fMRI dataset (12 parcels, windows of 40 time points).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import brainmm.align as align
from brainmm.align import loop
from brainmm.align.tower_models import GenotypeTower
from brainmm.config import load_config
from brainmm.data.fmri import FmriDataset, IngestConfig, ingest
from brainmm.data.fmri.windows import tile_starts
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.train.common import CheckpointDir
from encoders.brainlm import BrainLMForPretraining, BrainLMModel
from encoders.brainlm.testing import tiny_brainlm_config

REPO = Path(__file__).resolve().parents[1]
V, WINDOW, N = 12, 40, 16
LENGTHS = [40, 50, 60, 70, 80, 95]  # 1, 2, 2, 2, 2, 3 tiled windows of 40


def _checkpoint(folder: Path, seed: int = 0, **overrides) -> str:
    torch.manual_seed(seed)
    BrainLMForPretraining(tiny_brainlm_config(num_timepoints_per_voxel=WINDOW, **overrides)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """fMRI dataset (ingested), BrainLM checkpoint, DNA table, dosage table, split (the dataset's)."""
    root = tmp_path_factory.mktemp("towers")
    rng = np.random.default_rng(0)
    (root / "ts").mkdir()
    rows = []
    for i in range(N):
        x = 100 + rng.standard_normal((LENGTHS[i % len(LENGTHS)], V)) * np.arange(1, V + 1)
        np.save(root / "ts" / f"s{i:02d}.npy", x)
        rows.append({"subject_id": f"s{i:02d}", "path": f"ts/s{i:02d}.npy", "tr": 2.0})
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    xyz = np.round(rng.uniform([-70, -100, -50], [70, 70, 80], size=(V, 3)))
    pd.DataFrame({"label": [f"P{j}" for j in range(V)], "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}).to_csv(
        root / "coords.tsv", sep="\t", index=False)
    dataset = ingest(root / "cohort.csv", root / "fmri", IngestConfig(coords=root / "coords.tsv", num_timepoints=WINDOW))
    subjects = [f"s{i:02d}" for i in range(N)]
    EmbeddingTable(subjects, rng.normal(size=(N, 7)), {"model": "test-dna"}).save(root / "dna")
    EmbeddingTable(subjects, rng.integers(0, 3, size=(N, 20)).astype(np.float32), {"kind": "genotype_matrix"}).save(
        root / "genotype")
    return {"dataset": str(dataset), "checkpoint": _checkpoint(root / "brainlm"), "dna": str(root / "dna"),
            "genotype": str(root / "genotype"), "split": str(Path(dataset) / "split.csv"), "root": str(root)}


def overrides(paths: dict[str, str], out: Path, uri: str, *extra: str) -> list[str]:
    """A tiny, fast run of configs/align_brainlm.yaml (BrainLM last 1 layer, genotype MLP from scratch)."""
    return [f"data.genetics={{dna: {paths['dna']}, genotype: {paths['genotype']}}}", f"data.split={paths['split']}",
            f"towers.brain.checkpoint={paths['checkpoint']}", f"towers.brain.dataset={paths['dataset']}",
            "towers.brain.last_n=1", "towers.brain.lr=0.01", "towers.brain.eval_batch_size=8",
            f"towers.brain.cache_dir={out.parent / 'cache'}", "towers.genetics.genotype.hidden_sizes=[16]",
            "towers.genetics.genotype.output_size=8", f"output_dir={out}", "head.hidden_dim=16", "head.out_dim=8",
            "train.batch_size=4", "train.epochs=2", "train.warmup_steps=1", "train.lr=0.003", "train.log_every=1",
            "train.checkpoint_every=2", "train.device=cpu", f"tracking.uri={uri}", "tracking.experiment=towers",
            *extra]


def config(*args: str) -> align.AlignConfig:
    return load_config(align.AlignConfig, REPO / "configs" / "align_brainlm.yaml", list(args))


def watch_steps(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Wrap loop._train_step: record the model state before the first step, optimizer groups and gradients."""
    seen: dict = {"steps": 0}
    original = loop._train_step

    def step(model, core, loss_fn, optimizer, *args, **kwargs):
        if seen["steps"] == 0:
            seen["before"] = {k: v.detach().clone() for k, v in core.state_dict().items()}
            seen["groups"] = [(g["name"], g["initial_lr"], g["weight_decay"], [id(p) for p in g["params"]])
                              for g in optimizer.param_groups]
            seen["names"] = {id(p): n for n, p in core.named_parameters()}
        out = original(model, core, loss_fn, optimizer, *args, **kwargs)
        if seen["steps"] == 0:
            seen["grads"] = {n: None if p.grad is None else p.grad.abs().sum().item()
                             for n, p in core.named_parameters() if n.startswith(("brain_tower.", "genetics_towers."))}
        seen["steps"] += 1
        return out

    monkeypatch.setattr(loop, "_train_step", step)
    return seen


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The saved tensors of a tower folder (a BrainLM tower: what fine-tuning changed, names relative to the tower)."""
    name = "brainlm_finetune.safetensors" if (folder / "brainlm_finetune.json").is_file() else "model.safetensors"
    return load_file(str(folder / name))


def test_last_n_and_full_train_only_their_blocks_at_the_tower_lr(inputs, tmp_path: Path, mlflow_uri: str,
                                                                 monkeypatch) -> None:
    seen = watch_steps(monkeypatch)
    out = tmp_path / "last_n"
    result = align.run_align(config(*overrides(inputs, out, mlflow_uri)))
    assert seen["steps"] == 6  # 12 train recordings, batch 4, 2 epochs

    # optimizer groups: heads at train.lr, BrainLM at its own lr, genotype MLP at train.lr; decay only on matrices
    groups = {name: (lr, wd, ids) for name, lr, wd, ids in seen["groups"]}
    assert set(groups) == {"heads", "heads_no_decay", "tower_brain", "tower_brain_no_decay", "tower_genotype",
                           "tower_genotype_no_decay"}
    assert groups["tower_brain"][0] == groups["tower_brain_no_decay"][0] == 0.01
    assert groups["heads"][0] == groups["tower_genotype"][0] == 0.003
    names = seen["names"]
    brain_params = {names[i] for g in ("tower_brain", "tower_brain_no_decay") for i in groups[g][2]}
    assert brain_params == {n for n in names.values() if n.startswith(("brain_tower.encoder.encoder.layer.1.",
                                                                       "brain_tower.encoder.layernorm."))}
    assert all(seen["before"][names[i]].ndim >= 2 for i in groups["tower_brain"][2])
    assert any("LayerNorm" in names[i] for i in groups["tower_brain_no_decay"][2])
    assert groups["tower_brain"][1] == 0.1 and groups["tower_brain_no_decay"][1] == 0.0

    # gradients reach every trainable tower tensor and no frozen one
    for name, grad in seen["grads"].items():
        if name.startswith(("brain_tower.encoder.encoder.layer.1.", "brain_tower.encoder.layernorm.",
                            "genetics_towers.genotype.")):
            assert grad is not None and grad > 0, name
        else:
            assert grad is None, name

    # saved towers: BrainLM saves only layer 1 + final LayerNorm (all moved); every genotype MLP tensor moved
    before = seen["before"]
    brain = tensors(out / "towers" / "brain")
    assert brain.keys() == {k[len("brain_tower."):] for k in before
                            if k.startswith(("brain_tower.encoder.encoder.layer.1.", "brain_tower.encoder.layernorm."))}
    for key, value in brain.items():
        assert not torch.equal(value, before["brain_tower." + key]), key
    manifest = json.loads((out / "towers" / "brain" / "brainlm_finetune.json").read_text())
    assert manifest["base"]["folder"] == str(Path(inputs["checkpoint"]).resolve()) and manifest["last_n"] == 1
    geno = GenotypeTower.load(out / "towers" / "genotype").state_dict()
    for key, value in geno.items():
        if key.startswith("encoder.mlp.") and not key.endswith("num_batches_tracked"):
            assert not torch.equal(value, before["genetics_towers.genotype." + key]), key
    assert json.loads((out / "heads.json").read_text())["towers"] == {
        "brain": {"kind": "brainlm", "trainable": "last_n", "path": "towers/brain"},
        "genotype": {"kind": "genotype_mlp", "trainable": "full", "path": "towers/genotype"}}

    # the saved model projects new data exactly as the run did (tiled windows, mean per recording; dosages)
    model = align.load_model(out)
    val = EmbeddingTable.load(result.embeddings["val"]["brain"])
    projected = align.project_fmri(model, inputs["dataset"], "val")
    assert projected.ids == val.ids and np.allclose(projected.vectors, val.vectors, atol=1e-5)
    geno_val = EmbeddingTable.load(result.embeddings["val"]["genotype"])
    dosages = EmbeddingTable.load(inputs["genotype"]).subset(geno_val.ids)
    assert np.allclose(align.project_table(model, dosages, "genotype").vectors, geno_val.vectors, atol=1e-5)
    assert "BrainLM" in (out / "model_card.md").read_text()

    # full fine-tuning with the genotype MLP frozen (started from the first run's): every BrainLM tensor moves,
    # the frozen tower (weights and batch-norm statistics) does not, the heads do
    seen = watch_steps(monkeypatch)
    out2 = tmp_path / "full"
    align.run_align(config(*overrides(inputs, out2, mlflow_uri, "towers.brain.trainable=full", "towers.brain.last_n=0",
                                      f"towers.genetics.genotype.checkpoint={out / 'towers' / 'genotype'}",
                                      "towers.genetics.genotype.trainable=frozen")))
    assert {g[0] for g in seen["groups"]} == {"heads", "heads_no_decay", "tower_brain", "tower_brain_no_decay"}
    params = {n for n in seen["names"].values() if n.startswith("brain_tower.")}
    saved = {"brain_tower." + k: v for k, v in tensors(out2 / "towers" / "brain").items()}
    assert params == saved.keys()
    for key in params:
        assert not torch.equal(saved[key], seen["before"][key]), key
    frozen = GenotypeTower.load(out2 / "towers" / "genotype").state_dict()
    assert frozen.keys() == geno.keys() and all(torch.equal(frozen[k], geno[k]) for k in geno)
    heads = load_file(str(out2 / "heads.safetensors"))
    assert all(not torch.equal(heads[k], seen["before"][k]) for k in heads if k.endswith("net.0.weight"))


def test_frozen_brainlm_embeds_each_recording_once_and_caches(inputs, tmp_path: Path, mlflow_uri: str,
                                                            monkeypatch) -> None:
    calls = {"windows": 0, "calls": 0}
    original = BrainLMModel.encode

    def counting(self, signal, *args, **kwargs):
        calls["windows"] += signal.shape[0]
        calls["calls"] += 1
        return original(self, signal, *args, **kwargs)

    monkeypatch.setattr(BrainLMModel, "encode", counting)
    frozen = ("towers.brain.trainable=frozen", "towers.brain.last_n=0", "train.epochs=3")
    result = align.run_align(config(*overrides(inputs, tmp_path / "a", mlflow_uri, *frozen)))
    ds = FmriDataset.load(inputs["dataset"])
    all_windows = sum(len(tile_starts(int(n), WINDOW)) for n in ds.recordings["num_timepoints"])
    assert calls["windows"] == all_windows  # once per recording's tiled windows, not per training step (9 steps)
    assert calls["calls"] == -(-all_windows // 8)

    # a second run with the same checkpoint and dataset reads the cache: the model never runs during training
    calls.update(windows=0, calls=0)
    again = align.run_align(config(*overrides(inputs, tmp_path / "b", mlflow_uri, *frozen)))
    assert calls["windows"] == 0
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == json.loads(
        (tmp_path / "b" / "metrics.json").read_text())

    # the run folder names the frozen checkpoint (no tensors); the rebuilt model projects new data like the run did
    folder = tmp_path / "a" / "towers" / "brain"
    assert sorted(p.name for p in folder.iterdir()) == ["brainlm_finetune.json", "brainlm_finetune.safetensors",
                                                        "tower.json"]
    assert tensors(folder) == {}
    model = align.load_model(tmp_path / "a")
    val = EmbeddingTable.load(result.embeddings["val"]["brain"])
    assert np.allclose(align.project_fmri(model, inputs["dataset"], "val").vectors, val.vectors, atol=1e-5)
    assert again.metrics["val"]["score"] == result.metrics["val"]["score"]


def test_resume_with_trainable_towers_is_bit_exact(inputs, tmp_path: Path, mlflow_uri: str, monkeypatch) -> None:
    straight = align.run_align(config(*overrides(inputs, tmp_path / "a", mlflow_uri)))
    original, calls = loop._train_step, {"n": 0}

    def killed_at_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    cfg = config(*overrides(inputs, tmp_path / "b", mlflow_uri))
    monkeypatch.setattr(loop, "_train_step", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        align.run_align(cfg)
    monkeypatch.setattr(loop, "_train_step", original)
    ckpt = CheckpointDir(tmp_path / "b" / align.CHECKPOINTS).load_latest()
    assert ckpt["progress"]["step"] == 4 and ckpt["progress"]["batch"] == 1  # mid-epoch 1
    assert any(k.startswith("brain_tower.encoder.encoder.layer.1.") for k in ckpt["model"])
    assert any(k.startswith("genetics_towers.genotype.encoder.mlp.") for k in ckpt["model"])
    assert len(ckpt["optimizer"]["state"]) == sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])
    resumed = align.run_align(cfg, resume=True)

    for rel in ("heads.safetensors", "towers/brain/brainlm_finetune.safetensors", "towers/genotype/model.safetensors"):
        a, b = load_file(str(tmp_path / "a" / rel)), load_file(str(tmp_path / "b" / rel))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    assert straight.metrics == resumed.metrics
    for split in ("train", "val", "test"):
        for name in ("brain", "genotype"):
            assert np.array_equal(EmbeddingTable.load(straight.embeddings[split][name]).vectors,
                                  EmbeddingTable.load(resumed.embeddings[split][name]).vectors)
    import mlflow

    def losses(run_id: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, "align/train/loss"))

    assert losses(resumed.run_id) == losses(straight.run_id) and len(losses(straight.run_id)) == 6


def test_tower_config_errors_name_the_field(inputs, tmp_path: Path, mlflow_uri: str) -> None:
    base = overrides(inputs, tmp_path / "run", mlflow_uri)

    def fails(match: str, *extra: str, build: bool = True) -> None:
        with pytest.raises(BrainmmError, match=match):
            cfg = config(*base, *extra)
            if build:
                align.run_align(cfg)

    fails(r"'towers.brain.kind': expected one of 'table', 'brainlm', got 'vit'", "towers.brain.kind=vit", build=False)
    fails(r"'towers.genetics.dna.kind': expected one of 'table', 'genotype_mlp'", "towers.genetics.dna.kind=mlp",
          build=False)
    fails(r"'towers.genetics.pgs': no such modality", "towers.genetics.pgs.kind=table", build=False)
    fails(r"'data.brain': with towers.brain.kind: brainlm .* leave data.brain empty", f"data.brain={inputs['dna']}",
          build=False)
    fails(r"'towers.brain.last_n': only used with trainable: last_n", "towers.brain.trainable=full", build=False)
    fails(r"'towers.brain.trainable': a table tower has no model", "towers.brain.kind=table",
          "towers.brain.checkpoint=", "towers.brain.dataset=", f"data.brain={inputs['dna']}", build=False)
    fails(r"'towers.genetics.genotype.trainable': a frozen genotype_mlp needs a trained 'checkpoint'",
          "towers.genetics.genotype.trainable=frozen", build=False)
    fails(r"'towers.brain.last_n': 3 is more than the 2 blocks", "towers.brain.last_n=3")
    fails(r"'towers.genetics.genotype.n_snps': 7, but the dosage table .* has 20 columns",
          "towers.genetics.genotype.n_snps=7")
    fails(r"'towers.genetics.dna': genotype_mlp needs a dosage matrix .* values in \[-",
          "towers.genetics.dna.kind=genotype_mlp")
    root = Path(inputs["root"])
    fails(r"towers.brain.dataset': fMRI dataset .* has 12 parcels .* num_brain_voxels=10",
          f"towers.brain.checkpoint={_checkpoint(root / 'ten_parcels', num_brain_voxels=10)}")
    fails(r"towers.brain.dataset': fMRI dataset .* windows of 40 time points, but the model expects num_timepoints=30",
          "towers.brain.num_timepoints=30")
    fails(r"'towers.brain.num_timepoints': windows of 40 time points are not a multiple of .*=15",
          f"towers.brain.checkpoint={_checkpoint(root / 'patch15', timepoint_patching_size=15)}")
    fails(r"towers.brain.checkpoint': checkpoint folder .* does not exist",
          f"towers.brain.checkpoint={root / 'missing'}")
    split = pd.read_csv(inputs["split"], dtype=str)
    moved = split["subject_id"][split["split"] == "train"].iloc[0]
    split.loc[split["subject_id"] == moved, "split"] = "test"
    split.to_csv(root / "other_split.csv", index=False)
    fails(rf"disagree for 1 subject\(s\), e.g. '{moved}' is 'test' here and 'train' in the dataset",
          f"data.split={root / 'other_split.csv'}")


def test_shipped_tower_config_loads() -> None:
    cfg = config()
    assert cfg.towers.brain.kind == "brainlm" and cfg.towers.brain.trainable == "last_n"
    assert cfg.towers.genetics_tower("genotype").kind == "genotype_mlp"
    assert cfg.towers.genetics_tower("dna").kind == "table" and cfg.data.brain == ""


def test_gradient_checkpointing_recomputes_layers_with_the_same_gradients(inputs, tmp_path: Path) -> None:
    from alignment import DistInfo

    def run(flag: bool) -> tuple[dict[str, torch.Tensor], int]:
        torch.manual_seed(0)
        cfg = config(*overrides(inputs, tmp_path / "run", "sqlite:///unused.db", "towers.brain.trainable=full",
                                "towers.brain.last_n=0", f"towers.brain.gradient_checkpointing={str(flag).lower()}"))
        data, core, _ = loop._build(cfg, DistInfo())
        calls = []
        core.brain_tower.encoder.encoder.layer[1].output.dense.register_forward_hook(lambda *_: calls.append(1))
        core.encode_brain(data.splits["train"].windows.batch([0, 1, 2], epoch=0)).sum().backward()
        return {n: p.grad for n, p in core.brain_tower.named_parameters()}, len(calls)

    plain, plain_calls = run(False)
    checkpointed, checkpointed_calls = run(True)
    assert (plain_calls, checkpointed_calls) == (1, 2)  # the layer ran again in the backward pass
    assert plain.keys() == checkpointed.keys() and all(g is not None for g in plain.values())
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-7) for k in plain)


def test_genotype_last_n_trains_the_output_block_and_keeps_frozen_batch_norm_statistics() -> None:
    from brainmm.align.tower_models import set_trainable
    from encoders.genotype import GenotypeEncoder, GenotypeEncoderConfig

    torch.manual_seed(0)
    tower = GenotypeTower(GenotypeEncoder(GenotypeEncoderConfig(n_snps=6, hidden_sizes=[8, 4], output_size=3)))
    assert len(tower.blocks()) == 3  # two hidden blocks (Linear, ReLU, BatchNorm, Dropout) + the output Linear
    names = set_trainable(tower, "last_n", 1, "towers.genetics.g")
    assert names == ["encoder.mlp.8.weight", "encoder.mlp.8.bias"]
    stats = {k: v.clone() for k, v in tower.state_dict().items() if "running" in k}
    tower.train()
    tower(torch.randint(0, 3, (5, 6)).float()).sum().backward()
    assert all(torch.equal(tower.state_dict()[k], v) for k, v in stats.items())  # frozen norms: eval mode
    assert set_trainable(tower, "last_n", 2, "towers.genetics.g")[0].startswith("encoder.mlp.4.")
    tower.train()
    tower(torch.randint(0, 3, (5, 6)).float())
    assert not torch.equal(tower.state_dict()["encoder.mlp.6.running_mean"], stats["encoder.mlp.6.running_mean"])
    with pytest.raises(BrainmmError, match=r"'towers.genetics.g.last_n': 4 is more than the 3 blocks"):
        set_trainable(tower, "last_n", 4, "towers.genetics.g")
    assert set_trainable(tower, "frozen", 0, "towers.genetics.g") == []


def test_tower_registry_names_every_kind_and_refuses_unknown_ones() -> None:
    assert align.list_towers() == ["brainlm", "genotype_mlp", "table"]
    assert align.list_towers("brain") == ["brainlm", "table"]
    assert align.list_towers("genetics") == ["genotype_mlp", "table"]
    assert not align.tower_kind("table").has_model and align.tower_kind("brainlm").has_model
    with pytest.raises(BrainmmError, match=r"tower kind 'genotype_mlp': expected one of \['brainlm', 'table'\]"):
        align.tower_kind("genotype_mlp", "brain")
    with pytest.raises(ValueError, match="already registered"):
        align.register_tower("table", sides=("brain",))(type("Again", (align.TowerKind,), {}))
