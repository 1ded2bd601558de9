"""Hostile tower settings and checkpoint folders (issue 29): LoRA without peft, a ViT config.json with a list-valued
patch_size, a config.json of nested brackets; each one line naming the field, exit 2, no traceback, no output."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from test_align_brainlm_finetune import cli_error, config, inputs, overrides

from brainmm.config import save_config

__all__ = ["inputs"]  # the module fixture (fMRI dataset + tiny checkpoints per architecture)


def _edited_checkpoint(src: str, tmp: Path, edit) -> str:
    folder = tmp / "ckpt"
    shutil.copytree(src, folder)
    path = folder / "config.json"
    path.write_text(edit(path.read_text()))
    return str(folder)


def _list_patch(text: str) -> str:
    cfg = json.loads(text)
    cfg["patch_size"] = [16, 16]
    return json.dumps(cfg)


CASES = {
    "ViT patch_size is a list": ("vit_mae", _list_patch,
                                 r"ckpt/config\.json: .*patch_size must be 16 or 14 .*got \[16, 16\]"),
    "config.json of nested brackets": ("vit_mae", lambda text: "[" * 200_000 + "]" * 200_000,
                                       r"config\.json.*nested too deeply to parse"),
    "model_type is a list": ("vit_mae", lambda t: json.dumps({**json.loads(t), "model_type": ["vit_mae"]}),
                             r"model_type \['vit_mae'\], expected one of"),
    "ViT hidden_size is a list": ("vit_mae", lambda t: json.dumps({**json.loads(t), "hidden_size": [32]}),
                                  r"checkpoint .*ckpt: config\.json does not describe a model .*hidden_size.*check "
                                  r"its fields"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_checkpoint_config(case: str, inputs, tmp_path: Path, mlflow_uri: str, capsys) -> None:
    arch, edit, message = CASES[case]
    paths = {**inputs[arch], "checkpoint": _edited_checkpoint(inputs[arch]["checkpoint"], tmp_path, edit)}
    out = tmp_path / "run"
    save_config(config(*overrides(paths, out, mlflow_uri, "towers.brain.trainable=frozen",
                                  "towers.brain.lora.rank=8")), tmp_path / "c.yaml")
    err = cli_error(capsys, ["-q", "align", "--config", str(tmp_path / "c.yaml")])
    import re

    assert re.search(message, err), err
    assert not out.exists() or not any(out.iterdir())


def test_lora_without_peft_names_the_extra(inputs, tmp_path: Path, mlflow_uri: str, capsys,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    save_config(config(*overrides(inputs["vit_mae"], out, mlflow_uri)), tmp_path / "c.yaml")
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError, as when not installed
    err = cli_error(capsys, ["-q", "align", "--config", str(tmp_path / "c.yaml")])
    assert "align config field 'towers.brain.lora': trainable 'lora' needs the peft package" in err, err
    assert "pip install 'brainmm[finetune]'" in err
    assert not out.exists() or not any(out.iterdir())


def _genotype_folder(tmp: Path, edit=None) -> Path:
    from encoders.genotype import GenotypeEncoder, GenotypeEncoderConfig

    folder = tmp / "geno"
    GenotypeEncoder(GenotypeEncoderConfig(n_snps=10, hidden_sizes=[8], output_size=4)).save_pretrained(folder)
    if edit is not None:
        path = folder / "config.json"
        path.write_text(edit(path.read_text()))
    return folder


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: "[" * 200_000 + "]" * 200_000, r"config\.json is not usable JSON: nested too deeply"),
    (lambda t: json.dumps({**json.loads(t), "n_snps": [10]}),
     r"config\.json does not describe a GenotypeEncoder \(TypeError: "),
    (lambda t: json.dumps({**json.loads(t), "n_snps": 10**9, "hidden_sizes": [10**6]}),
     r"the genotype tower its config\.json describes needs about .* GB, more than this machine's available memory"),
])
def test_hostile_genotype_tower_config(edit, message: str, tmp_path: Path) -> None:
    from brainmm.align.tower_models import load_genotype_encoder
    from brainmm.errors import BrainmmError

    folder = _genotype_folder(tmp_path, edit)
    with pytest.raises(BrainmmError, match=r"^align config field 'towers\.genetics\.g\.checkpoint': cannot load .*geno.*"
                                           + message):
        load_genotype_encoder(folder, "align config field 'towers.genetics.g.checkpoint'")
    assert load_genotype_encoder(_genotype_folder(tmp_path / "ok"), "x").config.n_snps == 10
