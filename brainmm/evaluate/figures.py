"""Evaluation figures (matplotlib, no pyplot state: each function returns a `matplotlib.figure.Figure`):
recall@k curves with chance, a similarity heatmap, probe scores with CIs and chance, a 2-D PCA of the shared space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

MAIN_PROBE_METRIC = {"classification": "balanced_accuracy", "regression": "r2"}


def recall_curve(ranks: Mapping[str, np.ndarray], title: str) -> Figure:
    """Recall@k for k = 1..N from 0-based ranks (one curve per direction) and the chance line k/N."""
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.add_subplot()
    n = 1
    for direction, r in ranks.items():
        r = np.asarray(r)
        n = max(n, len(r))
        k = np.arange(1, len(r) + 1)
        recall = np.searchsorted(np.sort(r), k, side="left") / len(r)  # mean(rank < k)
        ax.plot(k, recall, label=direction, drawstyle="steps-post")
    k = np.arange(1, n + 1)
    ax.plot(k, k / n, "k--", linewidth=1, label="chance (k/N)")
    ax.set(xlabel="k", ylabel="recall@k", title=title, ylim=(0, 1.02), xlim=(1, n))
    if n > 20:
        ax.set_xscale("log")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def similarity_heatmap(brain: np.ndarray, genetics: np.ndarray, subjects: Sequence[str], modality: str,
                       n: int, seed: int = 0) -> Figure:
    """Cosine similarity between brain (rows) and genetics (columns) of up to `n` randomly chosen subjects; true
    pairs lie on the diagonal."""
    pick = np.sort(np.random.default_rng(seed).choice(len(subjects), size=min(n, len(subjects)), replace=False))
    b = brain[pick] / np.linalg.norm(brain[pick], axis=1, keepdims=True)
    g = genetics[pick] / np.linalg.norm(genetics[pick], axis=1, keepdims=True)
    sim = b @ g.T
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(sim, cmap="viridis", aspect="equal")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set(xlabel=f"{modality} (subject)", ylabel="brain (subject)",
           title=f"test subjects: brain vs {modality} (true pairs on the diagonal)")
    if len(pick) <= 40:
        labels = [str(subjects[i]) for i in pick]
        ax.set_xticks(range(len(pick)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(pick)), labels, fontsize=6)
    return fig


def probe_bars(table: pd.DataFrame) -> Figure:
    """One panel per target: the main probe metric (balanced accuracy or R^2) per representation, with its CI,
    the chance level (dashed) and the permutation-baseline mean (x)."""
    targets = list(dict.fromkeys(table["target"]))
    fig = Figure(figsize=(max(4.0, 3.2 * len(targets)), 4), layout="constrained")
    axes = fig.subplots(1, len(targets), squeeze=False)[0]
    for ax, target in zip(axes, targets):
        rows = table[table["target"] == target]
        rows = rows[rows["metric"] == MAIN_PROBE_METRIC[rows["task"].iloc[0]]]
        x = np.arange(len(rows))
        value = rows["value"].to_numpy()
        err = np.abs(np.stack([value - rows["ci_low"].to_numpy(), rows["ci_high"].to_numpy() - value]))
        ax.bar(x, value, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
        ax.scatter(x, rows["perm_mean"], marker="x", color="black", zorder=3, label="permuted labels")
        ax.axhline(float(rows["chance"].iloc[0]), color="tab:red", linestyle="--", label="chance")
        ax.set_xticks(x, rows["representation"].tolist(), rotation=45, ha="right", fontsize=8)
        ax.set(title=f"{target} ({rows['metric'].iloc[0]})")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def shared_pca(train: np.ndarray, brain: np.ndarray, genetics: np.ndarray, modality: str,
               values: Sequence | None = None, label: str = "") -> Figure:
    """Test subjects' brain (o) and genetics (^) shared-space embeddings on the first two principal components of
    the training embeddings, coloured by a phenotype (`values`, one per subject) when given."""
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    comps = vt[:2]
    pb, pg = (brain - mean) @ comps.T, (genetics - mean) @ comps.T
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    if values is None:
        ax.scatter(pb[:, 0], pb[:, 1], marker="o", label="brain", alpha=0.8)
        ax.scatter(pg[:, 0], pg[:, 1], marker="^", label=modality, alpha=0.8)
    else:
        series = pd.Series(list(values))
        numeric = pd.to_numeric(series, errors="coerce")
        if numeric.notna().sum() == series.notna().sum() and numeric.nunique() > 2:
            c = numeric.to_numpy(dtype=float)
            for p, marker in ((pb, "o"), (pg, "^")):
                art = ax.scatter(p[:, 0], p[:, 1], c=c, cmap="viridis", marker=marker, alpha=0.85)
            fig.colorbar(art, ax=ax, label=label)
        else:
            cats = sorted(series.dropna().astype(str).unique())
            colors = {c: f"C{i % 10}" for i, c in enumerate(cats)}
            c = [colors.get(str(v), "lightgrey") if pd.notna(v) else "lightgrey" for v in series]
            ax.scatter(pb[:, 0], pb[:, 1], c=c, marker="o", alpha=0.85)
            ax.scatter(pg[:, 0], pg[:, 1], c=c, marker="^", alpha=0.85)
            for cat, color in colors.items():
                ax.scatter([], [], c=color, label=f"{label}={cat}")
        ax.scatter([], [], marker="o", c="grey", label="brain")
        ax.scatter([], [], marker="^", c="grey", label=modality)
    ax.legend(fontsize=7, loc="best")
    ax.set(xlabel="PC 1 (fitted on train)", ylabel="PC 2", title=f"shared space, test subjects (brain and {modality})")
    ax.grid(alpha=0.3)
    return fig
