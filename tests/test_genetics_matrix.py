"""`brainmm.data.genetics.matrix`: genotype matrices (VCF / PLINK), train-only imputation and filters, polygenic scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stage_inputs import World, check_error, left_in, matrix, run

from brainmm.cli import main
from brainmm.data.genetics.config import GenotypeMatrixConfig
from brainmm.data.genetics.matrix import read_plink_dosages, read_variant_table, read_vcf_dosages, run_matrix
from brainmm.data.genetics.simulate import VcfRecord, write_vcf
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError

SAMPLES = [f"S{i}" for i in range(10)]
SPLIT = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
M = None  # missing call
# dosages per sample (S0..S9); train = S0..S5
V1 = [0, 1, 2, 1, M, 1, 0, M, 2, 1]      # common; one missing in train -> mode 1, mean 5/5 = 1.0
V2 = [0, 0, 0, 0, 0, 0, 1, 0, 2, 1]      # monomorphic in train (polymorphic only outside) -> dropped
V3 = [1, M, 0, M, 2, 0, 1, 1, 1, 1]      # 2/6 missing in train -> dropped with max_missing 0.2
V5 = [2, 2, 0, 2, 1, 0, 1, 0, M, M]      # missing only outside train -> filled with train mode 2 / mean 7/6
V4_GT = [(0, 1), (2, 2), (0, 0), (1, 2), (0, 2), (0, 0), (1, 1), (0, 0), (0, 0), (2, 0)]  # multi-allelic


def _gt(d):
    return None if d is None else ((0, 0), (0, 1), (1, 1))[d]


@pytest.fixture
def genotypes(tmp_path: Path) -> dict[str, Path]:
    records = [VcfRecord("1", 100, "A", ("G",), [_gt(d) for d in V1], phased=False, id="rs1"),
               VcfRecord("1", 200, "C", ("T",), [_gt(d) for d in V2], phased=False),
               VcfRecord("1", 300, "G", ("A",), [_gt(d) for d in V3], phased=False),
               VcfRecord("1", 400, "T", ("C", "G"), V4_GT, phased=False),
               VcfRecord("2", 50, "AT", ("A",), [_gt(d) for d in V5], phased=False, id="rs5")]
    vcf = write_vcf(tmp_path / "geno.vcf.gz", {"1": 1000, "2": 1000}, SAMPLES, records)
    split = tmp_path / "split.csv"
    pd.DataFrame({"subject_id": SAMPLES, "group": SAMPLES, "split": SPLIT}).to_csv(split, index=False)
    return {"vcf": vcf, "split": split, "tmp": tmp_path}


def _cfg(g: dict, **kw) -> GenotypeMatrixConfig:
    kw.setdefault("max_missing", 0.2)  # keeps V1 (1/6 missing in train), drops V3 (2/6)
    return GenotypeMatrixConfig(vcf=str(g["vcf"]), split=str(g["split"]), out=str(g["tmp"] / "out" / "geno"), **kw)


def test_vcf_dosages_split_multiallelic(genotypes: dict) -> None:
    dos = read_vcf_dosages(genotypes["vcf"])
    assert dos.variants["variant_id"].tolist() == ["1:100:A:G", "1:200:C:T", "1:300:G:A", "1:400:T:C", "1:400:T:G",
                                                   "2:50:AT:A"]
    assert dos.multiallelic_split == 1
    np.testing.assert_array_equal(dos.values[:, 3], [1, 0, 0, 1, 0, 0, 2, 0, 0, 0])
    np.testing.assert_array_equal(dos.values[:, 4], [0, 2, 0, 1, 1, 0, 0, 0, 0, 1])
    assert np.isnan(dos.values[4, 0]) and np.isnan(dos.values[8, 5])


@pytest.mark.parametrize("impute, v1_fill, v5_fill", [("mode", 1.0, 2.0), ("mean", 1.0, 7 / 6)])
def test_matrix_fits_on_train_only(genotypes: dict, impute: str, v1_fill: float, v5_fill: float) -> None:
    table = run_matrix(_cfg(genotypes, impute=impute))
    variants = read_variant_table(genotypes["tmp"] / "out" / "geno")
    # V2 (monomorphic in train) and V3 (33 % missing in train) are dropped although both look fine overall.
    assert variants["variant_id"].tolist() == ["1:100:A:G", "1:400:T:C", "1:400:T:G", "2:50:AT:A"]
    assert table.ids == SAMPLES and table.vectors.shape == (10, 4) and not np.isnan(table.vectors).any()
    assert table.vectors[4, 0] == pytest.approx(v1_fill) and table.vectors[7, 0] == pytest.approx(v1_fill)
    assert table.vectors[8, 3] == pytest.approx(v5_fill, rel=1e-6) and table.vectors[9, 3] == pytest.approx(v5_fill, rel=1e-6)
    assert variants["train_alt_freq"].iloc[0] == pytest.approx(5 / 10)  # from train calls only
    assert variants["rsid"].iloc[0] == "rs1" and variants["fill"].iloc[3] == pytest.approx(v5_fill, rel=1e-6)
    meta = table.meta
    assert meta["fitted_on"] == "train" and meta["n_train"] == 6 and meta["variants_in"] == 6
    assert meta["variants_kept"] == 4 and meta["calls_imputed"] == 4 and meta["impute"] == impute
    assert (genotypes["tmp"] / "out" / "geno.config.yaml").is_file()


def test_plink_bed_gives_the_vcf_matrix(genotypes: dict) -> None:
    from bed_reader import to_bed

    dos = read_vcf_dosages(genotypes["vcf"])
    v = dos.variants
    to_bed(genotypes["tmp"] / "geno.bed", dos.values, properties={
        "iid": SAMPLES, "fid": SAMPLES, "chromosome": v["contig"].tolist(), "bp_position": v["pos"].tolist(),
        "sid": [f"snp{i}" for i in range(len(v))], "allele_1": v["alt"].tolist(), "allele_2": v["ref"].tolist()})
    plink = read_plink_dosages(genotypes["tmp"] / "geno.bed")
    assert plink.samples == SAMPLES and plink.variants["variant_id"].tolist() == v["variant_id"].tolist()
    np.testing.assert_array_equal(np.isnan(plink.values), np.isnan(dos.values))
    np.testing.assert_array_equal(np.nan_to_num(plink.values), np.nan_to_num(dos.values))
    a = run_matrix(_cfg(genotypes))
    b = run_matrix(GenotypeMatrixConfig(bed=str(genotypes["tmp"] / "geno.bed"), split=str(genotypes["split"]),
                                        max_missing=0.2, out=str(genotypes["tmp"] / "out" / "plink")))
    np.testing.assert_array_equal(a.vectors, b.vectors)
    for ext in (".bed", ".bim"):
        (genotypes["tmp"] / f"partial{ext}").write_bytes((genotypes["tmp"] / f"geno{ext}").read_bytes())
    with pytest.raises(BrainmmError, match=r"partial\.bed: partial\.fam not found"):
        read_plink_dosages(genotypes["tmp"] / "partial.bed")


def test_polygenic_scores_table(genotypes: dict) -> None:
    weights = genotypes["tmp"] / "pgs.csv"
    weights.write_text("variant_id,effect_allele,score_a,score_b\nrs1,G,0.5,1\n1:400:T:G,T,2,0\n9:1:A:C,A,5,5\n")
    run_matrix(_cfg(genotypes, pgs_weights=str(weights)))
    pgs = EmbeddingTable.load(genotypes["tmp"] / "out" / "geno_pgs")
    v1 = np.array([0, 1, 2, 1, 1, 1, 0, 1, 2, 1], dtype=float)  # rs1 imputed with the train mode (1)
    v4g = np.array([0, 2, 0, 1, 1, 0, 0, 0, 0, 1], dtype=float)  # effect allele T is REF: 2 - dosage(G)
    np.testing.assert_allclose(pgs.vectors[:, 0], 0.5 * v1 + 2 * (2 - v4g))
    np.testing.assert_allclose(pgs.vectors[:, 1], v1)
    assert pgs.meta["scores"] == ["score_a", "score_b"] and pgs.meta["variants_used"] == 2
    weights.write_text("variant_id,effect_allele,s\nrs1,C,1\n")
    with pytest.raises(BrainmmError, match=r"effect allele 'C' of rs1 is neither REF 'A' nor ALT 'G'"):
        run_matrix(_cfg(genotypes, pgs_weights=str(weights)))


def test_samples_missing_from_split_error_or_drop(genotypes: dict) -> None:
    pd.DataFrame({"subject_id": SAMPLES[:8], "split": SPLIT[:8]}).to_csv(genotypes["split"], index=False)
    with pytest.raises(BrainmmError, match=r"2 of 10 samples of .*geno\.vcf\.gz are not in the split table"):
        run_matrix(_cfg(genotypes))
    table = run_matrix(_cfg(genotypes, drop_unmatched_samples=True))
    assert table.ids == SAMPLES[:8]
    cohort = genotypes["tmp"] / "cohort.csv"
    pd.DataFrame({"subject_id": [f"sub-{s}" for s in SAMPLES], "sample": SAMPLES}).to_csv(cohort, index=False)
    pd.DataFrame({"subject_id": [f"sub-{s}" for s in SAMPLES], "split": SPLIT}).to_csv(genotypes["split"], index=False)
    mapped = run_matrix(_cfg(genotypes, cohort=str(cohort), sample_column="sample"))
    assert mapped.ids[0] == "sub-S0" and mapped.meta["genotype_samples"][0] == "S0"


def test_no_variant_passing_filters_and_bad_config(genotypes: dict) -> None:
    with pytest.raises(BrainmmError, match=r"no variant passes min_maf=0.45 and max_missing=0.0 on the 6 training"):
        run_matrix(_cfg(genotypes, min_maf=0.45, max_missing=0.0))
    with pytest.raises(BrainmmError, match=r"'min_maf': expected 0..0.5"):
        _cfg(genotypes, min_maf=0.7).validate()
    with pytest.raises(BrainmmError, match=r"exactly one genotype source"):
        GenotypeMatrixConfig(split="x.csv").require_inputs()


def test_cli_matrix(genotypes: dict, capsys: pytest.CaptureFixture) -> None:
    out = genotypes["tmp"] / "cli" / "geno"
    assert main(["-q", "genetics", "matrix", "--vcf", str(genotypes["vcf"]), "--split", str(genotypes["split"]),
                 "--out", str(out), "--impute", "mean", "--set", "max_missing=0.4"]) == 0
    table = EmbeddingTable.load(out)
    assert table.meta["variants_kept"] == 5 and table.meta["impute"] == "mean"  # V3 kept at 33 % missingness
    assert main(["-q", "genetics", "matrix", "--vcf", str(genotypes["tmp"] / "nope.vcf.gz"),
                 "--split", str(genotypes["split"]), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("nope.vcf.gz: not found")


# ---- precomputed tables ------------------------------------------------------------------------------


# ---- real data: 1000 Genomes genotypes --------------------------------------------------------------


def test_real_1kg_matrix(sample_data_dir: Path, tmp_path: Path) -> None:
    from brainmm.data.genetics.sample import fetch_genetics_sample
    from brainmm.data.splits import make_split, save_split

    folder = fetch_genetics_sample(sample_data_dir)
    raw = read_vcf_dosages(folder / "1kg.chr2.vcf.gz")
    assert raw.values.shape == (629, 381) and 0.4 < np.isnan(raw.values).mean() < 0.5
    split = make_split(raw.samples, seed=0)
    save_split(split, tmp_path / "split.csv")
    table = run_matrix(GenotypeMatrixConfig(vcf=str(folder / "1kg.chr2.vcf.gz"), split=str(tmp_path / "split.csv"),
                                            out=str(tmp_path / "kg")))
    train = raw.values[np.isin(raw.samples, split.loc[split["split"] == "train", "subject_id"])]
    missing = np.isnan(train).mean(axis=0)
    af = np.nansum(train, axis=0) / np.maximum(2 * (~np.isnan(train)).sum(axis=0), 1)
    expected = (np.minimum(af, 1 - af) >= 0.01) & (missing <= 0.1)
    assert table.vectors.shape == (629, int(expected.sum())) and 50 < expected.sum() < 150
    assert not np.isnan(table.vectors).any() and set(np.unique(table.vectors)) <= {0.0, 1.0, 2.0}
    kept = read_variant_table(tmp_path / "kg")
    assert kept["variant_id"].tolist() == raw.variants["variant_id"][expected].tolist()
    assert kept["contig"].eq("2").all() and (kept["train_missing_rate"] <= 0.1).all()


@pytest.mark.parametrize("layout", ["C", "F"])
def test_train_statistics_match_a_column_by_column_reference(layout: str) -> None:
    """Frequencies, missingness and the mode/mean fill fitted on the training rows (fractional dosages, then hard
    calls) with missing calls (one column all missing, one with a tie between genotypes) agree with a plain
    per-column computation; missing calls are filled in place, on every row, and the others are left alone."""
    from brainmm.data.genetics.matrix import BlockImputer

    rng = np.random.default_rng(3)
    calls = rng.choice([0.0, 1.0, 2.0], size=(301, 300))
    is_train = rng.random(301) < 0.7
    is_train[:4] = True
    for hard, x in ((False, np.clip(calls + rng.uniform(-0.45, 0.45, size=calls.shape), 0, 2)), (True, calls)):
        x = x.astype(np.float32)
        x[rng.random(x.shape) < 0.05] = np.nan
        x[:, 7] = np.nan
        x[:, 8] = np.nan
        x[:4, 8] = [0.0, 0.0, 1.0, 1.0]  # a tie between 0 and 1: the first (0) wins
        x = np.asarray(x, order=layout)
        for impute in ("mode", "mean"):
            filled = x.copy(order="K")
            imputer = BlockImputer(is_train, impute, min_maf=0.05, max_missing=0.2)
            imputer(x[:, :5].copy(order="K"))  # a narrower block first: scratch buffers are reused
            stats = imputer(filled)
            assert stats.n_train == is_train.sum()
            np.testing.assert_array_equal(stats.n_missing, np.isnan(x).sum(axis=0))
            if hard:  # hard calls also come back as one byte each; a filled call as its fill, 3 if fractional
                code = np.where(np.isin(stats.fill, (0, 1, 2)), stats.fill, 3)
                np.testing.assert_array_equal(stats.calls, np.where(np.isnan(x), code, np.nan_to_num(x)).T)
            else:
                assert stats.calls is None
            for j in range(x.shape[1]):
                miss = np.isnan(x[:, j])
                np.testing.assert_array_equal(filled[~miss, j], x[~miss, j])
                np.testing.assert_array_equal(filled[miss, j], stats.fill[j])
                col = x[is_train, j][~miss[is_train]].astype(np.float64)
                assert stats.missing_rate[j] == pytest.approx(1 - len(col) / is_train.sum(), abs=1e-12)
                if not len(col):
                    assert np.isnan(stats.fill[j]) and not stats.keep[j]
                    continue
                p = col.sum() / (2 * len(col))
                assert stats.alt_freq[j] == pytest.approx(p, rel=1e-12)
                want = np.bincount(np.rint(col).astype(int), minlength=3).argmax() if impute == "mode" else 2 * p
                assert stats.fill[j] == pytest.approx(want, rel=1e-6)
                assert stats.keep[j] == (min(p, 1 - p) >= 0.05 and 1 - len(col) / is_train.sum() <= 0.2)
    beyond = calls.astype(np.float32)
    beyond[5, 10] = 3.0  # an integer that is no diploid dosage: the block stays float
    assert BlockImputer(is_train, "mean", 0.0, 1.0)(beyond).calls is None


def test_ragged_pgs_weights(tmp_path: Path) -> None:
    from brainmm.data.genetics.matrix import PolygenicScores
    from brainmm.errors import BrainmmError

    path = tmp_path / "pgs.tsv"
    path.write_text("variant_id\teffect_allele\tpgs1\n1:60:T:A\tA\t0.5\n1:90:G:C\tC\t0.1\t9\t9\n")
    with pytest.raises(BrainmmError, match=r"PGS weights .*pgs\.tsv: not a readable table \(Error tokenizing data\. "
                                           r"C error: Expected 3 fields in line 3, saw 5\)"):
        PolygenicScores(path, n_subjects=2)


def test_ragged_pgs_weights_via_the_cli(world: World, tmp_path: Path, capsys) -> None:
    pgs = tmp_path / "pgs.tsv"
    pgs.write_text("variant_id\teffect_allele\tpgs1\n1:60:T:A\tA\t0.5\n1:90:G:C\tC\t0.1\t9\t9\n")
    code, err = run(matrix(world, tmp_path / "out", None, f"pgs_weights={pgs}"), capsys)
    check_error(code, err, r"PGS weights .*pgs\.tsv: not a readable table \(Error tokenizing data\. C error: "
                           r"Expected 3 fields in line 3, saw 5\)")
    assert left_in(tmp_path / "out") == []
