"""`brainmm align` fine-tuning a BrainLM tower of either architecture (ViT-MAE with LoRA, Nystromformer), its saved
adapters + base hash read back by `brainmm embed model=<align run>` and `brainmm evaluate --align-dir`, bad inputs
(one CLI line each), and 2 gloo ranks against one process.

Tiny random checkpoints: the ViT-MAE one has the real 424 x 200 geometry (hidden 24); 16 subjects per dataset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import brainmm.align as align
from brainmm.cli import main
from brainmm.config import load_config, save_config
from brainmm.data.fmri import IngestConfig, ingest
from brainmm.embeddings import EmbeddingTable
from encoders.brainlm import BrainLMForPretraining, BrainLMViTForPretraining
from encoders.brainlm.testing import tiny_brainlm_config, tiny_vit_config

REPO = Path(__file__).resolve().parents[1]
N = 16
SHAPES = {"vit_mae": (424, 200), "brainlm_mae": (12, 40)}  # parcels, window


def _dataset(root: Path, parcels: int, window: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    (root / "ts").mkdir(parents=True)
    rows = []
    for i in range(N):
        np.save(root / "ts" / f"s{i:02d}.npy", 100 + rng.standard_normal((window + 5 * (i % 3), parcels)))
        rows.append({"subject_id": f"s{i:02d}", "path": f"ts/s{i:02d}.npy", "tr": 2.0})
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    xyz = np.round(rng.uniform([-70, -100, -50], [70, 70, 80], size=(parcels, 3)))
    pd.DataFrame({"label": [f"P{j}" for j in range(parcels)], "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}).to_csv(
        root / "coords.tsv", sep="\t", index=False)
    return str(ingest(root / "cohort.csv", root / "fmri", IngestConfig(coords=root / "coords.tsv", num_timepoints=window)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Per architecture: fMRI dataset, checkpoint folder, DNA table, split (the dataset's)."""
    root = tmp_path_factory.mktemp("finetune")
    out = {}
    for arch, (parcels, window) in SHAPES.items():
        dataset = _dataset(root / arch, parcels, window, seed=len(arch))
        torch.manual_seed(0)
        model = (BrainLMViTForPretraining(tiny_vit_config()) if arch == "vit_mae" else
                 BrainLMForPretraining(tiny_brainlm_config(num_timepoints_per_voxel=window)))
        model.save_pretrained(root / arch / "checkpoint")
        subjects = [f"s{i:02d}" for i in range(N)]
        EmbeddingTable(subjects, np.random.default_rng(1).normal(size=(N, 7)), {"model": "test"}).save(root / arch / "dna")
        out[arch] = {"dataset": dataset, "checkpoint": str(root / arch / "checkpoint"), "dna": str(root / arch / "dna"),
                     "split": str(Path(dataset) / "split.csv")}
    return out


def overrides(paths: dict[str, str], out: Path, uri: str, *extra: str) -> list[str]:
    """A tiny run: 12 train subjects, global batch 4, 1 epoch; no dropout in the heads (fp32 comparisons)."""
    return [f"data.genetics={{dna: {paths['dna']}}}", f"data.split={paths['split']}",
            f"towers.brain.checkpoint={paths['checkpoint']}", f"towers.brain.dataset={paths['dataset']}",
            "towers.brain.trainable=lora", "towers.brain.last_n=0", "towers.brain.lora.rank=2",
            "towers.brain.lr=0.01", "towers.brain.pooling=mean", "towers.brain.eval_batch_size=8",
            f"towers.brain.cache_dir={out.parent / 'cache'}", "towers.genetics={}", f"output_dir={out}",
            "head.hidden_dim=16", "head.out_dim=8", "head.dropout=0.0", "train.batch_size=4", "train.epochs=1",
            "train.warmup_steps=1", "train.lr=0.003", "train.log_every=1", "train.checkpoint_every=100",
            "train.device=cpu", "train.precision=fp32", f"tracking.uri={uri}", "tracking.experiment=finetune", *extra]


def config(*args: str) -> align.AlignConfig:
    return load_config(align.AlignConfig, REPO / "configs" / "align_brainlm.yaml", list(args))


def cli_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 with one line on stderr; return that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("brainmm: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.slow
def test_vit_lora_saves_adapters_and_embed_and_evaluate_reload_them(inputs, tmp_path: Path, mlflow_uri: str,
                                                                    capsys) -> None:
    paths = dict(inputs["vit_mae"])
    base = tmp_path / "base"  # a copy we may damage later
    shutil.copytree(paths["checkpoint"], base)
    paths["checkpoint"] = str(base)
    out = tmp_path / "run"
    result = align.run_align(config(*overrides(paths, out, mlflow_uri)))

    # only the LoRA adapters are saved (2 blocks x q/k/v/o x A/B), with the base folder and its hash
    folder = out / "towers" / "brain"
    saved = load_file(str(folder / "brainlm_finetune.safetensors"))
    assert len(saved) == 16 and all(".lora_A." in k or ".lora_B." in k for k in saved)
    assert any(float(v.abs().max()) > 0 for k, v in saved.items() if ".lora_B." in k)  # B started at zero: trained
    manifest = json.loads((folder / "brainlm_finetune.json").read_text())
    assert manifest["base"]["folder"] == str(base.resolve()) and manifest["model_type"] == "vit_mae"
    assert json.loads((folder / "tower.json").read_text())["num_timepoints"] == 200
    assert "vit_mae; LoRA rank 2" in (out / "model_card.md").read_text()

    # the reloaded model projects the dataset as the run did
    model = align.load_model(out)
    val = EmbeddingTable.load(result.embeddings["val"]["brain"])
    projected = align.project_fmri(model, paths["dataset"], "val")
    assert projected.ids == val.ids and np.allclose(projected.vectors, val.vectors, atol=1e-5)

    # `brainmm embed model=<align run>`: the fine-tuned tower's features (mean over tiled windows) of every recording
    emb = tmp_path / "emb" / "brain"
    assert main(["-q", "embed", f"model={out}", f"dataset={paths['dataset']}", f"out={emb}",
                 f"cache_dir={tmp_path / 'cache'}", "device=cpu", "precision=fp32"]) == 0
    table = EmbeddingTable.load(emb)
    assert table.meta["pooling"] == "mean"  # the tower's pooling, whatever the embed config says
    rows = [table.ids.index(r) for r in val.ids]
    with torch.no_grad():
        z = torch.nn.functional.normalize(model.brain_head(torch.from_numpy(table.vectors[rows]).float()), dim=-1)
    assert np.allclose(z.numpy(), val.vectors, atol=1e-5)

    # `brainmm evaluate --align-dir`: the input brain features (baselines, probes) are the tuned tower's, via embed
    from brainmm.evaluate import EvaluateConfig
    from brainmm.evaluate.inputs import load_inputs, resolve_align_run

    ecfg = EvaluateConfig(align_dir=str(out))
    inputs_ = load_inputs(ecfg, resolve_align_run(ecfg))
    assert inputs_.brain is None and inputs_.brain_tower == "brainlm"
    side = inputs_.input_brain("probes")
    assert side.table.ids == table.ids and np.array_equal(side.table.vectors, table.vectors)

    # the base checkpoint changed after the run: embed and evaluate refuse the tower with one line each
    weights = load_file(str(base / "model.safetensors"))
    from safetensors.torch import save_file

    save_file({k: v + 1 if k.endswith("weight") else v for k, v in weights.items()}, str(base / "model.safetensors"),
              metadata={"format": "pt"})
    for argv in (["-q", "embed", f"model={out}", f"dataset={paths['dataset']}", f"out={tmp_path / 'emb2' / 'brain'}",
                  f"cache_dir={tmp_path / 'cache'}", "device=cpu"],
                 ["-q", "evaluate", "--align-dir", str(out), f"output_dir={tmp_path / 'eval'}"]):
        err = cli_error(capsys, argv)
        assert f"base checkpoint {base.resolve()} has weights sha256" in err and manifest["base"]["sha256"] in err, err
    assert not (tmp_path / "emb2").exists() and not (tmp_path / "eval").exists()


def test_bad_finetune_settings_give_one_cli_line_each(inputs, tmp_path: Path, mlflow_uri: str, capsys) -> None:
    nys, vit = inputs["brainlm_mae"], inputs["vit_mae"]
    cases = [
        (nys, ["towers.brain.lora.target_modules=[nope]"],
         r"'towers.brain.lora': lora.target_modules: 'nope' matches no module of the encoder blocks; the Linear "
         r"modules of a block are \["),
        (nys, ["towers.brain.trainable=last_n", "towers.brain.last_n=5", "towers.brain.lora.rank=8"],
         r"'towers.brain.last_n': 5 is more than the 2 blocks of the brainlm_mae encoder"),
        (nys, ["towers.brain.trainable=full"], r"'towers.brain.lora': only used with trainable: lora"),
        (nys, ["towers.brain.lora.rank=0"], r"'towers.brain.lora': lora.rank must be a positive integer, got 0$"),
        (nys, ["towers.brain.lora.dropout=0.1"], r"lora.dropout must be 0 when adapting the Nystromformer"),
        ({**nys, "checkpoint": vit["checkpoint"]}, [],
         r"'towers.brain.dataset': fMRI dataset .*num_brain_voxels=424 \(a ViT-MAE BrainLM takes windows of 424 "
         r"parcels x 200 time points\)"),
        (vit, ["towers.brain.num_timepoints=100"],
         r"'towers.brain.num_timepoints': a ViT-MAE BrainLM .* takes windows of exactly 200 time points, got 100"),
        (vit, ["towers.brain.pooling=time_then_voxel"],
         r"'towers.brain.pooling': 'time_then_voxel' is not available for a vit_mae BrainLM .*expected one of "
         r"\['cls', 'mean'\]"),
        (vit, ["towers.brain.trainable=frozen", "towers.brain.lora.rank=8", "towers.brain.pooling=time_then_voxel"],
         r"'towers.brain.pooling': 'time_then_voxel' is not available for a vit_mae BrainLM"),
    ]
    for k, (paths, extra, message) in enumerate(cases):
        out = tmp_path / f"run{k}"
        cfg = tmp_path / f"c{k}.yaml"
        save_config(config(*overrides(paths, out, mlflow_uri)), cfg)
        err = cli_error(capsys, ["-q", "align", "--config", str(cfg), *extra])
        assert re.search(message, err), (k, err)
        assert not out.exists() or not any(out.iterdir()), (k, sorted(out.iterdir()))


# ----------------------------------------------------------------------------------------- 2 gloo ranks

WORLD = 2
DDP_CASES = {"vit_mae": ["towers.brain.lora.target_modules=[q_proj, v_proj]"],
             "brainlm_mae": ["towers.brain.trainable=last_n", "towers.brain.last_n=1",
                             "towers.brain.gradient_checkpointing=true", "towers.brain.lora.rank=8"]}


def _ddp_configs(inputs, root: Path, uri: str, tag: str) -> dict[str, align.AlignConfig]:
    return {arch: config(*overrides(inputs[arch], root / f"{tag}_{arch}", uri, *extra))
            for arch, extra in DDP_CASES.items()}


def _ddp_worker(rank: int, port: int, configs: dict[str, align.AlignConfig]) -> None:
    """One torchrun-like rank: join the gloo group, run `run_align` (the CLI's driver) for each architecture."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), BRAINMM_QUIET="1")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    for cfg in configs.values():
        align.run_align(cfg)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_train_the_tower_like_one_process(inputs, tmp_path: Path, mlflow_uri: str) -> None:
    """Same global batches (epoch_batches splits each global batch over the ranks), fp32 throughout, no dropout: the
    logged loss of every step and every saved tensor (ViT LoRA adapters; Nystromformer last block + final LayerNorm
    with gradient checkpointing; heads) agree within 1e-5. Scale: fp32 rounding (eps 1.2e-7) of O(1-10) sums, in a
    different order on 2 ranks, through 3 AdamW steps; measured max differences 1e-7 (ViT) to 1e-6 (Nystromformer)."""
    import mlflow
    import torch.multiprocessing as mp

    ddp = _ddp_configs(inputs, tmp_path, mlflow_uri, "ddp")
    mp.spawn(_ddp_worker, args=(_free_port(), ddp), nprocs=WORLD, join=True)
    single = _ddp_configs(inputs, tmp_path, mlflow_uri, "one")
    client = mlflow.MlflowClient(mlflow_uri)

    def losses(out: Path) -> list[tuple[int, float]]:
        run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "align/train/loss"))

    for arch, cfg in single.items():
        align.run_align(cfg)
        a, b = Path(ddp[arch].output_dir), Path(cfg.output_dir)
        la, lb = losses(a), losses(b)
        assert [s for s, _ in la] == [s for s, _ in lb] == [1, 2, 3], arch
        assert max(abs(x - y) for (_, x), (_, y) in zip(la, lb)) <= 1e-5, (arch, la, lb)
        for rel in ("towers/brain/brainlm_finetune.safetensors", "heads.safetensors"):
            ta, tb = load_file(str(a / rel)), load_file(str(b / rel))
            assert ta.keys() == tb.keys() and ta, (arch, rel)
            worst = max(float((ta[k] - tb[k]).abs().max()) for k in ta)
            print(f"{arch} {rel}: max |2 ranks - 1 process| = {worst:.3g}")
            assert worst <= 1e-5, (arch, rel, worst)
        moved = load_file(str(a / "towers/brain/brainlm_finetune.safetensors"))
        assert all(".lora_" in k for k in moved) if arch == "vit_mae" else all(
            k.startswith(("encoder.encoder.layer.1.", "encoder.layernorm.")) for k in moved)


def test_lora_tower_keeps_what_does_not_train_in_eval_mode(inputs, tmp_path: Path) -> None:
    from alignment import DistInfo
    from brainmm.align import loop

    cfg = config(*overrides(inputs["vit_mae"], tmp_path / "run", "sqlite:///unused.db"))
    _, core, tower_lr = loop._build(cfg, DistInfo())
    core.train()
    tower = core.brain_tower
    assert tower_lr["brain"] == 0.01 and core.brain_head.training
    assert not tower.backbone.embeddings.training and not tower.backbone.layernorm.training  # nothing trains there
    assert all(block.training for block in tower.blocks())  # they hold the adapters
    assert {n for n, p in core.named_parameters() if p.requires_grad and n.startswith("brain_tower.")} == {
        f"brain_tower.{n}" for n in tower.trainable_names()} and all(".lora_" in n for n in tower.trainable_names())


def test_shipped_vitmae_lora_config_loads() -> None:
    cfg = load_config(align.AlignConfig, REPO / "configs" / "align_vitmae_lora.yaml")
    b = cfg.towers.brain
    assert (b.kind, b.trainable, b.lora.rank, b.gradient_checkpointing) == ("brainlm", "lora", 8, True)
    assert b.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
