"""Explain figures (matplotlib, Agg): a Manhattan plot of per-variant p-values, parcel scores as markers on the
parcel coordinates and the top edges as a connectome (nilearn.plotting)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def _bh_line(table: pd.DataFrame) -> float | None:
    """-log10 of the largest p-value among the significant rows (the BH threshold actually applied)."""
    sig = table.loc[table["significant"].astype(bool), "p"]
    return float(-np.log10(sig.max())) if len(sig) else None


def _chrom_key(c: str) -> tuple[int, str]:
    bare = str(c).removeprefix("chr")
    return (int(bare), "") if bare.isdigit() else (10_000, bare)


def manhattan(variants: pd.DataFrame, title: str) -> Any:
    """-log10 p per variant along the genome (chromosomes in natural order, alternating colours), the BH
    threshold as a dashed line, the significant variants in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2))
    offset, ticks, labels = 0, [], []
    for i, chrom in enumerate(sorted(variants["chrom"].unique(), key=_chrom_key)):
        rows = variants[variants["chrom"] == chrom].sort_values("pos")
        x = rows["pos"].to_numpy(dtype=np.float64) - rows["pos"].min() + offset
        y = -np.log10(np.clip(rows["p"].to_numpy(dtype=np.float64), 1e-300, 1))
        sig = rows["significant"].to_numpy(dtype=bool)
        ax.scatter(x[~sig], y[~sig], s=8, color=("#1f4e79", "#7fa7c9")[i % 2])
        ax.scatter(x[sig], y[sig], s=14, color="#c0392b")
        ticks.append((x.min() + x.max()) / 2)
        labels.append(str(chrom))
        offset = x.max() + max(1.0, 0.02 * (x.max() - x.min() + 1))
    line = _bh_line(variants)
    if line is not None:
        ax.axhline(line, ls="--", lw=0.8, color="#c0392b", label="BH threshold")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_xlabel("chromosome / position")
    ax.set_ylabel("-log10 p")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def parcel_markers(parcels: pd.DataFrame, title: str) -> Any:
    """Parcel link scores as coloured markers at the parcel coordinates (nilearn.plotting.plot_markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    fig = plt.figure(figsize=(9, 3.2))
    coords = parcels[["x", "y", "z"]].to_numpy(dtype=np.float64)
    values = parcels["score"].to_numpy(dtype=np.float64)
    size = 10 + 60 * (values - values.min()) / (np.ptp(values) or 1.0)
    plotting.plot_markers(values, coords, node_size=size, node_cmap="viridis", figure=fig, title=title,
                          display_mode="ortho", colorbar=True)
    return fig


def top_edges(edges: pd.DataFrame, parcels: pd.DataFrame, k: int, title: str) -> Any:
    """The k edges with the largest score as a connectome on the parcel coordinates (nilearn.plotting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    v = len(parcels)
    adjacency = np.zeros((v, v))
    top = edges.sort_values("score", ascending=False, kind="stable").head(k)
    adjacency[top["parcel_i"], top["parcel_j"]] = top["score"]
    adjacency = adjacency + adjacency.T
    fig = plt.figure(figsize=(9, 3.2))
    plotting.plot_connectome(adjacency, parcels[["x", "y", "z"]].to_numpy(dtype=np.float64), node_size=8,
                             edge_cmap="viridis", figure=fig, title=title, display_mode="ortho", colorbar=True)
    return fig
