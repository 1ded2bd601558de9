"""`brainmm.distributed`: shard_range covers every index once across ranks."""

from __future__ import annotations

from brainmm.distributed import shard_range


def test_shard_range_is_a_disjoint_cover():
    for n, world in ((10, 3), (2, 4), (0, 2)):
        parts = [list(shard_range(n, r, world)) for r in range(world)]
        assert sum(parts, []) == list(range(n))
