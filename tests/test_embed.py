"""Brain embeddings from a frozen BrainLM: per-recording means of tiled windows, the on-disk cache, torchrun sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_pretrain import TINY_ARCH, WINDOW, V, make_dataset  # the pytest rootdir/tests folder is on sys.path

from brainmm.embed import EmbedConfig, StreamingTable, run_brain_embed
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from encoders.brainlm import BrainLMConfig, BrainLMForPretraining

    root = tmp_path_factory.mktemp("embed")
    dataset = make_dataset(root / "data", n_subjects=5, length=70)  # 70 TRs: windows at 0, 20, 40 and 50
    torch.manual_seed(0)
    model = BrainLMForPretraining(BrainLMConfig(**TINY_ARCH, num_brain_voxels=V, num_timepoints_per_voxel=WINDOW))
    model.save_pretrained(root / "model")
    return {"root": root, "dataset": dataset, "model": root / "model"}


def config(setup: dict[str, Path], name: str, **kw) -> EmbedConfig:
    kw.setdefault("cache_dir", str(setup["root"] / "cache"))
    kw.setdefault("precision", "fp32")  # compared with fp32 encode below ("auto" is bf16 on AMX/AVX512_BF16 CPUs)
    return EmbedConfig(model=str(setup["model"]), dataset=str(setup["dataset"]), batch_size=3,
                       out=str(setup["root"] / name / "brain"), **kw)


def test_recording_vectors_are_means_of_tiled_windows_and_subjects_average_recordings(setup):
    from brainmm.data.fmri import FmriDataset
    from encoders.brainlm import BrainLMModel

    result = run_brain_embed(config(setup, "a", pooling="mean"))
    assert not result.cache_hit and result.num_recordings == 5
    table = EmbeddingTable.load(result.recordings)
    ds = FmriDataset.load(setup["dataset"])
    assert table.ids == ds.recording_ids(None)
    model = BrainLMModel.from_pretrained(setup["model"]).eval()
    xyz = torch.from_numpy(ds.coords)
    for row, rid in enumerate(table.ids):
        signal = torch.from_numpy(ds.signal(rid))
        windows = torch.stack([signal[:, s : s + WINDOW] for s in (0, 20, 40, 50)])
        with torch.no_grad():
            expected = model.encode(windows, xyz.expand(4, -1, -1), pooling="mean").double().mean(0)
        np.testing.assert_allclose(table.vectors[row], expected.numpy(), rtol=1e-5, atol=1e-6)
    meta = table.meta
    assert meta["subject_id"] == dict(zip(table.ids, ds.recordings["subject_id"]))
    assert set(meta["split"].values()) == {"train", "val", "test"} and meta["pooling"] == "mean"
    assert meta["window"]["num_timepoints"] == WINDOW and len(meta["model_hash"]) == 64
    subjects = EmbeddingTable.load(result.subjects)
    assert subjects.ids == [meta["subject_id"][r] for r in table.ids]  # one recording each here
    np.testing.assert_allclose(subjects.vectors, table.vectors, rtol=1e-6)
    assert "subject_id" not in subjects.meta and subjects.meta["split"] == {
        meta["subject_id"][r]: s for r, s in meta["split"].items()}
    assert (setup["root"] / "a" / "brain.config.yaml").is_file()


def test_second_call_reads_the_cache_without_running_the_model(setup, monkeypatch):
    first = run_brain_embed(config(setup, "b"))
    import brainmm.embed.extract as extract

    def refuse(*args, **kwargs):
        raise AssertionError("the model must not be loaded or run on a cache hit")

    monkeypatch.setattr(extract, "load_frozen_brainlm", refuse)
    monkeypatch.setattr(extract, "_embed_part", refuse)
    second = run_brain_embed(config(setup, "c"))
    assert second.cache_hit and second.cache_entry == first.cache_entry
    a, b = EmbeddingTable.load(first.recordings), EmbeddingTable.load(second.recordings)
    assert a.ids == b.ids and np.array_equal(a.vectors, b.vectors) and a.meta == b.meta
    # the model's own window spelled out is the same entry as `num_timepoints: null`
    assert run_brain_embed(config(setup, "c2", num_timepoints=WINDOW)).cache_entry == first.cache_entry
    with pytest.raises(AssertionError, match="must not be loaded"):  # another pooling is another key
        run_brain_embed(config(setup, "d", pooling="time_then_voxel"))
    with pytest.raises(AssertionError, match="must not be loaded"):  # another precision is another key
        run_brain_embed(config(setup, "d2", precision="bf16"))


def test_bf16_precision_is_its_own_cache_entry_recorded_in_meta_and_close_to_fp32(setup, monkeypatch):
    import encoders.precision as precision

    fp32 = run_brain_embed(config(setup, "p32"))
    bf16 = run_brain_embed(config(setup, "p16", precision="bf16"))
    assert bf16.cache_entry != fp32.cache_entry and not bf16.cache_hit
    a, b = EmbeddingTable.load(fp32.recordings), EmbeddingTable.load(bf16.recordings)
    assert a.meta["precision"] == "fp32" and b.meta["precision"] == "bf16" and a.ids == b.ids
    assert yaml.safe_load((setup["root"] / "p16" / "brain.config.yaml").read_text())["precision"] == "bf16"
    rel = np.linalg.norm(b.vectors - a.vectors, axis=1) / np.linalg.norm(a.vectors, axis=1)
    assert 0 < rel.max() < 96 * 2.0**-8  # bf16 really ran; bound derived in tests/test_precision.py
    # auto resolves per machine and shares the entry of what it resolved to
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: {"avx2": True})
    assert run_brain_embed(config(setup, "pa", precision="auto")).cache_entry == fp32.cache_entry
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: {"avx2": True, "amx_bf16": True})
    auto = run_brain_embed(config(setup, "pb", precision="auto"))
    assert auto.cache_entry == bf16.cache_entry and auto.cache_hit


@pytest.mark.slow
def test_two_torchrun_processes_give_the_one_process_table(setup, tmp_path):
    one = run_brain_embed(config(setup, "one"))
    cfg = config(setup, "two", cache_dir=str(tmp_path / "cache2"))
    path = tmp_path / "embed.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in vars(cfg).items()}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BRAINMM_QUIET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "brainmm.cli", "-q", "embed", "--config", str(path), "device=cpu"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = EmbeddingTable.load(one.recordings), EmbeddingTable.load(setup["root"] / "two" / "brain")
    assert a.ids == b.ids and b.meta["world_size"] == 2
    np.testing.assert_allclose(a.vectors, b.vectors, rtol=1e-5, atol=1e-6)
    sa, sb = EmbeddingTable.load(one.subjects), EmbeddingTable.load(setup["root"] / "two" / "brain_subjects")
    assert sa.ids == sb.ids
    np.testing.assert_allclose(sa.vectors, sb.vectors, rtol=1e-5, atol=1e-6)


def test_vit_checkpoint_needs_y_ordered_424_parcels_and_embeds(tmp_path):
    from transformers import ViTMAEConfig

    from encoders.brainlm.vit import BrainLMViTForPretraining

    vit_cfg = ViTMAEConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                           decoder_intermediate_size=32, patch_size=16, mask_ratio=0.75)
    torch.manual_seed(0)
    BrainLMViTForPretraining(vit_cfg).save_pretrained(tmp_path / "vit")
    small = make_dataset(tmp_path / "small", n_subjects=5)
    with pytest.raises(BrainmmError, match="'time_then_voxel' is not available for a ViT-MAE"):
        run_brain_embed(EmbedConfig(model=str(tmp_path / "vit"), dataset=str(small), pooling="time_then_voxel",
                              cache_dir=str(tmp_path / "c"), out=str(tmp_path / "o" / "x")))
    with pytest.raises(BrainmmError, match="has 8 parcels .* num_brain_voxels=424"):
        run_brain_embed(EmbedConfig(model=str(tmp_path / "vit"), dataset=str(small), cache_dir=str(tmp_path / "c"),
                              out=str(tmp_path / "o" / "x")))

    from brainmm.data.fmri import IngestConfig, ingest

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for s in range(5):
        np.save(src / f"s{s}.npy", rng.normal(size=(220, 424)).astype(np.float32))
        rows.append(f"sub{s},s{s}.npy")
    (src / "cohort.csv").write_text("subject_id,path\n" + "\n".join(rows) + "\n")
    coords = np.round(rng.uniform(-60, 60, size=(424, 3)))
    (src / "coords.tsv").write_text("x\ty\tz\n" + "\n".join("\t".join(map(str, c)) for c in coords) + "\n")
    big = ingest(src / "cohort.csv", tmp_path / "big", IngestConfig(coords=src / "coords.tsv", num_timepoints=200,
                                                                    parcel_order="y", tr=0.72))
    result = run_brain_embed(EmbedConfig(model=str(tmp_path / "vit"), dataset=str(big), pooling="mean", batch_size=4,
                                   precision="fp32", cache_dir=str(tmp_path / "c"), out=str(tmp_path / "o" / "vit")))
    table = EmbeddingTable.load(result.recordings)
    assert table.vectors.shape == (5, 16) and table.meta["model_type"] == "vit_mae"
    from brainmm.data.fmri import FmriDataset
    from encoders.brainlm.preprocessing import VIT_SCALE

    ds = FmriDataset.load(big)
    signal = torch.from_numpy(ds.signal(table.ids[0]))
    windows = torch.stack([signal[:, :200], signal[:, 20:220]]) / VIT_SCALE  # tiled: 0 and the flush window
    model = BrainLMViTForPretraining.from_pretrained(tmp_path / "vit").eval()
    with torch.no_grad():
        expected = model.encode(windows, pooling="mean").double().mean(0).numpy()
    np.testing.assert_allclose(table.vectors[0], expected, rtol=1e-5, atol=1e-6)


def test_bad_inputs_give_one_clear_error(setup, tmp_path):
    with pytest.raises(BrainmmError, match="'model': .*nowhere is not a folder"):
        run_brain_embed(EmbedConfig(model=str(tmp_path / "nowhere"), dataset=str(setup["dataset"])))
    with pytest.raises(BrainmmError, match="no config.json"):
        run_brain_embed(EmbedConfig(model=str(tmp_path), dataset=str(setup["dataset"]), cache_dir=str(tmp_path / "c")))
    with pytest.raises(BrainmmError, match="num_timepoints': 32 is not a multiple of .* 5"):
        run_brain_embed(config(setup, "e", num_timepoints=32, cache_dir=str(tmp_path / "c")))
    with pytest.raises(BrainmmError, match="fewer than the window of 80"):
        run_brain_embed(config(setup, "f", num_timepoints=80, cache_dir=str(tmp_path / "c")))
    from brainmm.config import load_config

    with pytest.raises(BrainmmError, match="'pooling': expected one of 'cls', 'mean', 'time_then_voxel'"):
        load_config(EmbedConfig, None, ["pooling=max"])


def test_streaming_table_writes_a_loadable_table_or_nothing(tmp_path):
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    with StreamingTable(tmp_path / "t", rows=4, dim=3) as writer:
        writer.write(vectors[:3])
        writer.write(vectors[3:])
        writer.close()
    (tmp_path / "t.json").write_text(json.dumps({"ids": list("abcd"), "dim": 3, "meta": {}}))
    assert np.array_equal(EmbeddingTable.load(tmp_path / "t").vectors, vectors)
    with pytest.raises(BrainmmError, match="3 rows written, 5 expected"):
        with StreamingTable(tmp_path / "u", rows=5, dim=3) as writer:
            writer.write(vectors[:3])
            writer.close()
    assert not list(tmp_path.glob("*u.safetensors*"))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("embed_*.yaml")))
def test_shipped_embed_configs_load(name: str):
    from brainmm.config import load_config

    cfg = load_config(EmbedConfig, REPO / "configs" / name)
    assert cfg.model and cfg.dataset and cfg.pooling in ("cls", "mean")
