"""The realistic simulator regime (configs/simulate_realistic.yaml) and the default cohort it must leave unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import brainmm.data.simulate.genotypes as genotypes_module
import brainmm.data.simulate.writers as writers_module
from brainmm.config import ConfigError, load_config
from brainmm.data.simulate import SimulationConfig, simulate_cohort
from brainmm.data.simulate.factors import simulate_factors
from brainmm.data.simulate.genotypes import simulate_genotypes

REPO = Path(__file__).resolve().parents[1]
REALISTIC = REPO / "configs" / "simulate_realistic.yaml"
EPS32 = float(np.finfo(np.float32).eps)


def _default_fingerprint(out: Path) -> dict[str, object]:
    """Integer data hashed exactly; float data as sums (compared at the float32 rounding scale)."""
    dos = np.nan_to_num(np.load(out / "genotypes.npz")["dosages"], nan=-1).astype(np.int8)
    series = [np.load(out / f).astype(np.float64) for f in pd.read_csv(out / "cohort.csv")["file"]]
    return {
        "dosages_sha256": hashlib.sha256(dos.tobytes()).hexdigest(),
        "cohort_sha256": hashlib.sha256((out / "cohort.csv").read_bytes()).hexdigest(),
        "factors": pd.read_csv(out / "factors.csv").drop(columns="subject_id").to_numpy(),
        "coords": pd.read_csv(out / "coords.tsv", sep="\t").to_numpy(),
        "fmri_sum": np.array([s.sum() for s in series]),
        "fmri_sumsq": np.array([(s**2).sum() for s in series]),
        "fmri_first": series[0][0, :6],
        "fmri_size": series[0].size,
        "fmri_max": max(np.abs(s).max() for s in series),
    }


def test_default_cohort_is_unchanged_by_the_realistic_regime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A default-config cohort matches the fingerprint recorded before the regime's knobs and chunking existed."""
    want = json.loads((REPO / "tests" / "data" / "simulate_default_n12.json").read_text())
    cfg = load_config(SimulationConfig, REPO / "configs" / "simulate.yaml", ["n_subjects=12", "brain.n_timepoints=60"])
    got = _default_fingerprint(simulate_cohort(cfg, tmp_path / "a"))
    assert got["dosages_sha256"] == want["dosages_sha256"] and got["cohort_sha256"] == want["cohort_sha256"]
    np.testing.assert_allclose(got["factors"], want["factors"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["coords"], want["coords"], rtol=0, atol=0.1 + 1e-9)  # one 0.1 mm rounding step
    # Float32 series: a one-ulp change per value moves a sum by at most size * eps32 * max|x|.
    tol = got["fmri_size"] * EPS32 * got["fmri_max"]
    np.testing.assert_allclose(got["fmri_sum"], want["fmri_sum"], rtol=0, atol=tol)
    np.testing.assert_allclose(got["fmri_sumsq"], want["fmri_sumsq"], rtol=0, atol=2 * tol * got["fmri_max"])
    np.testing.assert_allclose(got["fmri_first"], want["fmri_first"], rtol=4 * EPS32, atol=4 * EPS32)
    # Chunked haplotype draws and chunked VCF writing give the same bytes as one chunk.
    monkeypatch.setattr(genotypes_module, "DRAW_ELEMENTS", 1)
    monkeypatch.setattr(writers_module, "VCF_CHUNK_CALLS", 1)
    simulate_cohort(cfg, tmp_path / "b")
    for name in ("genotypes.vcf.gz", "genotypes.npz", "factors.csv", "cohort.csv", "fmri/sub-0001_ses-1.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_realistic_config_loads_and_simulates_at_a_tiny_n(tmp_path: Path) -> None:
    cfg = load_config(SimulationConfig, REALISTIC, ["n_subjects=10"])
    assert (cfg.brain.n_parcels, cfg.brain.n_timepoints, cfg.brain.tr) == (424, 490, 0.735)
    assert cfg.genotypes.n_blocks * cfg.genotypes.snps_per_block >= 20_000 and cfg.factors.n_causal >= 100
    assert cfg.sites.n_sites > 1 and cfg.population.n_groups > 1
    out = simulate_cohort(cfg, tmp_path / "real")
    cohort = pd.read_csv(out / "cohort.csv")
    assert len(cohort) == 10 and "ancestry" in cohort.columns and cohort["tr"].eq(0.735).all()
    ts = np.load(out / cohort["file"].iloc[0])
    assert ts.shape == (490, 424) and ts.dtype == np.float32 and np.isfinite(ts).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_snps"] == cfg.genotypes.n_blocks * cfg.genotypes.snps_per_block
    truth = json.loads((out / "truth.json").read_text())
    assert np.allclose(truth["genetics"]["h2"], np.linspace(0.05, 0.25, 8))
    assert all(len(c["snp_index"]) == cfg.factors.n_causal for c in truth["genetics"]["causal"])


def test_realised_snp_h2_of_each_factor_lands_in_the_configured_range() -> None:
    """corr(factor, genetic value)^2 per factor at N = 1,000 matches its configured h2 (0.05 ... 0.25)."""
    cfg = load_config(SimulationConfig, REALISTIC, ["n_subjects=1000"])
    ss = np.random.SeedSequence(cfg.seed).spawn(7)
    geno = simulate_genotypes(cfg.genotypes, cfg.n_subjects, np.random.default_rng(ss[0]), cfg.population,
                              np.random.default_rng(ss[6]))
    call_rate = np.isfinite(geno.observed).mean(axis=0)
    factors = simulate_factors(cfg.factors, geno.dosages, call_rate, geno.snp_ids, np.random.default_rng(ss[1]))
    want = np.linspace(cfg.factors.h2, cfg.factors.h2_high, cfg.factors.n_factors)  # the configured range
    assert (want.min(), want.max()) == (0.05, 0.25) and np.allclose(cfg.factors.h2_values(), want)
    realised = np.array([np.corrcoef(factors.values[:, k], factors.pgs[:, k])[0, 1] ** 2 for k in range(len(want))])
    # Sampling SD of a squared correlation r^2: about 2 r (1 - r^2) / sqrt(N); allow 4 SD.
    sd = 2 * np.sqrt(want) * (1 - want) / np.sqrt(cfg.n_subjects)
    assert np.all(np.abs(realised - want) < 4 * sd), (realised, want)
    assert np.all((realised > 0.05 - 4 * sd) & (realised < 0.25 + 4 * sd))
    maf = np.minimum(geno.dosages.mean(axis=0) / 2, 1 - geno.dosages.mean(axis=0) / 2)
    assert 0.3 < np.mean(maf < 0.05) < 0.5  # the neutral 1/q spectrum on [0.01, 0.5]: ~37 % below MAF 0.05


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_h2_high_out_of_range_names_the_field(value: str) -> None:
    with pytest.raises(ConfigError, match=r"factors\.h2_high"):
        load_config(SimulationConfig, REALISTIC, [f"factors.h2_high={value}"])
