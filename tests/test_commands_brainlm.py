"""`brainmm.commands.brainlm`: `brainmm brainlm inspect` / `smoke` on the golden fixtures and a tiny random model."""

from __future__ import annotations

import json
import shutil

import pytest

from brainmm.cli import main
from encoders.brainlm.testing import checkpoint_from_fixture


def test_inspect_reports_architecture_and_clean_key_check(brainlm_fixtures, tmp_path, capsys):
    folder = checkpoint_from_fixture(brainlm_fixtures / "A_brainlm_tiny_mse", tmp_path / "a")
    assert main(["brainlm", "inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "BrainLM MAE (Nystromformer" in out and "hidden 32, 2 layers, 2 heads" in out
    assert "parameters: 27,536 (encoder 17,924)" in out
    assert "key check: OK" in out
    assert "regenerated deterministic buffers: decoder.pos_embedding.pe, vit.embeddings.pos_embedding.pe" in out
    assert "ignored unused leftover of the original: decoder.decoder_pred.bias, decoder.decoder_pred.weight" in out
    vit = checkpoint_from_fixture(brainlm_fixtures / "C_vitmae_pad_tiny", tmp_path / "c")
    assert main(["brainlm", "inspect", str(vit)]) == 0
    out = capsys.readouterr().out
    assert "ViT-MAE (424 x 200 padded with -1 to 432 x 432)" in out and "729 tokens" in out and "key check: OK" in out


def test_inspect_lists_shape_mismatches(brainlm_fixtures, tmp_path, capsys):
    fixture = brainlm_fixtures / "A_brainlm_tiny_mse"
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(fixture / "weights.safetensors", folder / "model.safetensors")
    cfg = json.loads((fixture / "config.json").read_text())
    cfg["decoder_intermediate_size"] = 40
    (folder / "config.json").write_text(json.dumps(cfg))
    assert main(["brainlm", "inspect", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "shape mismatch decoder.decoder_layers.0.intermediate.dense.weight: checkpoint [48, 32], config [40, 32]" in out


def test_smoke_embeds_a_random_batch(brainlm_fixtures, tmp_path, capsys):
    assert main(["brainlm", "smoke", "--batch", "3", "--pooling", "time_then_voxel"]) == 0
    out = capsys.readouterr().out
    assert "embedding shape: [3, 32]" in out and "first values:" in out
    vit = checkpoint_from_fixture(brainlm_fixtures / "C_vitmae_pad_tiny", tmp_path / "c")
    assert main(["brainlm", "smoke", "--checkpoint", str(vit), "--pooling", "mean"]) == 0
    assert "embedding shape: [2, 24]" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["brainlm", "inspect", "/nonexistent/brainlm"],
                                  ["brainlm", "smoke", "--checkpoint", "/nonexistent/brainlm"],
                                  ["brainlm", "smoke", "--batch", "0"]])
def test_user_errors_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("brainmm: error: ")
