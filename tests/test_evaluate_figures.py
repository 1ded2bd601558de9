"""`brainmm.evaluate.figures`: the shared-space PCA figure shows pairs and the per-component link."""

from __future__ import annotations

import math

import numpy as np

from brainmm.evaluate.figures import shared_pca


def test_shared_pca_shows_pairs_and_the_per_component_link() -> None:
    rng = np.random.default_rng(0)
    n, d = 60, 12
    train = rng.normal(size=(400, d)) * np.r_[3.0, 2.5, np.ones(d - 2)]  # PCs 1-2 = dims 0-1
    z = rng.normal(size=(n, 1))
    brain, genetics = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    brain[:, :1] += 3 * z  # the link lives on PC 1 only
    genetics[:, :1] += 3 * z
    fig = shared_pca(train, brain, genetics, "genotype", n_pairs=7)
    scatter, bars = fig.axes
    assert len(scatter.lines) == 7 + 1  # 7 subjects' pair lines, plus the legend entry
    heights = np.array([b.get_height() for b in bars.containers[0]])
    mean = train.mean(0)
    vt = np.linalg.svd(train - mean, full_matrices=False)[2][: len(heights)]
    expected = [np.corrcoef((brain - mean) @ v, (genetics - mean) @ v)[0, 1] for v in vt]
    np.testing.assert_allclose(heights, expected, atol=1e-12)
    band = 1.96 / math.sqrt(n - 3)
    assert abs(heights[0]) > band and np.mean(np.abs(heights[1:]) < band) >= 0.7
    assert len(shared_pca(train, brain, genetics, "genotype", values=z[:, 0], label="age").axes) == 4  # + colour bar
