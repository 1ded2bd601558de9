"""PLINK 2 .pgen and BGEN genotype sources, streamed matrices, variant selection, genetic PCs.

plink2 (Debian package, installed by .ci/run) is the oracle: it converts the 1000 Genomes sample VCF to .pgen
and BGEN 1.2 8-bit, and computes `--pca 5` for the PCA comparison.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainmm.cli import main
from brainmm.data.genetics.config import GeneticPcaConfig, GenotypeMatrixConfig
from brainmm.data.genetics.matrix import read_variant_table, run_matrix
from brainmm.data.genetics.pca import fit_genetic_pcs, project, run_pca, standardise
from brainmm.data.genetics.sources import open_source
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError

N, M = 40, 12
SAMPLES = [f"S{i:02d}" for i in range(N)]


def _plink2() -> str:
    exe = shutil.which("plink2")
    if exe is None:
        pytest.fail("plink2 not found: the oracle of these tests (`apt-get install -y plink2`; .ci/run installs it)")
    return exe


def _run_plink2(*args: str | Path) -> None:
    subprocess.run([_plink2(), *map(str, args), "--threads", "1", "--memory", "1000"], check=True,
                   capture_output=True)


def _truth(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Genotype probabilities [M, N, 3] (some soft, some missing) and their float64 ALT dosages [N, M]."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([0.5, 0.5, 0.5], size=(M, N))
    hard = rng.random((M, N)) < 0.5
    probs[hard] = np.eye(3)[rng.integers(0, 3, size=int(hard.sum()))]
    probs[rng.random((M, N)) < 0.05] = np.nan
    dosage = (probs[:, :, 1] + 2 * probs[:, :, 2]).T
    return probs, dosage


def _write_bgen(path: Path, probs: np.ndarray, *, layout: int = 2, compression: str | None = "zlib",
                bits: int = 8, phased: bool = False, sample_file: bool = True) -> Path:
    import bgen

    with bgen.BgenWriter(path, N, samples=SAMPLES, compression=compression, layout=layout) as w:
        for j in range(M):
            p = probs[j]
            if phased:  # haplotype probabilities with the same dosage: hap1 = hap2 = ALT with prob dosage/2
                q = (p[:, 1] + 2 * p[:, 2]) / 2
                p = np.stack([1 - q, q, 1 - q, q], axis=1)
            w.add_variant(f"v{j}", f"rs{j}", "1", 1000 + 10 * j, ["A", "G"], p, phased=phased, bit_depth=bits)
    if sample_file:
        path.with_suffix(".sample").write_text("ID_1 ID_2 missing\n0 0 0\n" + "".join(f"{s} {s} 0\n" for s in SAMPLES))
    return path


def _write_pgen(path: Path, dosage: np.ndarray, info: list[float] | None = None) -> Path:
    import pgenlib

    with pgenlib.PgenWriter(str(path).encode(), N, M, False, dosage_present=True) as w:
        for j in range(M):
            w.append_dosages(np.where(np.isnan(dosage[:, j]), -9, dosage[:, j]).astype(np.float32))
    path.with_suffix(".psam").write_text("#IID\n" + "".join(f"{s}\n" for s in SAMPLES))
    rows = [f"1\t{1000 + 10 * j}\trs{j}\tA\tG" + (f"\tR2={info[j]}" if info else "") for j in range(M)]
    path.with_suffix(".pvar").write_text("##fileformat=PVARv1.0\n#CHROM\tPOS\tID\tREF\tALT"
                                         + ("\tINFO" if info else "") + "\n" + "\n".join(rows) + "\n")
    return path


def _split(tmp: Path, samples: list[str] = SAMPLES) -> Path:
    split = tmp / "split.csv"
    labels = (["train"] * 3 + ["val", "test"]) * (len(samples) // 5 + 1)
    pd.DataFrame({"subject_id": samples, "split": labels[:len(samples)]}).to_csv(split, index=False)
    return split


def _dosages(**source) -> np.ndarray:
    src = open_source(**source)
    rows = np.arange(len(src.variants))
    return np.concatenate([v for _, v in src.blocks(np.arange(len(src.samples)), rows, 5)], axis=1)


@pytest.mark.parametrize("layout, compression, bits, phased, tol", [
    # a probability is stored to within one quantum q; the dosage p1 + 2 p2 to within 3 q
    (1, "zlib", 16, False, 3 / 32768 + 1e-6),  # BGEN 1.1 (layout 1: q = 1/32768)
    (2, "zlib", 8, False, 3 / 255 + 1e-6),     # UK Biobank imputed: 1.2, zlib, 8 bits
    (2, "zstd", 16, True, 3 / 65535 + 1e-6),   # BGEN 1.3 (zstd), phased
    (2, None, 32, False, 1e-6),                # uncompressed, 32 bits (read as float32)
])
def test_bgen_dosage_is_expected_alt_count(tmp_path: Path, layout: int, compression: str | None, bits: int,
                                           phased: bool, tol: float) -> None:
    probs, truth = _truth()
    path = _write_bgen(tmp_path / "g.bgen", probs, layout=layout, compression=compression, bits=bits, phased=phased)
    got = _dosages(bgen=str(path))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(truth))  # missing stays missing
    assert np.nanmax(np.abs(got - truth)) <= tol
    assert open_source(bgen=str(path)).phased == phased


def test_pgen_dosages_selection_and_streaming(tmp_path: Path) -> None:
    probs, truth = _truth(1)
    info = [0.3 + 0.05 * j for j in range(M)]
    pgen = _write_pgen(tmp_path / "g.pgen", truth, info)
    got = _dosages(pgen=str(pgen))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(truth))
    assert np.nanmax(np.abs(got - truth)) <= 1 / 16384 + 1e-6  # pgen stores dosages in 1/16384 steps
    split = _split(tmp_path)
    base = dict(pgen=str(pgen), split=str(split), min_maf=0.0, max_missing=1.0, impute="mean")
    whole = run_matrix(GenotypeMatrixConfig(**base, block_size=100, out=str(tmp_path / "a")))
    small = run_matrix(GenotypeMatrixConfig(**base, block_size=1, out=str(tmp_path / "b")))
    np.testing.assert_array_equal(whole.vectors, small.vectors)  # block size changes nothing
    assert EmbeddingTable.load(tmp_path / "b").meta["data_hash"] == whole.meta["data_hash"]
    np.testing.assert_array_equal(EmbeddingTable.load(tmp_path / "b").vectors, whole.vectors)
    # INFO threshold (R2 in the .pvar), regions and an ID list with one swapped variant
    regions = tmp_path / "r.bed"
    regions.write_text("1\t1000\t1051\n")  # 0-based: positions 1001..1051 -> variants 1000..1050 minus 1000
    ids = tmp_path / "ids.txt"
    ids.write_text("1:1020:G:A\nrs3\n1:9999:A:C\n")
    info_t = run_matrix(GenotypeMatrixConfig(**base, min_info=0.6, out=str(tmp_path / "i")))
    assert info_t.meta["variants_selected"] == sum(x >= 0.6 for x in info)
    reg = run_matrix(GenotypeMatrixConfig(**base, regions=str(regions), out=str(tmp_path / "r")))
    assert read_variant_table(tmp_path / "r")["pos"].tolist() == [1010, 1020, 1030, 1040, 1050]
    np.testing.assert_array_equal(reg.vectors, whole.vectors[:, 1:6])
    lst = run_matrix(GenotypeMatrixConfig(**base, variants=str(ids), out=str(tmp_path / "l")))
    kept = read_variant_table(tmp_path / "l")
    assert kept["variant_id"].tolist() == ["1:1020:G:A", "1:1030:A:G"] and lst.meta["alleles_flipped"] == 1
    np.testing.assert_allclose(lst.vectors[:, 0], 2 - whole.vectors[:, 2], atol=1e-6)
    assert kept["train_alt_freq"].iloc[0] == pytest.approx(1 - read_variant_table(tmp_path / "a")[
        "train_alt_freq"].iloc[2], abs=1e-6)
    hard = run_matrix(GenotypeMatrixConfig(**{**base, "impute": "mode"}, hard_call_threshold=0.1,
                                           out=str(tmp_path / "h")))
    assert set(np.unique(hard.vectors)) <= {0.0, 1.0, 2.0}
    raw = got.copy()
    far = np.abs(raw - np.rint(raw)) > 0.1
    assert hard.meta["calls_imputed"] == int((np.isnan(raw) | far).sum())
    with pytest.raises(BrainmmError, match=r"carry no INFO score"):
        run_matrix(GenotypeMatrixConfig(**{**base, "pgen": None}, bgen=str(_write_bgen(tmp_path / "x.bgen", probs)),
                                        min_info=0.5, out=str(tmp_path / "x")))


@pytest.fixture(scope="module")
def kg(sample_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The 1000 Genomes sample VCF converted by plink2 to .pgen and BGEN 1.2 8-bit (REF last, stated explicitly)."""
    from brainmm.data.genetics.sample import fetch_genetics_sample
    from brainmm.data.splits import make_split, save_split

    vcf = fetch_genetics_sample(sample_data_dir) / "1kg.chr2.vcf.gz"
    tmp = tmp_path_factory.mktemp("kg")
    _run_plink2("--vcf", vcf, "--make-pgen", "--out", tmp / "kg")
    _run_plink2("--vcf", vcf, "--export", "bgen-1.2", "bits=8", "ref-last", "--out", tmp / "kg")
    samples = open_source(pgen=str(tmp / "kg.pgen")).samples
    save_split(make_split(samples, seed=0), tmp / "split.csv")
    return {"vcf": vcf, "tmp": tmp, "split": tmp / "split.csv"}


def test_1kg_vcf_pgen_bgen_matrices_agree(kg: dict) -> None:
    tmp = kg["tmp"]
    split = str(kg["split"])
    vcf = run_matrix(GenotypeMatrixConfig(vcf=str(kg["vcf"]), split=split, out=str(tmp / "m_vcf")))
    pgen = run_matrix(GenotypeMatrixConfig(pgen=str(tmp / "kg.pgen"), split=split, out=str(tmp / "m_pgen")))
    # plink2 wrote the BGEN ALT first (ref-last): the kg.pvar beside it shows it, and bgen_ref=last reads it so.
    bgen = run_matrix(GenotypeMatrixConfig(bgen=str(tmp / "kg.bgen"), split=split, out=str(tmp / "m_bgen"),
                                           variants=str(tmp / "m_vcf.variants.tsv"), bgen_ref="last"))
    assert vcf.ids == pgen.ids == bgen.ids and len(vcf.ids) == 629
    cols = ["variant_id", "contig", "pos", "ref", "alt"]
    v = read_variant_table(tmp / "m_vcf")[cols]
    pd.testing.assert_frame_equal(v, read_variant_table(tmp / "m_pgen")[cols])
    pd.testing.assert_frame_equal(v, read_variant_table(tmp / "m_bgen")[cols])
    np.testing.assert_array_equal(pgen.vectors, vcf.vectors)
    assert np.abs(bgen.vectors - vcf.vectors).max() <= 0.01
    assert bgen.meta["alleles_flipped"] == 0 and bgen.meta["variants_selected"] == len(v) > 50
    order = bgen.meta["allele_order"]
    assert order["ref_allele"] == "last" and order["swapped"] == 0 and order["same_order"] == 381
    assert pgen.meta["source_format"] == "PLINK 2 genotypes" and bgen.meta["source_format"] == "BGEN"


def test_pca_matches_plink2(kg: dict) -> None:
    tmp = kg["tmp"]
    _run_plink2("--pfile", tmp / "kg", "--maf", "0.01", "--geno", "0.1", "--pca", "5", "--out", tmp / "pca")
    ref = pd.read_csv(tmp / "pca.eigenvec", sep="\t")
    for source in ({"vcf": str(kg["vcf"])}, {"pgen": str(tmp / "kg.pgen")}):
        table = run_pca(GeneticPcaConfig(**source, n_pcs=5, out=str(tmp / "pcs")))
        assert table.ids == ref["#IID"].tolist() and table.meta["fitted_on"] == "all"
        for i in range(5):
            assert abs(np.corrcoef(ref[f"PC{i + 1}"], table.vectors[:, i])[0, 1]) >= 0.999
    eigenval = np.loadtxt(tmp / "pca.eigenval")
    np.testing.assert_allclose(table.meta["eigenvalues"], eigenval, rtol=0.02)


def test_pca_split_fits_train_and_projects(kg: dict) -> None:
    tmp = kg["tmp"]
    split = pd.read_csv(kg["split"])
    table = run_pca(GeneticPcaConfig(pgen=str(tmp / "kg.pgen"), split=str(kg["split"]), n_pcs=3,
                                     ld_prune_r2=0.5, ld_window=50, out=str(tmp / "pcs_split")))
    assert table.meta["fitted_on"] == "train" and table.meta["ld_pruned"] > 0
    model = pd.read_csv(tmp / "pcs_split.variants.tsv", sep="\t", dtype={"contig": str})
    assert len(model) == table.meta["variants_used"]
    # float64 reference: fit rows are Z_fit V, val/test rows are projected with the train frequencies
    src = open_source(pgen=str(tmp / "kg.pgen"))
    rows = np.flatnonzero(src.variants["variant_id"].isin(set(model["variant_id"])).to_numpy())
    _, values = next(src.blocks(np.arange(len(src.samples)), rows, len(rows)))
    z = standardise(values, model["alt_freq"].to_numpy())
    expected = z @ model[["pc1", "pc2", "pc3"]].to_numpy()
    np.testing.assert_allclose(table.vectors, expected, atol=1e-4 * np.abs(expected).max())
    train = split.set_index("subject_id").loc[table.ids, "split"].eq("train").to_numpy()
    gram = expected[train].T @ expected[train]
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-6 * gram.max())  # orthogonal on train
    again = project(model, lambda: iter([(src.variants.iloc[rows], values)]))
    np.testing.assert_allclose(again, expected, rtol=1e-10, atol=1e-10)


def test_randomized_pca_equals_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 3, 60)
    freqs = rng.uniform(0.1, 0.9, (3, 200))
    values = rng.binomial(2, freqs[groups]).astype(np.float32)
    variants = pd.DataFrame({"variant_id": [f"1:{i}:A:G" for i in range(200)], "contig": "1"})

    def blocks():
        for s in range(0, 200, 64):
            yield variants.iloc[s:s + 64], values[:, s:s + 64]

    fit = np.ones(60, dtype=bool)
    exact = fit_genetic_pcs(blocks, fit, 2, max_exact_samples=100)
    approx = fit_genetic_pcs(blocks, fit, 2, max_exact_samples=10)
    assert exact.method.startswith("exact") and approx.method.startswith("randomized")
    for i in range(2):
        assert abs(np.corrcoef(exact.scores[:, i], approx.scores[:, i])[0, 1]) > 0.9999


def test_cli_matrix_and_pca_bgen(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    probs, _ = _truth(2)
    bgen = _write_bgen(tmp_path / "g.bgen", probs)
    split = _split(tmp_path)
    assert main(["-q", "genetics", "matrix", "--bgen", str(bgen), "--split", str(split), "--min-maf", "0",
                 "--max-missing", "1", "--out", str(tmp_path / "m")]) == 0
    assert EmbeddingTable.load(tmp_path / "m").vectors.shape == (N, M)
    assert main(["-q", "genetics", "pca", "--bgen", str(bgen), "--split", str(split), "--n-pcs", "2",
                 "--min-maf", "0", "--max-missing", "1", "--out", str(tmp_path / "p")]) == 0
    assert EmbeddingTable.load(tmp_path / "p").vectors.shape == (N, 2)
    assert "2 PCs" in capsys.readouterr().out


# ---- bad input: one clear error naming the file, nothing written ----------------------------------------


def _bad(tmp: Path, capsys: pytest.CaptureFixture, flag: str, path: Path, *extra: str) -> str:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    code = main(["-q", "genetics", "matrix", flag, str(path), "--split", str(_split(tmp)), "--out",
                 str(out / "m"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert [p.name for p in out.iterdir() if not p.name.endswith(".log")] == []
    return err


def test_bad_pgen_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, truth = _truth(3)
    pgen = _write_pgen(tmp_path / "g.pgen", truth)
    data = pgen.read_bytes()
    trunc = tmp_path / "t.pgen"
    trunc.write_bytes(data[: len(data) // 2])
    for ext in (".pvar", ".psam"):
        shutil.copy(pgen.with_suffix(ext), trunc.with_suffix(ext))
    assert "t.pgen" in _bad(tmp_path, capsys, "--pgen", trunc)
    few = tmp_path / "few.pgen"
    shutil.copy(pgen, few)
    shutil.copy(pgen.with_suffix(".pvar"), few.with_suffix(".pvar"))
    few.with_suffix(".psam").write_text("#IID\n" + "".join(f"{s}\n" for s in SAMPLES[:-1]))
    err = _bad(tmp_path, capsys, "--pgen", few, "--drop-unmatched-samples")
    assert "few.psam" in err and f"({N - 1} samples)" in err
    nopvar = tmp_path / "nopvar.pgen"
    shutil.copy(pgen, nopvar)
    shutil.copy(pgen.with_suffix(".psam"), nopvar.with_suffix(".psam"))
    assert "nopvar.pvar not found" in _bad(tmp_path, capsys, "--pgen", nopvar)


def test_bad_bgen_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    probs, _ = _truth(4)
    bgen = _write_bgen(tmp_path / "g.bgen", probs)
    data = bgen.read_bytes()
    trunc = tmp_path / "t.bgen"
    trunc.write_bytes(data[: len(data) - 40])
    shutil.copy(bgen.with_suffix(".sample"), trunc.with_suffix(".sample"))
    assert "t.bgen" in _bad(tmp_path, capsys, "--bgen", trunc)
    sample = tmp_path / "short.sample"
    sample.write_text("ID_1 ID_2 missing\n0 0 0\n" + "".join(f"{s} {s} 0\n" for s in SAMPLES[:-2]))
    err = _bad(tmp_path, capsys, "--bgen", bgen, "--sample", str(sample))
    assert "short.sample" in err and f"{N - 2} samples" in err and f"holds {N}" in err
    flags_at = 4 + int.from_bytes(data[4:8], "little") - 4
    flags = int.from_bytes(data[flags_at:flags_at + 4], "little")
    for name, new in (("layout", (flags & ~(15 << 2)) | (3 << 2)), ("compression", flags | 3)):
        odd = tmp_path / f"{name}.bgen"
        odd.write_bytes(data[:flags_at] + new.to_bytes(4, "little") + data[flags_at + 4:])
        shutil.copy(bgen.with_suffix(".sample"), odd.with_suffix(".sample"))
        err = _bad(tmp_path, capsys, "--bgen", odd)
        assert f"{name}.bgen" in err and "unsupported layout" in err


def test_phased_bgen_gives_the_vcf_haplotypes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import bgen
    import pysam

    from brainmm.data.genetics.simulate import simulate_vcf_cohort

    paths = simulate_vcf_cohort(tmp_path / "sim", n_samples=30, n_regions=3, seed=1)
    vcf = pysam.VariantFile(str(paths["vcf"]))
    samples = list(vcf.header.samples)
    with bgen.BgenWriter(tmp_path / "h.bgen", len(samples), samples=samples, compression="zstd") as w:
        for rec in vcf:
            k = len(rec.alleles)
            probs = np.zeros((len(samples), 2 * k))
            for s, call in enumerate(rec.samples.values()):
                a, b = call.allele_indices
                probs[s, a] = probs[s, k + b] = 1.0
            w.add_variant(f"v{rec.pos}", ".", rec.chrom, rec.pos, list(rec.alleles), probs, phased=True)
    common = ["--fasta", str(paths["fasta"]), "--regions", str(paths["regions"])]
    outs = {}
    for name, source in (("vcf", ["--vcf", str(paths["vcf"])]), ("bgen", ["--bgen", str(tmp_path / "h.bgen")])):
        outs[name] = tmp_path / f"{name}.fa"
        assert main(["-q", "genetics", "haplotypes", *source, *common, "--out", str(outs[name])]) == 0
    capsys.readouterr()
    assert outs["vcf"].read_text() == outs["bgen"].read_text() and outs["vcf"].read_text().count(">") == 30 * 3 * 2


def test_multiallelic_bgen_one_column_per_alt(tmp_path: Path) -> None:
    import bgen

    rng = np.random.default_rng(5)
    unphased = rng.dirichlet(np.ones(6), size=N)  # genotypes in BGEN order: AA, AG, GG, AT, GT, TT
    haps = np.concatenate([rng.dirichlet(np.ones(3), size=N), rng.dirichlet(np.ones(3), size=N)], axis=1)
    with bgen.BgenWriter(tmp_path / "m.bgen", N, samples=SAMPLES, compression="zlib") as w:
        w.add_variant("u", "rsu", "1", 100, ["A", "G", "T"], unphased, bit_depth=16)
        w.add_variant("p", "rsp", "1", 200, ["A", "G", "T"], haps, phased=True, bit_depth=16)
    src = open_source(bgen=str(tmp_path / "m.bgen"))
    assert src.variants["variant_id"].tolist() == ["1:100:A:G", "1:100:A:T", "1:200:A:G", "1:200:A:T"]
    assert src.multiallelic_split == 2
    got = _dosages(bgen=str(tmp_path / "m.bgen"))
    u = unphased
    expected = np.stack([u[:, 1] + 2 * u[:, 2] + u[:, 4], u[:, 3] + u[:, 4] + 2 * u[:, 5],
                         haps[:, 1] + haps[:, 4], haps[:, 2] + haps[:, 5]], axis=1)
    assert np.abs(got - expected).max() <= 4 / 65535 + 1e-6  # four stored probabilities of step 1/65535


def test_multiallelic_pgen_one_column_per_alt(tmp_path: Path) -> None:
    import pgenlib

    rng = np.random.default_rng(6)
    codes = rng.integers(0, 3, size=(2, 2 * N)).astype(np.int32)  # two variants, allele codes per haplotype
    codes[0, :2] = -9  # first sample missing at variant 0
    path = tmp_path / "m.pgen"
    with pgenlib.PgenWriter(str(path).encode(), N, 2, False, allele_ct_limit=3) as w:
        for j in range(2):
            w.append_alleles(codes[j], allele_ct=3)
    path.with_suffix(".psam").write_text("#IID\n" + "".join(f"{s}\n" for s in SAMPLES))
    path.with_suffix(".pvar").write_text("#CHROM\tPOS\tID\tREF\tALT\n1\t100\tv1\tA\tG,T\n1\t200\tv2\tC\tA,G\n")
    src = open_source(pgen=str(path))
    assert src.variants["variant_id"].tolist() == ["1:100:A:G", "1:100:A:T", "1:200:C:A", "1:200:C:G"]
    got = _dosages(pgen=str(path))
    pairs = codes.reshape(2, N, 2)
    expected = np.stack([(pairs[j] == a).sum(axis=1) for j in range(2) for a in (1, 2)], axis=1).astype(float)
    expected[0, :2] = np.nan
    np.testing.assert_array_equal(got, expected)


def test_ld_pruning_drops_correlated_variants_whatever_the_block_size() -> None:
    rng = np.random.default_rng(1)
    base = rng.binomial(2, 0.4, size=(80, 30)).astype(np.float32)
    values = np.repeat(base, 2, axis=1)  # each variant twice in a row: r^2 = 1 with its copy
    values[:, 1::2][rng.random((80, 30)) < 0.02] = np.nan  # copies lightly damaged, still r^2 >> 0.5
    variants = pd.DataFrame({"variant_id": [f"1:{i}:A:G" for i in range(60)], "contig": "1"})

    def blocks_of(size: int):
        def blocks():
            for s in range(0, 60, size):
                yield variants.iloc[s:s + size], values[:, s:s + size]
        return blocks

    fit = np.ones(80, dtype=bool)
    runs = [fit_genetic_pcs(blocks_of(size), fit, 2, ld_prune_r2=0.5, ld_window=10) for size in (7, 60)]
    for run in runs:
        assert run.variants["variant_id"].tolist() == [f"1:{i}:A:G" for i in range(0, 60, 2)]
        assert run.info["ld_pruned"] == 30
    np.testing.assert_allclose(runs[0].scores, runs[1].scores, rtol=1e-10, atol=1e-10)


def test_vcf_text_path_equals_the_per_call_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pysam

    from brainmm.data.genetics import sources

    lines = ["##fileformat=VCFv4.2", "##contig=<ID=1>", '##FORMAT=<ID=GT,Number=1,Type=String,Description="GT">',
             '##FORMAT=<ID=DS,Number=1,Type=Float,Description="DS">',
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tA\tB\tC\tD",
             "1\t10\trs1\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|1\t./.\t0/0",  # text path
             "1\t20\trs2\tC\tT,G\t.\tPASS\t.\tGT\t1|2\t0|2\t2/2\t.|1",  # multi-allelic, half-missing: text path
             "1\t30\trs3\tG\tA\t.\tPASS\t.\tGT\t0\t1\t.\t1",  # haploid: per-call path
             "1\t40\trs4\tT\tC\t.\tPASS\t.\tGT:DS\t0|1:1\t1|1:2\t0|0:0\t0|1:1"]  # other FORMAT fields: per-call
    plain = tmp_path / "x.vcf"
    plain.write_text("\n".join(lines) + "\n")
    pysam.tabix_compress(str(plain), str(tmp_path / "x.vcf.gz"))
    source = sources.VcfSource(tmp_path / "x.vcf.gz")

    def read(samples: list[int]) -> np.ndarray:
        rows = np.arange(len(source.variants))
        return np.hstack([b for _, b in source.blocks(np.array(samples), rows, 2)])

    seen = []
    fast = sources._diploid_gt_text
    monkeypatch.setattr(sources, "_diploid_gt_text", lambda rec, n: seen.append(fast(rec, n) is not None) or fast(rec, n))
    text = read([0, 1, 2, 3]), read([1, 3])
    assert seen[:4] == [True, True, False, False]
    monkeypatch.setattr(sources, "_diploid_gt_text", lambda rec, n: None)
    calls = read([0, 1, 2, 3]), read([1, 3])
    for a, b in zip(text, calls):
        np.testing.assert_array_equal(a, b)
    nan = np.nan
    np.testing.assert_array_equal(text[0], [[1, 1, 1, 0, 1], [2, 0, 1, 2, 2], [nan, 0, 2, nan, 0], [0, nan, nan, 2, 1]])
