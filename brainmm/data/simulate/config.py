"""Typed config of the simulated imaging-genetics cohort (defaults = configs/simulate.yaml)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from brainmm.config import ConfigError


def _require(ok: bool, field_name: str, expected: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"simulation config field '{field_name}': expected {expected}, got {value!r}")


@dataclass
class GenotypeConfig:
    """Genotypes: simulated LD blocks (latent Gaussian per block, thresholded) or a real base file."""

    source: Literal["simulate", "file"] = "simulate"
    path: Path | None = None  # source=file: a VCF/BCF, or an .npz in the genotypes.npz layout
    n_blocks: int = 32  # LD blocks (= regions on the simulated contig)
    snps_per_block: int = 8
    ld_rho: float = 0.9  # AR(1) correlation of the latent Gaussian between neighbouring SNPs of a block
    af_shape: float = 0.5  # p ~ Beta(a, a) on [min_af, 1 - min_af] (a < 1: U-shaped); ALT AF = min(p, 1 - p)
    min_af: float = 0.02
    missing_rate: float = 0.01  # share of calls set missing in genotypes.vcf.gz / genotypes.npz
    family_fraction: float = 0.2  # share of subjects that belong to sibships (simulated genotypes only)
    sibship_size: int = 2
    contig: str = "sim1"
    block_bp: int = 1000  # length of one region (LD block) on the contig
    gap_bp: int = 500  # reference sequence between regions

    def validate(self) -> None:
        """Check ranges; one error naming the field."""
        if self.source == "file":
            _require(self.path is not None, "genotypes.path", "a VCF/BCF or .npz path when source is 'file'", None)
            _require(self.family_fraction == 0, "genotypes.family_fraction",
                     "0 when source is 'file' (real samples cannot be given siblings)", self.family_fraction)
        _require(self.n_blocks >= 1, "genotypes.n_blocks", "an integer >= 1", self.n_blocks)
        _require(self.snps_per_block >= 1, "genotypes.snps_per_block", "an integer >= 1", self.snps_per_block)
        _require(0 <= self.ld_rho < 1, "genotypes.ld_rho", "a number in [0, 1)", self.ld_rho)
        _require(self.af_shape > 0, "genotypes.af_shape", "a positive number", self.af_shape)
        _require(0 < self.min_af < 0.5, "genotypes.min_af", "a number in (0, 0.5)", self.min_af)
        _require(0 <= self.missing_rate < 1, "genotypes.missing_rate", "a number in [0, 1)", self.missing_rate)
        _require(0 <= self.family_fraction <= 1, "genotypes.family_fraction", "a number in [0, 1]",
                 self.family_fraction)
        _require(self.sibship_size >= 2, "genotypes.sibship_size", "an integer >= 2", self.sibship_size)
        _require(bool(self.contig) and not any(c.isspace() for c in self.contig), "genotypes.contig",
                 "a contig name without spaces", self.contig)
        _require(self.block_bp >= self.snps_per_block + 2 * 10, "genotypes.block_bp",
                 f"at least snps_per_block + 20 = {self.snps_per_block + 20} bp", self.block_bp)
        _require(self.gap_bp >= 0, "genotypes.gap_bp", "an integer >= 0", self.gap_bp)


@dataclass
class FactorConfig:
    """Latent genetic factors: sparse polygenic scores over causal SNPs plus non-genetic noise."""

    n_factors: int = 8
    h2: float = 0.8  # share of each factor's variance explained by its polygenic score (factor 1 when h2_high is set)
    h2_high: float | None = None  # set: factor k's h2 runs linearly from h2 (factor 1) to h2_high (factor K)
    n_causal: int = 4  # causal SNPs per factor (disjoint between factors)
    causal_min_maf: float = 0.1  # causal SNPs are drawn among SNPs with cohort MAF >= this
    causal_min_call_rate: float = 0.9  # ... and at least this share of observed (non-missing) calls

    def validate(self) -> None:
        """Check ranges; one error naming the field."""
        _require(self.n_factors >= 1, "factors.n_factors", "an integer >= 1", self.n_factors)
        _require(0 <= self.h2 <= 1, "factors.h2", "a number in [0, 1]", self.h2)
        _require(self.h2_high is None or 0 <= self.h2_high <= 1, "factors.h2_high", "null or a number in [0, 1]",
                 self.h2_high)
        _require(self.n_causal >= 1, "factors.n_causal", "an integer >= 1", self.n_causal)
        _require(0 <= self.causal_min_maf < 0.5, "factors.causal_min_maf", "a number in [0, 0.5)",
                 self.causal_min_maf)
        _require(0 <= self.causal_min_call_rate <= 1, "factors.causal_min_call_rate", "a number in [0, 1]",
                 self.causal_min_call_rate)

    def h2_values(self) -> list[float]:
        """Heritability of each factor: `h2` for all, or evenly spaced from `h2` to `h2_high`."""
        if self.h2_high is None:
            return [self.h2] * self.n_factors
        if self.n_factors == 1:
            return [self.h2]
        step = (self.h2_high - self.h2) / (self.n_factors - 1)
        return [self.h2 + k * step for k in range(self.n_factors)]


@dataclass
class BrainConfig:
    """Parcel time series: brainmm's linear stochastic (Ornstein-Uhlenbeck) network or a neurolib model."""

    generator: Literal["ou", "neurolib"] = "ou"  # neurolib: `neural_mass` (needs the sim-neurolib extra)
    n_parcels: int = 48  # even: two mirrored hemispheres
    n_timepoints: int = 400
    tr: float = 0.72  # seconds
    n_sessions: int = 1  # recordings per subject
    n_modules: int = 8  # bilateral network modules; module k < n_factors is driven by factor k
    tau: float = 2.0  # intrinsic time constant (s)
    coupling: float = 0.45  # spectral radius of the base coupling, in units of 1/tau (< 1)
    distance_scale: float = 30.0  # mm; base coupling ~ exp(-distance / distance_scale)
    module_weight: float = 2.0  # extra within-module coupling (relative)
    homotopic_weight: float = 0.5  # extra coupling between mirrored parcels
    module_noise: float = 0.3  # share of each parcel's state-noise variance shared within its module
    global_noise: float = 0.1  # share shared by all parcels (a global signal)
    hrf: bool = True  # convolve with a canonical double-gamma HRF
    gain_sd: float = 0.1  # subject-specific random log-gain per parcel (not genetic)
    obs_noise: float = 0.3  # white measurement noise SD (signal variance is ~1 at baseline)

    def validate(self) -> None:
        """Check ranges; one error naming the field."""
        _require(self.n_parcels >= 4 and self.n_parcels % 2 == 0, "brain.n_parcels",
                 "an even integer >= 4 (two hemispheres)", self.n_parcels)
        _require(self.n_timepoints >= 2, "brain.n_timepoints", "an integer >= 2", self.n_timepoints)
        _require(self.tr > 0, "brain.tr", "a positive number of seconds", self.tr)
        _require(self.n_sessions >= 1, "brain.n_sessions", "an integer >= 1", self.n_sessions)
        _require(1 <= self.n_modules <= self.n_parcels // 2, "brain.n_modules",
                 f"an integer in [1, n_parcels / 2 = {self.n_parcels // 2}]", self.n_modules)
        _require(self.tau > 0, "brain.tau", "a positive number of seconds", self.tau)
        _require(0 <= self.coupling < 1, "brain.coupling", "a number in [0, 1)", self.coupling)
        _require(self.distance_scale > 0, "brain.distance_scale", "a positive number (mm)", self.distance_scale)
        _require(self.module_weight >= 0, "brain.module_weight", "a number >= 0", self.module_weight)
        _require(self.homotopic_weight >= 0, "brain.homotopic_weight", "a number >= 0", self.homotopic_weight)
        _require(self.module_noise >= 0 and self.global_noise >= 0 and self.module_noise + self.global_noise < 1,
                 "brain.module_noise/global_noise", "two numbers >= 0 with a sum < 1",
                 (self.module_noise, self.global_noise))
        _require(self.gain_sd >= 0, "brain.gain_sd", "a number >= 0", self.gain_sd)
        _require(self.obs_noise >= 0, "brain.obs_noise", "a number >= 0", self.obs_noise)


@dataclass
class EffectConfig:
    """How strongly the latent factors shape the brain signal (`effect_size` scales every pathway)."""

    effect_size: float = 1.0  # 0 = no brain<->genetics link
    amplitude: float = 0.35  # log-gain of a driven module per SD of its factor (times effect_size)
    coupling: float = 0.5  # max relative change of within-module coupling (saturating, < 1)
    timescale: float = 0.3  # max log-change of the driven parcels' time constant (saturating)
    bifurcation: float = 0.0  # neurolib only: max shift (1/s) of the driven nodes' Hopf bifurcation parameter

    def validate(self) -> None:
        """Check ranges; one error naming the field."""
        _require(self.effect_size >= 0, "effects.effect_size", "a number >= 0", self.effect_size)
        _require(self.amplitude >= 0, "effects.amplitude", "a number >= 0", self.amplitude)
        _require(0 <= self.coupling < 1, "effects.coupling", "a number in [0, 1)", self.coupling)
        _require(self.timescale >= 0, "effects.timescale", "a number >= 0", self.timescale)
        _require(self.bifurcation >= 0, "effects.bifurcation", "a number >= 0", self.bifurcation)


NEUROLIB_REGIONS = 80  # the cortical AAL2 regions of neurolib's bundled "hcp" and "gw" connectomes


@dataclass
class NeuralMassConfig:
    """neurolib's whole-brain Hopf model at the BOLD time scale (used when brain.generator is 'neurolib')."""

    dataset: Literal["hcp", "gw"] = "hcp"  # neurolib's bundled structural connectome (Cmat, 80 AAL2 regions)
    a: float = -0.02  # baseline Hopf bifurcation parameter of every node (1/s; Deco et al. 2017)
    frequency_hz: float = 0.05  # intrinsic frequency of every node (Hz; the 0.04-0.07 Hz BOLD band)
    global_coupling: float = 0.7  # K_gl on the max-normalised Cmat (diffusive coupling)
    noise: float = 0.02  # SD of the white noise driving each node, per sqrt(s) (Deco et al. 2017: 0.02)
    max_dt: float = 0.1  # s: the Euler step is brain.tr / ceil(brain.tr / max_dt)
    transient_s: float = 100.0  # s integrated and dropped before the first sample

    def validate(self) -> None:
        """Check ranges; one error naming the field."""
        _require(math.isfinite(self.a), "neural_mass.a", "a finite number (1/s)", self.a)
        _require(self.frequency_hz > 0, "neural_mass.frequency_hz", "a positive number (Hz)", self.frequency_hz)
        _require(self.global_coupling >= 0, "neural_mass.global_coupling", "a number >= 0", self.global_coupling)
        _require(self.noise > 0, "neural_mass.noise", "a positive number", self.noise)
        _require(0 < self.max_dt <= 0.5, "neural_mass.max_dt", "a number of seconds in (0, 0.5]", self.max_dt)
        _require(self.transient_s >= 0, "neural_mass.transient_s", "a number of seconds >= 0", self.transient_s)


@dataclass
class PhenotypeConfig:
    """Age, sex and a binary diagnosis with set effects."""

    age_min: float = 20.0
    age_max: float = 80.0
    age_effect: float = -0.05  # global log-gain per 10 years above mid-range age
    sex_effect: float = 0.05  # global log-gain of sex M vs F
    prevalence: float = 0.2  # diagnosis prevalence (intercept solved to hit it)
    dx_factor_effect: float = 1.0  # diagnosis log-odds per SD of factor 1
    dx_brain_effect: float = 0.5  # diagnosis log-odds per SD of the subject's mean log-gain

    def validate(self) -> None:
        """Check ranges; one error naming the field."""
        _require(0 < self.age_min <= self.age_max, "phenotypes.age_min/age_max",
                 "0 < age_min <= age_max", (self.age_min, self.age_max))
        _require(0 < self.prevalence < 1, "phenotypes.prevalence", "a number in (0, 1)", self.prevalence)


@dataclass
class SiteConfig:
    """Acquisition sites: a per-site signal scale and offset, and a per-site diagnosis shift (a confound)."""

    n_sites: int = 2
    scale_sd: float = 0.1  # SD of the per-site log-scale of the signal
    offset_sd: float = 0.2  # SD of the per-site, per-parcel additive offset
    dx_shift_sd: float = 0.5  # SD of the per-site diagnosis log-odds shift

    def validate(self) -> None:
        """Check ranges; one error naming the field."""
        _require(self.n_sites >= 1, "sites.n_sites", "an integer >= 1", self.n_sites)
        for name in ("scale_sd", "offset_sd", "dx_shift_sd"):
            value = getattr(self, name)
            _require(value >= 0, f"sites.{name}", "a number >= 0", value)


@dataclass
class PopulationConfig:
    """Population structure: Balding-Nichols ancestry groups, unevenly spread over sites, with a brain effect."""

    n_groups: int = 1  # ancestry groups; 1 = no structure (the other fields are then unused)
    fst: float = 0.1  # Balding-Nichols F_ST of every group against the ancestral frequencies
    site_association: float = 0.0  # share of families scanned at their group's home site (rest uniform)
    brain_effect: float = 0.0  # SD of a per-group shift of every module's drive (factor-SD units), not genetic

    def validate(self) -> None:
        """Check ranges; one error naming the field."""
        _require(self.n_groups >= 1, "population.n_groups", "an integer >= 1", self.n_groups)
        _require(0 < self.fst < 1, "population.fst", "a number in (0, 1)", self.fst)
        _require(0 <= self.site_association <= 1, "population.site_association", "a number in [0, 1]",
                 self.site_association)
        _require(self.brain_effect >= 0, "population.brain_effect", "a number >= 0", self.brain_effect)


@dataclass
class SimulationConfig:
    """A simulated cohort: genotypes -> latent factors -> brain dynamics and phenotypes (all seeded)."""

    seed: int = 0
    n_subjects: int = 300
    write_sequences: bool = False  # also write reference.fa(+.fai), regions.bed, haplotypes.vcf.gz
    genotypes: GenotypeConfig = field(default_factory=GenotypeConfig)
    factors: FactorConfig = field(default_factory=FactorConfig)
    brain: BrainConfig = field(default_factory=BrainConfig)
    effects: EffectConfig = field(default_factory=EffectConfig)
    phenotypes: PhenotypeConfig = field(default_factory=PhenotypeConfig)
    sites: SiteConfig = field(default_factory=SiteConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    neural_mass: NeuralMassConfig = field(default_factory=NeuralMassConfig)

    def validate(self) -> None:
        """Check every section and the cross-field constraints (stability, enough SNPs)."""
        _require(self.seed >= 0, "seed", "an integer >= 0", self.seed)
        _require(self.n_subjects >= 3, "n_subjects", "an integer >= 3", self.n_subjects)
        for section in (self.genotypes, self.factors, self.brain, self.effects, self.phenotypes, self.sites,
                        self.population, self.neural_mass):
            section.validate()
        _require(self.factors.n_factors <= self.brain.n_modules, "factors.n_factors",
                 f"at most brain.n_modules = {self.brain.n_modules} (factor k drives module k)",
                 self.factors.n_factors)
        _require(self.population.n_groups == 1 or self.genotypes.source == "simulate", "population.n_groups",
                 "1 when genotypes.source is 'file' (a real base carries its own ancestry)", self.population.n_groups)
        if self.genotypes.source == "simulate":
            n_snps = self.genotypes.n_blocks * self.genotypes.snps_per_block
            need = self.factors.n_factors * self.factors.n_causal
            _require(need <= n_snps, "factors.n_causal",
                     f"n_factors * n_causal <= n_blocks * snps_per_block = {n_snps}", self.factors.n_causal)
        if self.brain.generator == "neurolib":
            self._validate_neurolib()
            return
        _require(self.effects.bifurcation == 0, "effects.bifurcation",
                 "0 when brain.generator is 'ou' (it shifts neurolib's Hopf nodes)", self.effects.bifurcation)
        # Stability for every subject: max eig(A) <= (-exp(-timescale) + (1 + coupling_effect) * coupling) / tau.
        bound = (1 + self.effects.coupling) * self.brain.coupling
        _require(bound < math.exp(-self.effects.timescale), "brain.coupling",
                 f"(1 + effects.coupling) * brain.coupling < exp(-effects.timescale) = "
                 f"{math.exp(-self.effects.timescale):.3f} so every subject's network is stable "
                 f"(now {bound:.3f})", self.brain.coupling)

    def _validate_neurolib(self) -> None:
        """Cross-field constraints of the neurolib generator (its connectome fixes the parcels)."""
        _require(self.brain.n_parcels == NEUROLIB_REGIONS, "brain.n_parcels",
                 f"{NEUROLIB_REGIONS} (the regions of neurolib's '{self.neural_mass.dataset}' connectome) when "
                 f"brain.generator is 'neurolib'", self.brain.n_parcels)
        _require(self.effects.timescale == 0, "effects.timescale",
                 "0 when brain.generator is 'neurolib' (its Hopf nodes share one frequency; use "
                 "effects.bifurcation)", self.effects.timescale)
