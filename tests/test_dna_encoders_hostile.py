"""Hostile DNA model folders (issue 29): a config.json that is not parseable (nested brackets, bad bytes, not an
object) is one EncoderInputError naming the file, for every family, before transformers reads it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_dna_encoders import folders

from encoders.dna import create_dna_encoder
from encoders.errors import EncoderInputError

__all__ = ["folders"]  # the module fixture: one tiny model folder per family
FAMILIES = {"generator": "generator", "nt-v2": "nt", "hf": "hf", "hyenadna": "hyenadna"}
CONFIGS = {
    "nested brackets": ("[" * 200_000 + "]" * 200_000).encode(),
    "bad bytes": b"\xff\xfe{\x00",
    "not an object": b"[1, 2]",
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("folder", list(FAMILIES))
def test_unusable_config_json_is_one_error(folder: str, config: str, folders, tmp_path: Path) -> None:
    bad = shutil.copytree(folders[folder], tmp_path / "model")
    (bad / "config.json").write_bytes(CONFIGS[config])
    with pytest.raises(EncoderInputError, match=r"model/config\.json"):
        create_dna_encoder(FAMILIES[folder], path=bad)
