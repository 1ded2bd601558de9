"""`encoders.brainlm.checkpoint`: a config.json that describes an absurd model is refused before allocation;
shape mismatches name the tensor and point to `brainmm brainlm inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stage_inputs import check_error, run, write_brainlm


def test_absurd_hidden_size_is_refused_before_allocation(tmp_path: Path, capsys) -> None:
    folder = write_brainlm(tmp_path / "huge")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 10_000_000
    (folder / "config.json").write_text(json.dumps(config))
    code, err = run(["-q", "brainlm", "inspect", str(folder)], capsys)  # inspect accepts mismatches: the budget
    check_error(code, err, r"checkpoint .*huge: the model its config\.json describes \(400,050,620,040,741 parameters\) "
                           r"needs about 1,600,202\.5 GB, more than this machine's available memory \([0-9.,]+ GB of")
    from encoders.brainlm import BrainLMForPretraining
    from encoders.errors import EncoderInputError

    with pytest.raises(EncoderInputError, match=r"tensor '.*' has shape \[.*8\] but the config gives \[.*10000000\]"):
        BrainLMForPretraining.from_pretrained(folder)  # embed/pretrain: the header comparison comes first


def test_checkpoint_errors_point_to_inspect(tmp_path: Path, capsys) -> None:
    from stage_inputs import BRAINLM_ARCH

    folder = write_brainlm(tmp_path / "wide")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 2 * BRAINLM_ARCH["hidden_size"]
    (folder / "config.json").write_text(json.dumps(config))
    from encoders.brainlm import BrainLMForPretraining
    from encoders.errors import EncoderInputError

    with pytest.raises(EncoderInputError, match=rf"; `brainmm brainlm inspect {folder}` lists them all$"):
        BrainLMForPretraining.from_pretrained(folder)
