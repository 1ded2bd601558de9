"""Phenotypes and sites: age, sex, site assignment and effects, and a binary diagnosis with set effects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainmm.data.simulate.config import PhenotypeConfig, SiteConfig


@dataclass
class Demographics:
    """Per-subject age, sex, site; per-site signal scale/offset and diagnosis shift."""

    age: np.ndarray  # [N] years
    male: np.ndarray  # [N] bool
    site: np.ndarray  # [N] site index
    site_log_scale: np.ndarray  # [S]
    site_offset: np.ndarray  # [S, V]
    site_dx_shift: np.ndarray  # [S]

    def global_log_gain(self, cfg: PhenotypeConfig) -> np.ndarray:
        """Age and sex effects on every parcel's log-gain: [N]."""
        mid = (cfg.age_min + cfg.age_max) / 2
        return cfg.age_effect * (self.age - mid) / 10 + cfg.sex_effect * self.male


def simulate_demographics(
    pheno: PhenotypeConfig, sites: SiteConfig, family_ids: list[str], n_parcels: int, rng: np.random.Generator
) -> Demographics:
    """Uniform ages, 50/50 sex, one site per family (siblings scan at the same site)."""
    n = len(family_ids)
    age = np.round(rng.uniform(pheno.age_min, pheno.age_max, n), 1)
    male = rng.random(n) < 0.5
    families, inverse = np.unique(np.asarray(family_ids), return_inverse=True)
    site = rng.integers(0, sites.n_sites, len(families))[inverse]
    return Demographics(
        age=age,
        male=male,
        site=site,
        site_log_scale=rng.normal(0, sites.scale_sd, sites.n_sites),
        site_offset=rng.normal(0, sites.offset_sd, (sites.n_sites, n_parcels)),
        site_dx_shift=rng.normal(0, sites.dx_shift_sd, sites.n_sites),
    )


def _intercept_for_prevalence(eta: np.ndarray, prevalence: float) -> float:
    """b such that mean(sigmoid(b + eta)) == prevalence (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(mid + eta)))) < prevalence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def simulate_diagnosis(
    cfg: PhenotypeConfig,
    factor1: np.ndarray,
    mean_log_gain: np.ndarray,
    site_shift: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """dx ~ Bernoulli(sigmoid(b0 + b_f * f1 + b_brain * z(mean log-gain) + site shift)); returns (dx, b0)."""
    sd = mean_log_gain.std()
    brain = (mean_log_gain - mean_log_gain.mean()) / sd if sd > 0 else np.zeros_like(mean_log_gain)
    eta = cfg.dx_factor_effect * factor1 + cfg.dx_brain_effect * brain + site_shift
    b0 = _intercept_for_prevalence(eta, cfg.prevalence)
    p = 1 / (1 + np.exp(-(b0 + eta)))
    return (rng.random(len(p)) < p).astype(np.int64), b0
