"""Latent genetic factors: f_k = sqrt(h2_k) * PGS_k + sqrt(1 - h2_k) * e_k, PGS_k sparse over causal SNPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from brainmm.data.simulate.config import FactorConfig
from brainmm.errors import BrainmmError


@dataclass
class Factors:
    """True factors, their polygenic scores and the causal architecture."""

    values: np.ndarray  # [N, K] factors
    pgs: np.ndarray  # [N, K] standardised polygenic scores (the genetic part before sqrt(h2))
    causal: list[dict[str, Any]]  # per factor: snp ids, indices, weights, dosage mean/sd, pgs_sd


def simulate_factors(
    cfg: FactorConfig, dosages: np.ndarray, call_rate: np.ndarray, snp_ids: np.ndarray, rng: np.random.Generator
) -> Factors:
    """Draw disjoint causal SNPs (MAF and call-rate filters) and N(0, 1) weights; build PGS and factors.

    `dosages` are the complete truth dosages [N, P]; `call_rate` [P] the observed share of non-missing calls.
    """
    n, _ = dosages.shape
    mean = dosages.mean(axis=0)
    af = mean / 2
    maf = np.minimum(af, 1 - af)
    sd = dosages.std(axis=0)
    ok = (maf >= cfg.causal_min_maf) & (call_rate >= cfg.causal_min_call_rate) & (sd > 0)
    candidates = np.flatnonzero(ok)
    need = cfg.n_factors * cfg.n_causal
    if len(candidates) < need:
        raise BrainmmError(
            f"factors.n_causal: {cfg.n_factors} factors x {cfg.n_causal} causal SNPs need {need} SNPs with "
            f"MAF >= factors.causal_min_maf={cfg.causal_min_maf} and call rate >= "
            f"factors.causal_min_call_rate={cfg.causal_min_call_rate}, but the cohort has {len(candidates)}; "
            f"lower n_causal or the thresholds, or use more SNPs"
        )
    chosen = rng.choice(candidates, need, replace=False).reshape(cfg.n_factors, cfg.n_causal)
    chosen.sort(axis=1)
    weights = rng.standard_normal((cfg.n_factors, cfg.n_causal))
    pgs = np.empty((n, cfg.n_factors))
    causal = []
    for k in range(cfg.n_factors):
        idx = chosen[k]
        raw = ((dosages[:, idx] - mean[idx]) / sd[idx]) @ weights[k]
        pgs_sd = float(raw.std())
        pgs[:, k] = raw / pgs_sd
        causal.append({
            "factor": f"factor_{k + 1}",
            "snp_ids": [str(s) for s in snp_ids[idx]],
            "snp_index": [int(i) for i in idx],
            "weights": [float(w) for w in weights[k]],
            "dosage_mean": [float(m) for m in mean[idx]],
            "dosage_sd": [float(s) for s in sd[idx]],
            "pgs_sd": pgs_sd,
        })
    noise = rng.standard_normal((n, cfg.n_factors))
    h2 = np.array(cfg.h2_values())  # [K]; equal entries give the same bytes as the scalar h2
    values = np.sqrt(h2) * pgs + np.sqrt(1 - h2) * noise
    return Factors(values, pgs, causal)
