"""Evaluation figures (matplotlib, no pyplot state: each function returns a `matplotlib.figure.Figure`):
recall@k curves with chance, a similarity heatmap, probe scores with CIs and chance, the shared space on its
principal components (paired subjects, the brain-genetics correlation per component)."""

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


def _paired_correlations(pb: np.ndarray, pg: np.ndarray) -> np.ndarray:
    """Pearson r between the brain and genetics scores of the same subjects, per component."""
    b, g = pb - pb.mean(0), pg - pg.mean(0)
    denom = np.sqrt((b**2).sum(0) * (g**2).sum(0))
    return np.divide((b * g).sum(0), denom, out=np.zeros(b.shape[1]), where=denom > 0)


def shared_pca(train: np.ndarray, brain: np.ndarray, genetics: np.ndarray, modality: str,
               values: Sequence | None = None, label: str = "", n_pairs: int = 12, n_components: int = 10,
               seed: int = 0) -> Figure:
    """The shared space on the principal components of the training embeddings (both sides), for the test subjects.

    Left: brain (o) and genetics (^) on PCs 1-2, coloured by modality, with lines joining the two embeddings of
    `n_pairs` randomly chosen subjects (short lines: the pairs found each other). Middle: per PC, the correlation
    across subjects between a subject's brain and genetics scores, with the 95 % band of no link (|r| < 1.96 /
    sqrt(N - 3), Fisher z): bars outside it are the dimensions that carry the link. Right (with `values`): the
    brain embeddings on PCs 1-2 coloured by a phenotype.
    """
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    comps = vt[: max(2, min(n_components, vt.shape[0]))]
    pb, pg = (brain - mean) @ comps.T, (genetics - mean) @ comps.T
    panels = 3 if values is not None else 2
    fig = Figure(figsize=(5.2 * panels, 4.6), layout="constrained")
    ax, bars = fig.subplots(1, panels, squeeze=False)[0][:2]
    pick = np.random.default_rng(seed).choice(len(pb), size=min(n_pairs, len(pb)), replace=False)
    for i in pick:
        ax.plot([pb[i, 0], pg[i, 0]], [pb[i, 1], pg[i, 1]], color="grey", linewidth=0.8, alpha=0.7, zorder=1)
    ax.scatter(pb[:, 0], pb[:, 1], marker="o", color="tab:blue", label="brain", alpha=0.75, zorder=2)
    ax.scatter(pg[:, 0], pg[:, 1], marker="^", color="tab:orange", label=modality, alpha=0.75, zorder=2)
    ax.plot([], [], color="grey", linewidth=0.8, label=f"same subject ({len(pick)} shown)")
    ax.legend(fontsize=7, loc="best")
    ax.set(xlabel="PC 1 (fitted on train)", ylabel="PC 2", title=f"test subjects: brain and {modality}")
    ax.grid(alpha=0.3)
    r = _paired_correlations(pb, pg)
    k = np.arange(1, len(r) + 1)
    n = len(pb)
    bars.bar(k, r, color=["tab:green" if v > 0 else "tab:red" for v in r], alpha=0.8)
    if n > 3:
        band = 1.96 / np.sqrt(n - 3)
        bars.axhspan(-band, band, color="grey", alpha=0.2, label=f"no link, 95 % (N = {n})")
        bars.legend(fontsize=7, loc="best")
    bars.axhline(0, color="black", linewidth=0.8)
    bars.set(xlabel="PC of the shared space (fitted on train)", ylabel="r (brain score, genetics score)",
             title="paired correlation per component", ylim=(-1, 1), xticks=k)
    bars.grid(axis="y", alpha=0.3)
    if values is not None:
        _phenotype_panel(fig.axes[2], pb, values, label, fig)
    return fig


def _phenotype_panel(ax, pb: np.ndarray, values: Sequence, label: str, fig: Figure) -> None:
    """Brain embeddings on PCs 1-2 coloured by a phenotype (a colour bar when numeric, a legend when categorical)."""
    series = pd.Series(list(values))
    numeric = pd.to_numeric(series, errors="coerce")
    if numeric.notna().sum() == series.notna().sum() and numeric.nunique() > 2:
        art = ax.scatter(pb[:, 0], pb[:, 1], c=numeric.to_numpy(dtype=float), cmap="viridis", alpha=0.85)
        fig.colorbar(art, ax=ax, label=label)
    else:
        cats = sorted(series.dropna().astype(str).unique())
        colors = {c: f"C{i % 10}" for i, c in enumerate(cats)}
        ax.scatter(pb[:, 0], pb[:, 1], c=[colors.get(str(v), "lightgrey") if pd.notna(v) else "lightgrey"
                                          for v in series], alpha=0.85)
        for cat, color in colors.items():
            ax.scatter([], [], c=color, label=f"{label}={cat}")
        ax.legend(fontsize=7, loc="best")
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"brain embeddings by {label}")
    ax.grid(alpha=0.3)
