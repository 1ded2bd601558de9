"""`simulate_cohort`: genotypes -> latent factors -> brain dynamics + phenotypes, written atomically to one folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmm import __version__
from brainmm.config import save_config, to_dict
from brainmm.data.simulate.config import SimulationConfig
from brainmm.data.simulate.factors import Factors, simulate_factors
from brainmm.data.simulate.genotypes import Genotypes, load_genotype_base, simulate_genotypes
from brainmm.data.simulate.network import Network, build_network, simulate_signals
from brainmm.data.simulate.neural_mass import (
    NeuralMass,
    build_neural_mass,
    neural_mass_truth,
    simulate_neural_mass,
    subject_parameters,
)
from brainmm.data.simulate.phenotypes import Demographics, simulate_demographics, simulate_diagnosis
from brainmm.data.simulate.population import Population, group_names, population_truth, structure
from brainmm.data.simulate.writers import write_bed, write_fasta, write_npz, write_vcf
from brainmm.errors import BrainmmError
from brainmm.io import atomic_dir, atomic_write_json, sha256_file
from brainmm.runtime import progress

LOG = logging.getLogger("brainmm.simulate")
SOURCE = f"brainmm.data.simulate {__version__}"
CHUNK_ELEMENTS = 2_000_000  # float64 elements per [recordings, time, parcels] work array


def _contig_lengths(geno: Genotypes, gap_bp: int) -> dict[str, int]:
    lengths: dict[str, int] = {}
    for c, _, end in geno.regions:
        lengths[c] = max(lengths.get(c, 0), end)
    for c, p in zip(geno.chrom, geno.pos):
        lengths[c] = max(lengths[c], int(p))
    return {c: n + gap_bp for c, n in lengths.items()}


def _reference(geno: Genotypes, lengths: dict[str, int], rng: np.random.Generator) -> dict[str, str]:
    """Uniform random bases per contig with the variants' REF alleles written in."""
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    code = {b: i for i, b in enumerate("ACGT")}
    seqs = {}
    for c, n in lengths.items():
        codes = rng.integers(0, 4, n)
        on = np.flatnonzero(geno.chrom == c)
        codes[geno.pos[on] - 1] = [code[r] for r in geno.ref[on]]
        seqs[c] = bases[codes].tobytes().decode()
    return seqs


def simulate_cohort(cfg: SimulationConfig, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Simulate a cohort with known ground truth and write it (atomically) to `out_dir`; returns the folder.

    BLAS runs single-threaded here: the many small eigendecompositions and matmuls are faster that way, and
    the bytes written do not depend on the machine's thread count.
    """
    from threadpoolctl import threadpool_limits

    cfg.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BrainmmError(f"simulation output {out_dir}: already exists (pass overwrite=True to replace it)")
    with threadpool_limits(limits=1, user_api="blas"):
        _simulate(cfg, out_dir, overwrite)
    return out_dir


def _simulate(cfg: SimulationConfig, out_dir: Path, overwrite: bool) -> None:
    # A 7th child for the population stage: the first six streams are the same whatever spawn() count is used.
    geno_ss, factor_ss, net_ss, pheno_ss, seq_ss, rec_ss, pop_ss = np.random.SeedSequence(cfg.seed).spawn(7)
    rng_net, rng_seq = np.random.default_rng(net_ss), np.random.default_rng(seq_ss)
    g, b, e = cfg.genotypes, cfg.brain, cfg.effects
    n = cfg.n_subjects
    structured = cfg.population.n_groups > 1
    rng_pop = np.random.default_rng(pop_ss) if structured else None  # one group draws nothing: same cohort

    if g.source == "simulate":
        geno = simulate_genotypes(g, n, np.random.default_rng(geno_ss), cfg.population, rng_pop)
    else:
        geno = load_genotype_base(g, n, np.random.default_rng(geno_ss), rng_seq)
    call_rate = np.isfinite(geno.observed).mean(axis=0)
    factors = simulate_factors(cfg.factors, geno.dosages, call_rate, geno.snp_ids,
                               np.random.default_rng(factor_ss))
    neural = b.generator == "neurolib"  # neurolib's Hopf model makes the latent signals; the rest is shared
    net: Network | NeuralMass = build_neural_mass(b, cfg.neural_mass, e) if neural else build_network(b, rng_net)
    rng_pheno = np.random.default_rng(pheno_ss)
    demo = simulate_demographics(cfg.phenotypes, cfg.sites, geno.family_ids, b.n_parcels, rng_pheno)
    pop: Population | None = None
    if structured:
        assert geno.groups is not None and rng_pop is not None
        pop = structure(cfg.population, geno.groups, geno.family_ids, demo.site, cfg.sites.n_sites,
                        b.n_modules, rng_pop)
        demo.site = pop.site

    # Factor k drives module k: u[s, v] = f[s, module(v)] for driven modules, 0 elsewhere.
    k = cfg.factors.n_factors
    loading = (net.modules[:, None] == np.arange(k)[None]).astype(np.float64)  # [V, K]
    drive = factors.values @ loading.T
    log_gain = (e.effect_size * e.amplitude * drive + demo.global_log_gain(cfg.phenotypes)[:, None]
                + b.gain_sd * rng_net.standard_normal((n, b.n_parcels)))
    offset = pop.drive_offset(net.modules) if pop is not None else None  # [N, V] group effect, not genetic
    if offset is not None:
        log_gain += e.amplitude * offset
    nm_params = subject_parameters(net, drive, e, offset) if isinstance(net, NeuralMass) else None
    dx, dx_intercept = simulate_diagnosis(cfg.phenotypes, factors.values[:, 0], log_gain.mean(axis=1),
                                          demo.site_dx_shift[demo.site], rng_pheno)

    sessions = b.n_sessions
    rec_subject = np.repeat(np.arange(n), sessions)
    rec_session = np.tile(np.arange(1, sessions + 1), n)
    rec_ids = [f"{geno.subject_ids[s]}_ses-{j}" for s, j in zip(rec_subject, rec_session)]
    rec_rngs = [np.random.default_rng(s) for s in rec_ss.spawn(len(rec_ids))]
    site_names = [f"site{i + 1}" for i in range(cfg.sites.n_sites)]
    cohort = pd.DataFrame({
        "recording_id": rec_ids,
        "subject_id": [geno.subject_ids[s] for s in rec_subject],
        "session": rec_session,
        "family": [geno.family_ids[s] for s in rec_subject],
        "site": [site_names[demo.site[s]] for s in rec_subject],
        **({"ancestry": [group_names(cfg.population.n_groups)[pop.groups[s]] for s in rec_subject]}
           if pop is not None else {}),
        "tr": b.tr,
        "file": [f"fmri/{r}.npy" for r in rec_ids],
        "age": demo.age[rec_subject],
        "sex": np.where(demo.male[rec_subject], "M", "F"),
        "diagnosis": dx[rec_subject],
    })

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "fmri").mkdir()
        per_subject = sessions * (b.n_timepoints + len(net.hrf) - 1) * b.n_parcels
        chunk = max(1, CHUNK_ELEMENTS // per_subject)
        max_eig = -np.inf
        site_scale = np.exp(demo.site_log_scale)
        for start in progress(range(0, n, chunk), desc="simulate", total=-(-n // chunk), unit="chunk"):
            subj = np.arange(start, min(start + chunk, n))
            recs = np.arange(subj[0] * sessions, (subj[-1] + 1) * sessions)
            rngs = [rec_rngs[r] for r in recs]
            if isinstance(net, NeuralMass):
                assert nm_params is not None
                x = simulate_neural_mass(net, nm_params.rows(subj), sessions, b.n_timepoints, rngs)
            else:
                ops = net.subject_operators(drive[subj], e, None if offset is None else offset[subj])
                x, eig = simulate_signals(net, ops, sessions, b.n_timepoints, rngs)
                max_eig = max(max_eig, eig)
            s_of_r = rec_subject[recs]
            site = demo.site[s_of_r]
            noise = np.stack([r.standard_normal((b.n_timepoints, b.n_parcels)) for r in rngs])
            y = site_scale[site, None, None] * (np.exp(log_gain[s_of_r])[:, None] * x + b.obs_noise * noise)
            y += demo.site_offset[site][:, None]
            for r, arr in zip(recs, y.astype(np.float32)):
                np.save(tmp / "fmri" / f"{rec_ids[r]}.npy", arr)

        cohort.to_csv(tmp / "cohort.csv", index=False)
        pd.DataFrame(net.coords, columns=["x", "y", "z"]).to_csv(
            tmp / "coords.tsv", sep="\t", index=False, float_format="%.1f")
        lengths = _contig_lengths(geno, g.gap_bp)
        write_vcf(tmp / "genotypes.vcf.gz", geno.subject_ids, geno.chrom, geno.pos, geno.snp_ids,
                  geno.ref, geno.alt, lengths, SOURCE, dosages=geno.observed)
        write_npz(tmp / "genotypes.npz", {
            "dosages": geno.observed, "subject_ids": np.array(geno.subject_ids), "snp_ids": geno.snp_ids,
            "chrom": geno.chrom, "pos": geno.pos, "ref": geno.ref, "alt": geno.alt,
        })
        table = {"subject_id": geno.subject_ids}
        table.update({f"factor_{i + 1}": factors.values[:, i] for i in range(k)})
        table.update({f"pgs_{i + 1}": factors.pgs[:, i] for i in range(k)})
        pd.DataFrame(table).to_csv(tmp / "factors.csv", index=False)
        if cfg.write_sequences:
            write_fasta(tmp / "reference.fa", _reference(geno, lengths, rng_seq))
            write_bed(tmp / "regions.bed", geno.regions)
            write_vcf(tmp / "haplotypes.vcf.gz", geno.subject_ids, geno.chrom, geno.pos, geno.snp_ids,
                      geno.ref, geno.alt, lengths, SOURCE, haplotypes=geno.haplotypes)
        if nm_params is not None:
            write_npz(tmp / "neural_mass.npz", {
                "subject_ids": np.array(geno.subject_ids), "a": nm_params.a, "x_ext": nm_params.x_ext,
                "coupling_multiplier": nm_params.coupling, "cmat": net.cmat,
            })
        truth = _truth(cfg, geno, factors, net, demo, dx, dx_intercept, max_eig, site_names)
        if pop is not None:
            assert geno.group_af is not None and geno.ancestral_af is not None
            truth["population"] = population_truth(cfg.population, pop, geno.subject_ids, site_names,
                                                   geno.group_af, geno.ancestral_af)
        atomic_write_json(tmp / "truth.json", truth)
        save_config(cfg, tmp / "config.yaml")
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        atomic_write_json(tmp / "manifest.json", {
            "kind": "brainmm-simulated-cohort", "version": __version__, "seed": cfg.seed,
            "n_subjects": n, "n_recordings": len(rec_ids), "n_parcels": b.n_parcels,
            "n_timepoints": b.n_timepoints, "tr": b.tr, "n_snps": len(geno.snp_ids),
            "sha256": {f: sha256_file(tmp / f) for f in files},
        })
    LOG.info("simulated %d subjects / %d recordings (V=%d, T=%d, %d SNPs) -> %s",
             n, len(rec_ids), b.n_parcels, b.n_timepoints, len(geno.snp_ids), out_dir)


def _truth(
    cfg: SimulationConfig,
    geno: Genotypes,
    factors: Factors,
    net: Network | NeuralMass,
    demo: Demographics,
    dx: np.ndarray,
    dx_intercept: float,
    max_eig: float,
    site_names: list[str],
) -> dict[str, Any]:
    """Everything needed to check or reuse the ground truth (truth.json)."""
    e = cfg.effects
    r2 = [float(np.corrcoef(factors.values[:, i], factors.pgs[:, i])[0, 1] ** 2)
          for i in range(cfg.factors.n_factors)]
    factor_module = {f"factor_{i + 1}": i for i in range(cfg.factors.n_factors)}
    if isinstance(net, NeuralMass):
        brain = {**neural_mass_truth(net, e), "factor_module": factor_module}
    else:
        brain = {
            "modules": net.modules.tolist(),
            "factor_module": factor_module,
            "noise_variance": float(net.noise_cov[0, 0]),
            "base_max_eigenvalue": float(np.linalg.eigvalsh(net.w0 - np.eye(net.n_parcels) / net.tau)[-1]),
            "max_subject_eigenvalue": max_eig,
            "hrf": net.hrf.tolist(),
        }
    effects = {
        "effect_size": e.effect_size,
        "amplitude_log_gain_per_sd": e.effect_size * e.amplitude,
        "coupling_multiplier": f"1 + {e.coupling} * tanh({e.effect_size} * f_k) on module-k edges",
        "timescale_multiplier": f"exp({e.timescale} * tanh({e.effect_size} * f_k)) on module-k parcels",
    }
    if isinstance(net, NeuralMass):
        effects["bifurcation_parameter"] = (f"{cfg.neural_mass.a} + {e.bifurcation} * tanh({e.effect_size} * f_k) "
                                            f"on module-k nodes")
    return {
        "package": "brainmm",
        "version": __version__,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "genetics": {
            "source": cfg.genotypes.source,
            "n_snps": len(geno.snp_ids),
            "n_families": len(set(geno.family_ids)),
            "pgs_formula": "pgs_k = sum_j w_j * (dosage_j - dosage_mean_j) / dosage_sd_j / pgs_sd  (truth dosages)",
            "factor_formula": "factor_k = sqrt(h2_k) * pgs_k + sqrt(1 - h2_k) * e_k,  e_k ~ N(0, 1)",
            "h2": cfg.factors.h2_values(),
            "causal": factors.causal,
            "realised_h2": r2,
        },
        "brain": brain,
        "effects": effects,
        "phenotypes": {
            "dx_intercept": dx_intercept,
            "realised_prevalence": float(dx.mean()),
            "sites": site_names,
            "site_log_scale": demo.site_log_scale.tolist(),
            "site_dx_shift": demo.site_dx_shift.tolist(),
            "site_offset": demo.site_offset.tolist(),
        },
    }
