"""Simulated imaging-genetics cohorts with known ground truth (genotypes, latent factors, fMRI, phenotypes)."""

from brainmm.data.simulate.cohort import simulate_cohort
from brainmm.data.simulate.config import (
    BrainConfig,
    EffectConfig,
    FactorConfig,
    GenotypeConfig,
    NeuralMassConfig,
    PhenotypeConfig,
    PopulationConfig,
    SimulationConfig,
    SiteConfig,
)

__all__ = [
    "BrainConfig",
    "EffectConfig",
    "FactorConfig",
    "GenotypeConfig",
    "NeuralMassConfig",
    "PhenotypeConfig",
    "PopulationConfig",
    "SimulationConfig",
    "SiteConfig",
    "simulate_cohort",
]
