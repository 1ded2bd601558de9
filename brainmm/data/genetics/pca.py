"""Genetic principal components as plink2 computes them, streamed over variant blocks.

Per variant j: p_j = ALT frequency over the fitting samples, z_ij = (x_ij - 2 p_j) / sqrt(2 p_j (1 - p_j)),
a missing call contributes 0. One pass over the blocks accumulates G = Z_all Z_fit^T (all samples x fitting
samples), so memory depends on the sample counts only, never on the number of variants. The top eigenvectors
U (eigenvalues S^2) of the fitting block G_ff come from `numpy.linalg.eigh`, or from sklearn's randomized SVD
above `max_exact_samples` fitting samples; scores are U S for fitting samples and G_nf U / S (projection with
the fitting samples' frequencies and loadings) for the others. A second pass writes the per-variant loadings
V = Z_fit^T U / S, so another cohort can be projected later with `project`.

Library use (e.g. confound adjustment):

    from brainmm.data.genetics.pca import fit_genetic_pcs, project
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from brainmm.data.genetics.config import GeneticPcaConfig
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.runtime import LOG

Blocks = Callable[[], Iterable[tuple[pd.DataFrame, np.ndarray]]]  # fresh iterator of (variants, dosages)


@dataclass
class GeneticPcs:
    """Scores of every sample, eigenvalues and the per-variant model (frequencies and loadings)."""

    scores: np.ndarray  # [samples, n_pcs]
    eigenvalues: np.ndarray  # of Z_fit Z_fit^T / variants (plink2's .eigenval scale)
    variants: pd.DataFrame  # variant_id, contig, pos, ref, alt, alt_freq, pc1..pcK loadings
    method: str
    info: dict = field(default_factory=dict)


def standardise(values: np.ndarray, alt_freq: np.ndarray) -> np.ndarray:
    """(dosage - 2p) / sqrt(2p(1-p)) in float64, missing -> 0."""
    z = (values.astype(np.float64) - 2.0 * alt_freq) / np.sqrt(2.0 * alt_freq * (1.0 - alt_freq))
    z[np.isnan(z)] = 0.0
    return z


def ld_prune(z_fit: np.ndarray, contig: np.ndarray, r2: float, window: int, n_fixed: int = 0) -> np.ndarray:
    """Greedy pruning in order: keep a variant unless its r^2 with one of the last `window` kept variants of the
    same contig exceeds `r2` (r from the standardised fitting genotypes). The first `n_fixed` columns are
    variants kept earlier (carried over from the previous block)."""
    norms = np.sqrt((z_fit ** 2).sum(axis=0))
    norms[norms == 0] = 1.0
    unit = z_fit / norms
    keep = np.zeros(z_fit.shape[1], dtype=bool)
    keep[:n_fixed] = True
    kept = list(range(n_fixed))
    for j in range(n_fixed, z_fit.shape[1]):
        recent = [i for i in kept[-window:] if contig[i] == contig[j]]
        if recent and ((unit[:, recent].T @ unit[:, j]) ** 2).max() > r2:
            continue
        keep[j] = True
        kept.append(j)
    return keep


def fit_genetic_pcs(blocks: Blocks, fit: np.ndarray, n_pcs: int, min_maf: float = 0.01, max_missing: float = 0.1,
                    ld_prune_r2: float | None = None, ld_window: int = 200, max_exact_samples: int = 5000,
                    seed: int = 0) -> GeneticPcs:
    """Fit PCs on the rows where `fit` is True and project the others (two passes over `blocks()`)."""
    fit = np.asarray(fit, dtype=bool)
    n_fit = int(fit.sum())
    if n_fit < 2:
        raise BrainmmError(f"genetic PCA: {n_fit} fitting sample(s); need at least 2")
    gram = np.zeros((len(fit), n_fit))
    parts, counts = [], {"variants_read": 0, "maf_or_missing_filtered": 0, "ld_pruned": 0}
    carry_z, carry_c = np.zeros((n_fit, 0)), np.zeros(0, dtype=object)  # last kept variants, for LD pruning
    for variants, values in blocks():
        counts["variants_read"] += values.shape[1]
        train = values[fit]
        n_obs = (~np.isnan(train)).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.nansum(train, axis=0, dtype=np.float64) / (2.0 * n_obs)
            maf = np.minimum(p, 1.0 - p)
        keep = (n_obs > 0) & (maf >= min_maf) & (maf > 0) & (1.0 - n_obs / n_fit <= max_missing)
        counts["maf_or_missing_filtered"] += int((~keep).sum())
        z = standardise(values[:, keep], p[keep])
        table = variants.iloc[np.flatnonzero(keep)].reset_index(drop=True).assign(alt_freq=p[keep])
        if ld_prune_r2 is not None and z.shape[1]:
            both_z = np.concatenate([carry_z, z[fit]], axis=1)
            both_c = np.concatenate([carry_c, table["contig"].to_numpy(dtype=object)])
            kept = ld_prune(both_z, both_c, ld_prune_r2, ld_window, n_fixed=carry_z.shape[1])
            carry_z, carry_c = both_z[:, kept][:, -ld_window:], both_c[kept][-ld_window:]
            pruned = kept[len(kept) - z.shape[1]:]
            counts["ld_pruned"] += int((~pruned).sum())
            z, table = z[:, pruned], table.iloc[np.flatnonzero(pruned)].reset_index(drop=True)
        gram += z @ z[fit].T
        parts.append(table)
    used = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    m = len(used)
    if m < n_pcs:
        raise BrainmmError(f"genetic PCA: {m} variant(s) pass min_maf={min_maf} / max_missing={max_missing}"
                           f"{' and LD pruning' if ld_prune_r2 is not None else ''} on the {n_fit} fitting "
                           f"samples; need at least n_pcs={n_pcs}")
    if n_pcs >= n_fit:
        raise BrainmmError(f"genetic PCA: n_pcs={n_pcs} must be below the number of fitting samples ({n_fit})")
    g_ff = gram[fit]
    if n_fit <= max_exact_samples:
        w, u = np.linalg.eigh(g_ff)
        order = np.argsort(w)[::-1][:n_pcs]
        w, u, method = w[order], u[:, order], "exact (eigh of the Gram matrix)"
    else:
        from sklearn.utils.extmath import randomized_svd

        u, w, _ = randomized_svd(g_ff, n_pcs, n_oversamples=20, n_iter=7, random_state=seed)
        method = "randomized SVD (sklearn) of the Gram matrix"
    u = u * np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(n_pcs)])  # deterministic signs
    s = np.sqrt(np.maximum(w, 1e-300))
    scores = gram @ u / s  # fitting rows: U S; others: projected with the fitting loadings
    loadings = np.zeros((m, n_pcs))
    start = 0
    for _, values in _filtered(blocks, used):
        z = standardise(values[fit], used["alt_freq"].to_numpy()[start:start + values.shape[1]])
        loadings[start:start + values.shape[1]] = z.T @ u / s
        start += values.shape[1]
    model = used.assign(**{f"pc{i + 1}": loadings[:, i] for i in range(n_pcs)})
    return GeneticPcs(scores, w / m, model, method, {**counts, "variants_used": m, "n_fit": n_fit})


def _filtered(blocks: Blocks, used: pd.DataFrame) -> Iterable[tuple[pd.DataFrame, np.ndarray]]:
    """The used variants' dosages, in order, from a fresh pass."""
    wanted = set(used["variant_id"])
    for variants, values in blocks():
        sel = np.flatnonzero(variants["variant_id"].isin(wanted).to_numpy())
        if sel.size:
            yield variants.iloc[sel], values[:, sel]


def project(model: pd.DataFrame, blocks: Blocks) -> np.ndarray:
    """Scores of new samples from a fitted model (variant_id, alt_freq, pc1..): sum_j z_ij V_j (missing -> 0).

    `blocks()` must yield the model's variants (select them with the model as the variant list, so that swapped
    alleles are flipped); variants the model has but the blocks lack are skipped.
    """
    pcs = [c for c in model.columns if c.startswith("pc") and c[2:].isdigit()]
    index = {v: i for i, v in enumerate(model["variant_id"])}
    total, seen = None, 0
    for variants, values in blocks():
        rows = np.asarray([index.get(v, -1) for v in variants["variant_id"]])
        have = rows >= 0
        if not have.any():
            continue
        sub = model.iloc[rows[have]]
        z = standardise(values[:, have], sub["alt_freq"].to_numpy())
        part = z @ sub[pcs].to_numpy()
        total = part if total is None else total + part
        seen += int(have.sum())
    if total is None:
        raise BrainmmError("genetic PCA projection: none of the model's variants is in the genotypes")
    if seen < len(model):
        LOG.warning("genetic PCA projection: %d of the model's %d variants are missing from the genotypes",
                    len(model) - seen, len(model))
    return total


def run_pca(cfg: GeneticPcaConfig) -> EmbeddingTable:
    """`brainmm genetics pca`: fit (train or all samples), project, write `<out>` + `.variants.tsv` + config."""
    from brainmm.config import save_config
    from brainmm.data.genetics.matrix import _write_tsv, open_inputs, table_stem
    from brainmm.data.genetics.store import data_hash
    from brainmm.data.genetics.subjects import warn_missing_subjects
    from brainmm.data.splits import load_split

    cfg.require_source()
    split_map = None
    if cfg.split:
        split = load_split(cfg.split)
        split_map = dict(zip(split["subject_id"].astype(str), split["split"]))
    inputs = open_inputs(cfg, split_map, cfg.split)
    if split_map is None:
        LOG.warning("genetic PCA: no split table; every sample is used to fit the PCs (test subjects included). "
                    "Pass --split to fit on train subjects and project val/test")
        fit = np.ones(len(inputs.subjects), dtype=bool)
    else:
        fit = np.array([split_map[s] == "train" for s in inputs.subjects])
        no_genotypes = warn_missing_subjects(split_map, inputs.subjects, str(inputs.source.path), "genetic PCA")
        if not fit.any():
            raise BrainmmError(f"genetic PCA: no subject of the train split of {cfg.split} has genotypes in "
                               f"{inputs.source.path}; the PCs are fitted on train")

    def blocks():
        for rows, values in inputs.blocks(cfg):
            yield inputs.variant_rows(rows), values

    pcs = fit_genetic_pcs(blocks, fit, cfg.n_pcs, cfg.min_maf, cfg.max_missing, cfg.ld_prune_r2, cfg.ld_window,
                          cfg.max_exact_samples, cfg.seed)
    inputs.source.close()
    out = table_stem(cfg.out)
    vectors = pcs.scores.astype(np.float32)
    meta = {"kind": "genetic_pcs", **inputs.meta(), "split": cfg.split, "fitted_on": "train" if cfg.split else "all",
            "n_pcs": cfg.n_pcs, "min_maf": cfg.min_maf, "max_missing": cfg.max_missing,
            "ld_prune_r2": cfg.ld_prune_r2, "ld_window": cfg.ld_window, "method": pcs.method,
            "standardisation": "(dosage - 2p) / sqrt(2p(1-p)), p from the fitting samples, missing -> 0",
            "eigenvalues": [float(x) for x in pcs.eigenvalues], **pcs.info,
            "variants_file": out.name + ".variants.tsv", "data_hash": data_hash(vectors, inputs.subjects)}
    if split_map is not None:
        meta["split_subjects_without_genotypes"] = no_genotypes
    if inputs.samples != inputs.subjects:
        meta["genotype_samples"] = inputs.samples
    LOG.info("genetic PCA: %d PCs of %d subjects (%d fitting) from %d variants; %s", cfg.n_pcs, len(fit),
             int(fit.sum()), pcs.info["variants_used"], pcs.method)
    table = EmbeddingTable(inputs.subjects, vectors, meta)
    save_config(cfg, out.with_name(out.name + ".config.yaml"))
    _write_tsv(pcs.variants.drop(columns=["info"], errors="ignore"), out.with_name(out.name + ".variants.tsv"))
    table.save(out)
    return table
