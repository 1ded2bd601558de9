"""The align stage's brain table when `brain_inputs` names more than BrainLM: BrainLM embeddings and/or the
connectivity table's PCA scores (PCA fitted on the training subjects only), side by side per row, each block
centred and scaled to unit mean squared row norm on the training rows (block scaling, as in multiple factor
analysis: the blocks weigh the same, and within a block the variance ordering of its features is kept)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainmm.errors import BrainmmError

BRAIN_INPUTS = ("brainlm", "connectivity")


def brain_input_table(inputs: list[str], embed: str, fc: str, split_csv: str, pca: int, out: str | Path) -> Path:
    """Write the brain table of `inputs` (in that order) to `out`: rows of the BrainLM table (recordings or
    subjects), each with its subject's first `pca` connectivity PCA scores (fewer below pca + 1 training subjects),
    every block scaled on the training rows (`block_scale`); returns the stem."""
    from brainmm.align import table_subjects
    from brainmm.data.fmri.connectivity import ConnectivityConfig, fit_pca, pca_transform
    from brainmm.data.splits import load_split
    from brainmm.embeddings import EmbeddingTable

    if "brainlm" in inputs:
        emb = EmbeddingTable.load(embed)
        ids, subjects = list(emb.ids), table_subjects(emb, f"embedding table {embed}")
    else:  # FC-only: one row per subject of the connectivity table
        ids = subjects = list(EmbeddingTable.load(fc, mmap=True).ids)
    split = load_split(split_csv)
    train = set(split.loc[split["split"] == "train", "subject_id"].astype(str))
    train_rows = np.array([s in train for s in subjects])
    blocks: list[np.ndarray] = []
    meta: dict = {"kind": "brain_inputs", "inputs": list(inputs), "subject_id": dict(zip(ids, subjects)),
                  "block_scaling": {"fitted_on": "train"}}
    for name in inputs:
        if name == "brainlm":
            blocks.append(block_scale(np.asarray(emb.vectors, dtype=np.float64), train_rows, meta, name))
            continue
        table = EmbeddingTable.load(fc, mmap=True)  # [N, edges]: read as used
        rows = np.array([i for i, s in enumerate(table.ids) if s in train], dtype=np.int64)
        k = max(1, min(pca, len(rows) - 1, table.dim))  # small cohorts: at most n_train - 1 components
        fitted = fit_pca(table.vectors, rows, ConnectivityConfig(pca=k))
        scores = pca_transform(table.vectors, fitted)
        index = {s: i for i, s in enumerate(table.ids)}
        missing = sorted({s for s in subjects if s not in index})
        if missing:
            raise BrainmmError(f"connectivity table {fc}: no row for subjects {missing[:5]} of {embed}")
        blocks.append(block_scale(scores[[index[s] for s in subjects]], train_rows, meta, name))
        meta["connectivity_pca"] = {"fitted_on": "train", "subjects": len(rows), "components": int(scores.shape[1]),
                                    "explained_variance": float(fitted["explained_variance_ratio"].sum())}
    return EmbeddingTable(ids, np.hstack(blocks), meta).save(out)


def block_scale(x: np.ndarray, train: np.ndarray, meta: dict, name: str) -> np.ndarray:
    """(x - mean) / rms, both from the `train` rows: rms = sqrt(mean over those rows of the squared centred row
    norm). The rms goes to meta["block_scaling"][name]."""
    if not train.any():
        raise BrainmmError("brain_inputs: no training rows to fit the block scaling on")
    mean = x[train].mean(axis=0)
    rms = float(np.sqrt(((x[train] - mean) ** 2).sum(axis=1).mean()))
    rms = rms if rms > 0 else 1.0  # a constant block stays 0
    meta["block_scaling"][name] = {"rms": rms}
    return (x - mean) / rms
