"""Simulated cohorts: reproducibility, readable files, and the planted ground truth (h2, effect, diagnosis, OU)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest

import brainmm.data.simulate.cohort as cohort_module
from brainmm.config import ConfigError, load_config
from brainmm.data.simulate import SimulationConfig, simulate_cohort
from brainmm.data.simulate.power import genetic_r2, planted_link_r2
from brainmm.errors import BrainmmError

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "n_subjects=40", "brain.n_parcels=16", "brain.n_modules=4", "brain.n_timepoints=120",
    "factors.n_factors=4", "genotypes.n_blocks=12", "genotypes.snps_per_block=6",
]


def small(*overrides: str) -> SimulationConfig:
    """A tiny cohort config (defaults of SMALL, then `overrides`)."""
    return load_config(SimulationConfig, None, [*SMALL, *overrides])


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small("write_sequences=true", "brain.n_sessions=2")
    a = tree_hashes(simulate_cohort(cfg, tmp_path / "a"))
    # Batching subjects differently must not change a byte (one generator per recording).
    monkeypatch.setattr(cohort_module, "CHUNK_ELEMENTS", 1)
    b = tree_hashes(simulate_cohort(cfg, tmp_path / "b"))
    assert a == b and len(a) > 80
    c = tree_hashes(simulate_cohort(small("write_sequences=true", "brain.n_sessions=2", "seed=1"), tmp_path / "c"))
    assert a.keys() == c.keys()
    for name in ("fmri/sub-0001_ses-1.npy", "genotypes.vcf.gz", "factors.csv", "cohort.csv", "reference.fa"):
        assert a[name] != c[name], name


def test_files_are_readable_and_consistent(tmp_path: Path) -> None:
    cfg = small("write_sequences=true", "brain.n_sessions=2", "genotypes.missing_rate=0.1")
    out = simulate_cohort(cfg, tmp_path / "cohort")
    cohort = pd.read_csv(out / "cohort.csv", dtype={"subject_id": str})
    assert list(cohort.columns) == ["recording_id", "subject_id", "session", "family", "site", "tr", "file",
                                    "age", "sex", "diagnosis"]
    assert len(cohort) == 80 and cohort["subject_id"].nunique() == 40 and set(cohort["session"]) == {1, 2}
    assert set(cohort["sex"]) <= {"F", "M"} and set(cohort["diagnosis"]) <= {0, 1}
    assert (cohort.groupby("subject_id")["site"].nunique() == 1).all()
    sibs = cohort.drop_duplicates("subject_id").groupby("family")["subject_id"].size()
    assert (sibs == 2).sum() == 4  # family_fraction 0.2 of 40 subjects in pairs
    for f in cohort["file"]:
        ts = np.load(out / f)
        assert ts.shape == (120, 16) and ts.dtype == np.float32 and np.isfinite(ts).all()
    coords = pd.read_csv(out / "coords.tsv", sep="\t")
    assert list(coords.columns) == ["x", "y", "z"] and coords.shape == (16, 3)
    assert np.allclose(coords["x"].to_numpy()[:8], -coords["x"].to_numpy()[8:])  # mirrored hemispheres

    npz = np.load(out / "genotypes.npz")
    subjects = [str(s) for s in npz["subject_ids"]]
    assert subjects == sorted(cohort["subject_id"].unique())
    vcf = pysam.VariantFile(str(out / "genotypes.vcf.gz"))
    assert list(vcf.header.samples) == subjects
    rows = []
    for rec in vcf.fetch(cfg.genotypes.contig):  # fetch() needs the tabix index
        gts = [s["GT"] for s in rec.samples.values()]
        rows.append([np.nan if None in gt else sum(gt) for gt in gts])
    dos = np.array(rows, dtype=np.float32).T
    assert dos.shape == npz["dosages"].shape == (40, 72)
    assert np.array_equal(np.isnan(dos), np.isnan(npz["dosages"])) and 0.05 < np.isnan(dos).mean() < 0.15
    assert np.array_equal(np.nan_to_num(dos), np.nan_to_num(npz["dosages"]))

    # Phased haplotypes agree with every observed call; REF alleles match the reference; regions hold the SNPs.
    hap = pysam.VariantFile(str(out / "haplotypes.vcf.gz"))
    fasta = pysam.FastaFile(str(out / "reference.fa"))
    regions = pd.read_csv(out / "regions.bed", sep="\t", header=None, names=["chrom", "start", "end", "name"])
    for j, rec in enumerate(hap):
        calls = np.array([sum(s["GT"]) for s in rec.samples.values()], dtype=np.float32)
        seen = np.isfinite(dos[:, j])
        assert np.array_equal(calls[seen], dos[seen, j]) and all(s.phased for s in rec.samples.values())
        assert fasta.fetch(rec.chrom, rec.pos - 1, rec.pos) == rec.ref != rec.alts[0]
        assert ((regions["start"] < rec.pos) & (rec.pos <= regions["end"])).sum() == 1

    factors = pd.read_csv(out / "factors.csv")
    assert list(factors.columns) == ["subject_id"] + [f"factor_{k}" for k in range(1, 5)] + [
        f"pgs_{k}" for k in range(1, 5)]
    truth = json.loads((out / "truth.json").read_text())
    assert truth["seed"] == 0 and truth["version"] and truth["config"]["brain"]["n_parcels"] == 16
    causal_ids = [s for f in truth["genetics"]["causal"] for s in f["snp_ids"]]
    assert len(set(causal_ids)) == 16 and set(causal_ids) <= set(npz["snp_ids"].tolist())
    causal_cols = [f["snp_index"] for f in truth["genetics"]["causal"]]
    assert np.isfinite(npz["dosages"][:, np.concatenate(causal_cols)]).mean(axis=0).min() >= 0.9  # call-rate filter
    assert load_config(SimulationConfig, out / "config.yaml") == cfg


@pytest.mark.parametrize("h2", [0.2, 0.8])
def test_factors_follow_h2_and_pgs_is_reproducible_from_truth(tmp_path: Path, h2: float) -> None:
    cfg = small("n_subjects=400", "brain.n_parcels=8", "brain.n_modules=4", "brain.n_timepoints=20",
                "genotypes.missing_rate=0", f"factors.h2={h2}")
    out = simulate_cohort(cfg, tmp_path / "c")
    factors = pd.read_csv(out / "factors.csv")
    r2 = [np.corrcoef(factors[f"factor_{k}"], factors[f"pgs_{k}"])[0, 1] ** 2 for k in range(1, 5)]
    assert abs(np.mean(r2) - h2) < 0.06 and max(abs(r - h2) for r in r2) < 0.12
    truth = json.loads((out / "truth.json").read_text())
    dos = np.load(out / "genotypes.npz")["dosages"].astype(np.float64)
    for k, causal in enumerate(truth["genetics"]["causal"], start=1):
        z = (dos[:, causal["snp_index"]] - causal["dosage_mean"]) / causal["dosage_sd"]
        np.testing.assert_allclose(z @ causal["weights"] / causal["pgs_sd"], factors[f"pgs_{k}"], atol=1e-9)


def test_planted_link_is_recoverable_from_brain_only_when_planted(tmp_path: Path) -> None:
    base = ["n_subjects=160", "brain.n_timepoints=300"]
    null = planted_link_r2(simulate_cohort(small(*base, "effects.effect_size=0"), tmp_path / "null"))
    strong = planted_link_r2(simulate_cohort(small(*base, "effects.effect_size=1.5"), tmp_path / "strong"))
    assert np.mean(list(null.values())) < 0.05 and max(null.values()) < 0.15, null
    assert np.mean(list(strong.values())) > 0.6 and min(strong.values()) > 0.4, strong
    assert np.mean(list(genetic_r2(tmp_path / "strong").values())) > 0.3  # PGS learnable from dosages


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_diagnosis_prevalence_and_direction(tmp_path: Path, sign: float) -> None:
    cfg = small("n_subjects=600", "brain.n_parcels=8", "brain.n_timepoints=20", "phenotypes.prevalence=0.3",
                f"phenotypes.dx_factor_effect={2 * sign}", "phenotypes.dx_brain_effect=0",
                "sites.dx_shift_sd=0")
    out = simulate_cohort(cfg, tmp_path / "c")
    cohort = pd.read_csv(out / "cohort.csv").merge(pd.read_csv(out / "factors.csv"), on="subject_id")
    assert abs(cohort["diagnosis"].mean() - 0.3) < 0.06
    gap = cohort.loc[cohort["diagnosis"] == 1, "factor_1"].mean() - cohort.loc[cohort["diagnosis"] == 0,
                                                                                "factor_1"].mean()
    assert sign * gap > 0.8


def test_ou_is_stable_and_stationary_with_unit_baseline_variance(tmp_path: Path) -> None:
    baseline = ["n_subjects=60", "brain.n_timepoints=600", "effects.effect_size=0", "brain.gain_sd=0",
                "brain.obs_noise=0", "sites.scale_sd=0", "sites.offset_sd=0", "phenotypes.age_effect=0",
                "phenotypes.sex_effect=0"]
    out = simulate_cohort(small(*baseline), tmp_path / "base")
    ts = np.stack([np.load(f) for f in sorted((out / "fmri").glob("*.npy"))]).astype(np.float64)
    assert abs(ts.var(axis=1).mean() - 1) < 0.1
    first, second = ts[:, :300].var(axis=1).mean(), ts[:, 300:].var(axis=1).mean()
    assert abs(first / second - 1) < 0.1  # started stationary: no transient
    # Strongest allowed coupling and effects: still stable for every subject.
    edge = simulate_cohort(small("brain.coupling=0.49", "effects.effect_size=5", "effects.coupling=0.5"),
                           tmp_path / "edge")
    truth = json.loads((edge / "truth.json").read_text())
    assert truth["brain"]["max_subject_eigenvalue"] < 0
    assert all(np.isfinite(np.load(f)).all() for f in (edge / "fmri").glob("*.npy"))


def test_real_genotype_base_from_vcf_and_npz(tmp_path: Path) -> None:
    first = simulate_cohort(small("n_subjects=50"), tmp_path / "first")
    ref = np.load(first / "genotypes.npz")
    with gzip.open(first / "genotypes.vcf.gz", "rb") as src:  # plain gzip (not bgzip), like the 1kg wheel file
        (tmp_path / "plain.vcf.gz").write_bytes(gzip.compress(src.read()))
    for base in (first / "genotypes.vcf.gz", first / "genotypes.npz", tmp_path / "plain.vcf.gz"):
        out = simulate_cohort(small("n_subjects=30", "genotypes.source=file", f"genotypes.path={base}",
                                    "genotypes.family_fraction=0", "write_sequences=true"), tmp_path / f"from_{base.name}")
        got = np.load(out / "genotypes.npz")
        rows = [ref["subject_ids"].tolist().index(s) for s in got["subject_ids"]]
        assert len(set(rows)) == 30
        np.testing.assert_array_equal(got["dosages"], ref["dosages"][rows])
        assert got["snp_ids"].tolist() == ref["snp_ids"].tolist()
        assert pd.read_csv(out / "cohort.csv")["subject_id"].tolist() == got["subject_ids"].tolist()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["brain.coupling=0.9"], "brain.coupling"),
        (["factors.n_factors=5"], "at most brain.n_modules"),
        (["brain.n_parcels=15"], "brain.n_parcels"),
        (["genotypes.source=file"], "genotypes.path"),
        (["genotypes.source=file", "genotypes.path=x.vcf"], "genotypes.family_fraction"),
        (["factors.n_causal=30"], "factors.n_causal"),
        (["population.site_association=1.5"], "population.site_association"),
        (["population.fst=0"], "population.fst"),
        (["population.n_groups=2", "genotypes.source=file", "genotypes.path=x.vcf", "genotypes.family_fraction=0"],
         "population.n_groups"),
    ],
)
def test_bad_config_names_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small(*overrides)


def test_user_errors_and_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BrainmmError, match="genotypes.path .*not found"):
        simulate_cohort(small("genotypes.source=file", "genotypes.path=/nope.vcf.gz", "genotypes.family_fraction=0"),
                        tmp_path / "x")
    with pytest.raises(BrainmmError, match="MAF >= factors.causal_min_maf"):
        simulate_cohort(small("factors.causal_min_maf=0.49"), tmp_path / "x")
    first = simulate_cohort(small(), tmp_path / "first")
    with pytest.raises(BrainmmError, match="holds only 40 samples"):
        simulate_cohort(small("n_subjects=41", "genotypes.source=file", f"genotypes.path={first / 'genotypes.npz'}",
                              "genotypes.family_fraction=0"), tmp_path / "x")
    with pytest.raises(BrainmmError, match="already exists"):
        simulate_cohort(small(), first)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(cohort_module, "write_vcf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_cohort(small(), tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]


def test_configs_yaml_holds_the_defaults() -> None:
    assert load_config(SimulationConfig, REPO / "configs" / "simulate.yaml") == SimulationConfig()


# Recorded once from the code before population structure existed (git 82385bd), for small() with seed 0: the
# final states of every generator the simulation creates, the observed dosages and the demographic columns.
# Integer RNG states and 0/1/2 dosages do not depend on the CPU or BLAS build.
BEFORE_POPULATION = {
    "n_generators": 45,
    "rng_states": "3aa08c8299178d3983774b3e1ed037f6b44479deffbbb3a8a86cb49ec60d75a4",
    "dosages": "abfc3579b3ac541bff1f4e6702e69e23d06d20e20ee301f3391f3fcf3c8b742d",
    "demographics": "c622567f7584fd15715f26cefbc243b46705b1bbbaddbcb802d56317b6385e72",
}


def _fingerprint(cfg: SimulationConfig, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    made: list[np.random.Generator] = []
    real = np.random.default_rng

    def tracking(seed: object = None) -> np.random.Generator:
        made.append(real(seed))
        return made[-1]

    with monkeypatch.context() as m:
        m.setattr(np.random, "default_rng", tracking)
        simulate_cohort(cfg, out)
    states = json.dumps([g.bit_generator.state["state"] for g in made], sort_keys=True)
    demo = pd.read_csv(out / "cohort.csv")[["subject_id", "family", "site", "age", "sex"]].to_csv(index=False)
    return {
        "n_generators": len(made),
        "rng_states": hashlib.sha256(states.encode()).hexdigest(),
        "dosages": hashlib.sha256(np.load(out / "genotypes.npz")["dosages"].tobytes()).hexdigest(),
        "demographics": hashlib.sha256(demo.encode()).hexdigest(),
    }


def test_one_group_draws_nothing_extra_and_leaves_the_cohort_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _fingerprint(small(), tmp_path / "default", monkeypatch) == BEFORE_POPULATION
    # With one group the other population fields are unused: every data file keeps its bytes.
    other = small("population.fst=0.3", "population.site_association=1", "population.brain_effect=2")
    a, b = tree_hashes(tmp_path / "default"), tree_hashes(simulate_cohort(other, tmp_path / "other"))
    changed = {f for f in a if a[f] != b[f]}
    assert changed == {"config.yaml", "truth.json", "manifest.json"} and a.keys() == b.keys()
    assert "ancestry" not in pd.read_csv(tmp_path / "other" / "cohort.csv").columns
    assert "population" not in json.loads((tmp_path / "other" / "truth.json").read_text())


def test_balding_nichols_frequencies_have_the_set_mean_and_variance() -> None:
    from brainmm.data.simulate.genotypes import balding_nichols

    p = np.random.default_rng(0).uniform(0.05, 0.5, 20000)
    for fst in (0.01, 0.1):
        q = balding_nichols(p, fst, 4, np.random.default_rng(1))
        dev = (q - p) / np.sqrt(fst * p * (1 - p))  # mean 0, variance 1 per group and SNP
        se = 1 / np.sqrt(dev.size)
        assert abs(dev.mean()) < 5 * se and abs((dev**2).mean() - 1) < 5 * np.sqrt(2) * se * 3


def test_population_structure_ancestry_sites_and_brain_effect(tmp_path: Path) -> None:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    base = ["n_subjects=150", "genotypes.n_blocks=32", "genotypes.snps_per_block=8", "brain.n_timepoints=60",
            "sites.n_sites=3", "sites.scale_sd=0", "population.n_groups=3", "population.fst=0.1",
            "population.site_association=0.9", "effects.effect_size=0"]
    # No site scale and no genetic effect (group-shifted PGS would move the brain too): ancestry can reach the
    # brain only through population.brain_effect.
    out = simulate_cohort(small(*base, "population.brain_effect=1.0"), tmp_path / "pop")
    null = simulate_cohort(small(*base, "population.brain_effect=0"), tmp_path / "null")
    cohort = pd.read_csv(out / "cohort.csv")
    assert list(cohort.columns[4:6]) == ["site", "ancestry"] and set(cohort["ancestry"]) == {"pop1", "pop2", "pop3"}
    assert (cohort.groupby("family")["ancestry"].nunique() == 1).all()  # siblings share ancestry and site
    truth = json.loads((out / "truth.json").read_text())["population"]
    assert truth["subject_group"] == dict(zip(cohort["subject_id"], cohort["ancestry"]))
    assert truth["subject_site"] == dict(zip(cohort["subject_id"], cohort["site"]))
    assert abs(truth["realised_fst"] - 0.1) < 0.03
    home = cohort["site"] == cohort["ancestry"].map(truth["home_site"])
    assert abs(home.mean() - (0.9 + 0.1 / 3)) < 0.08  # P(home site) = a + (1 - a) / n_sites

    dos = np.load(out / "genotypes.npz")["dosages"].astype(np.float64)
    dos = np.where(np.isnan(dos), np.nanmean(dos, axis=0), dos)
    pcs = PCA(2).fit_transform((dos - dos.mean(0)) / np.maximum(dos.std(0), 1e-9))
    clusters = KMeans(3, n_init=10, random_state=0).fit_predict(pcs)
    assert adjusted_rand_score(cohort["ancestry"], clusters) > 0.9  # ancestry is what genetic PCs find

    def group_r2(folder: Path) -> float:  # share of per-parcel log-variance explained by ancestry (in sample)
        feats = np.stack([np.log(np.load(folder / f).var(axis=0)) for f in cohort["file"]])
        onehot = pd.get_dummies(cohort["ancestry"]).to_numpy(float)
        fitted = onehot @ np.linalg.lstsq(onehot, feats, rcond=None)[0]
        return float(1 - ((feats - fitted) ** 2).sum() / ((feats - feats.mean(0)) ** 2).sum())

    # The genotypes are the same with and without the brain effect; only the brain differs by group.
    assert np.array_equal(np.load(null / "genotypes.npz")["dosages"], np.load(out / "genotypes.npz")["dosages"],
                          equal_nan=True)
    assert group_r2(out) > 0.15 and group_r2(null) < 0.05
