"""`brainmm.embed.cache`: the files and folders of a cache entry honour the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from stage_inputs import World, embed

from brainmm.cli import main


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_embedding_cache_honours_the_umask(world: World, tmp_path: Path, umask: int, file_mode: int,
                                           dir_mode: int) -> None:
    before = os.umask(umask)
    try:
        assert main(embed(world, tmp_path, None, f"cache_dir={tmp_path / 'cache'}")) == 0
    finally:
        os.umask(before)
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    found = [entry, *entry.rglob("*")]
    assert len(found) > 3
    for p in found:
        assert stat.S_IMODE(p.stat().st_mode) == (dir_mode if p.is_dir() else file_mode), p
