"""Personal haplotypes from VCF + FASTA + regions: bcftools-consensus oracle, policies and bad input."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pysam
import pytest

from brainmm.cli import main
from brainmm.data.genetics.config import SequenceInputs
from brainmm.data.genetics.embed import make_plan
from brainmm.data.genetics.haplotypes import apply_variants, build_plan
from brainmm.data.genetics.reference import Reference
from brainmm.data.genetics.regions import Region, read_regions
from brainmm.data.genetics.simulate import VcfRecord, random_sequence, write_fasta, write_vcf
from brainmm.data.genetics.variants import VariantSource
from brainmm.errors import BrainmmError

SAMPLES = ["A", "B", "C"]


def bcftools_haplotype(tmp: Path, locus: str, ref_seq: str, vcf: Path, sample: str, hap: int) -> str:
    """The oracle: `bcftools consensus -s SAMPLE -H HAP` (pysam's bundled bcftools) on a region FASTA."""
    from pysam import bcftools

    region_fa, out = tmp / "oracle_region.fa", tmp / "oracle_out.fa"
    region_fa.write_text(f">{locus}\n{ref_seq}\n")
    bcftools.consensus("-f", str(region_fa), "-s", sample, "-H", str(hap), "-o", str(out), str(vcf),
                       catch_stdout=False)
    return "".join(out.read_text().splitlines()[1:])


def _alt(base: str, k: int = 0) -> str:
    return [b for b in "ACGT" if b != base][k]


@pytest.fixture
def world(tmp_path: Path) -> dict:
    """400 bp contig c1 and a phased VCF with SNVs, an insertion, deletions, an overlap, a multi-allelic
    site, a missing call, and a deletion crossing the end of region r1 (ends at 150)."""
    g = random_sequence(400, np.random.default_rng(1))
    fasta = write_fasta(tmp_path / "ref.fa", {"c1": g})

    def rec(pos: int, ref_len: int, alts: tuple[str, ...], gts: list) -> VcfRecord:
        return VcfRecord("c1", pos, g[pos - 1: pos - 1 + ref_len], alts, gts)

    records = [
        rec(20, 1, (_alt(g[19]),), [(0, 1), (1, 1), (0, 0)]),
        rec(30, 1, (g[29] + "GGA",), [(1, 0), (0, 1), (1, 1)]),                    # insertion
        rec(50, 5, (g[49],), [(1, 1), (0, 1), (0, 0)]),                            # 4 bp deletion
        rec(52, 1, (_alt(g[51]),), [(1, 0), (1, 1), (0, 1)]),                      # inside that deletion
        rec(80, 1, (_alt(g[79], 0), _alt(g[79], 1)), [(2, 1), (0, 2), (1, 0)]),    # multi-allelic
        rec(100, 1, (_alt(g[99]),), [None, (1, 0), (0, 1)]),                       # missing call
        rec(148, 5, (g[147],), [(1, 0), (0, 0), (0, 1)]),                          # crosses r1's end
        rec(200, 1, (g[199] + "TT",), [(0, 1), (1, 1), (1, 0)]),
        rec(230, 3, (g[229],), [(0, 1), (0, 0), (1, 1)]),
    ]
    vcf = write_vcf(tmp_path / "cohort.vcf.gz", {"c1": 400}, SAMPLES, records)
    return {"g": g, "fasta": fasta, "vcf": vcf, "tmp": tmp_path}


def _plan(world: dict, regions: list[Region], **kw):
    ref, vcf = Reference(world["fasta"]), VariantSource(world["vcf"], kw.pop("aliases", None))
    samples = kw.pop("samples", SAMPLES)
    return build_plan(vcf, ref, regions, samples, samples, **kw)


def test_haplotypes_match_bcftools_consensus(world: dict) -> None:
    regions = [Region("left", "c1", 10, 140), Region("right", "c1", 160, 260), Region("all", "c1", 0, 400)]
    plan = _plan(world, regions)
    for r in plan.regions:
        for s, sample in enumerate(SAMPLES):
            for h in (1, 2):
                expected = bcftools_haplotype(world["tmp"], r.region.locus, world["g"][r.region.start: r.region.end],
                                              world["vcf"], sample, h)
                assert r.sequences[r.index[s, h - 1]] == expected, (r.region.name, sample, h)
    stats = plan.stats()
    assert stats["vcf_multiallelic"] == 2  # counted once per region holding it (left, all)
    assert stats["vcf_missing_alleles"] == 4  # sample A's ./. at pos 100, in 'left' and 'all'
    assert stats["overlapping_variants_skipped"] > 0
    assert stats["requested_sequences"] == 2 * 3 * 3


def test_variant_crossing_region_boundary_is_skipped_and_counted(world: dict) -> None:
    plan = _plan(world, [Region("r1", "c1", 140, 150)])
    r = plan.regions[0]
    assert r.sequences == [world["g"][140:150]]  # the deletion at 148 (5 bp) is not applied
    assert plan.counts.crossing_region_boundary == 1


def test_apply_variants_and_minus_strand(world: dict) -> None:
    seq, skipped = apply_variants("ACGTACGT", 100, [(101, "C", "CTT"), (102, "G", "A"), (102, "GT", "G")])
    assert (seq, skipped) == ("ACTTATACGT", 1)
    plus = _plan(world, [Region("p", "c1", 160, 260, "+")]).regions[0]
    minus = _plan(world, [Region("m", "c1", 160, 260, "-")]).regions[0]
    comp = str.maketrans("ACGTN", "TGCAN")
    assert [s.translate(comp)[::-1] for s in plus.sequences] == minus.sequences
    assert minus.reference == world["g"][160:260].translate(comp)[::-1]


def test_identical_haplotypes_are_shared(world: dict) -> None:
    r = _plan(world, [Region("right", "c1", 160, 260)]).regions[0]
    # right region: pos 200 ins (A 0|1, B 1|1, C 1|0) and pos 230 del (A 0|1, B 0|0, C 1|1)
    assert len(r.sequences) == 4 and r.index.max() == 3
    assert r.index[1, 0] == r.index[1, 1] and r.index[0, 1] == r.index[2, 0]  # B hom; A hap2 = C hap1
    np.testing.assert_allclose(np.asarray(r.weights.sum(axis=1)).ravel(), 1.0)


def test_unphased_policy(tmp_path: Path) -> None:
    g = random_sequence(200, np.random.default_rng(2))
    fasta = write_fasta(tmp_path / "ref.fa", {"c1": g})
    recs = [VcfRecord("c1", p, g[p - 1], (_alt(g[p - 1]),), gts, phased=False)
            for p, gts in ((30, [(0, 1), (0, 1)]), (90, [(0, 1), (0, 0)]))]
    vcf = write_vcf(tmp_path / "unphased.vcf.gz", {"c1": 200}, ["X", "Y"], recs)
    region = [Region("r", "c1", 0, 200)]
    with pytest.raises(BrainmmError, match=r"sample 'X' has 2 heterozygous calls .* unphased .*variant_deltas"):
        build_plan(VariantSource(vcf), Reference(fasta), region, ["X", "Y"], ["X", "Y"])
    # Y has a single het: its haplotypes do not depend on phase.
    y = build_plan(VariantSource(vcf), Reference(fasta), region, ["Y"], ["Y"]).regions[0]
    assert sorted(y.sequences) == sorted([g, apply_variants(g, 0, [(29, g[29], _alt(g[29]))])[0]])
    deltas = build_plan(VariantSource(vcf), Reference(fasta), region, ["X", "Y"], ["X", "Y"], mode="variant_deltas")
    w = deltas.regions[0].weights.toarray()
    assert deltas.regions[0].sequences[0] == apply_variants(g, 0, [(29, g[29], _alt(g[29]))])[0]
    np.testing.assert_allclose(w, [[0.5, 0.5], [0.5, 0.0]])


def test_gene_table_equals_bed(tmp_path: Path) -> None:
    (tmp_path / "r.bed").write_text("c1\t10\t140\tgeneA\t0\t-\nc1\t160\t260\n")
    (tmp_path / "r.tsv").write_text("name\tcontig\tstart\tend\tstrand\ngeneA\tc1\t11\t140\t-\nc1:161-260\tc1\t161\t260\t+\n")
    assert read_regions(tmp_path / "r.bed") == read_regions(tmp_path / "r.tsv")
    assert read_regions(tmp_path / "r.bed")[1].name == "c1:161-260"


# ---- bad input -----------------------------------------------------------------------------------------


def test_soft_masked_reference_is_normalised_and_counted(tmp_path: Path) -> None:
    g = random_sequence(100, np.random.default_rng(3))
    fasta = write_fasta(tmp_path / "ref.fa", {"c1": g[:40] + g[40:60].lower() + g[60:]})
    vcf = write_vcf(tmp_path / "v.vcf.gz", {"c1": 100}, ["A"], [VcfRecord("c1", 50, g[49].lower(), ("T",), [(1, 1)])])
    plan = build_plan(VariantSource(vcf), Reference(fasta), [Region("r", "c1", 0, 100)], ["A"], ["A"])
    assert plan.lowercase_reference_bases == 20 and plan.counts.lowercase_alleles == 1
    assert plan.regions[0].reference == g and plan.regions[0].sequences == [g[:49] + "T" + g[50:]]


def test_iupac_codes_raise(tmp_path: Path) -> None:
    g = random_sequence(100, np.random.default_rng(4))
    fasta = write_fasta(tmp_path / "ref.fa", {"c1": g[:70] + "R" + g[71:]})
    vcf = write_vcf(tmp_path / "v.vcf.gz", {"c1": 100}, ["A"], [VcfRecord("c1", 10, g[9], ("Y",), [(1, 1)])])
    with pytest.raises(BrainmmError, match=r"ref\.fa, c1:61-80: IUPAC ambiguity code 'R'"):
        build_plan(VariantSource(vcf), Reference(fasta), [Region("r", "c1", 60, 80)], ["A"], ["A"])
    with pytest.raises(BrainmmError, match=r"ALT allele 'Y' of c1:10 .*IUPAC"):
        build_plan(VariantSource(vcf), Reference(fasta), [Region("r", "c1", 0, 50)], ["A"], ["A"])


def test_empty_region_raises(tmp_path: Path) -> None:
    (tmp_path / "r.bed").write_text("c1\t10\t10\tempty\n")
    with pytest.raises(BrainmmError, match=r"r\.bed: region 'empty' .* is empty"):
        read_regions(tmp_path / "r.bed")


def test_contig_name_mismatch_and_alias(tmp_path: Path) -> None:
    g = random_sequence(100, np.random.default_rng(5))
    fasta = write_fasta(tmp_path / "ref.fa", {"20": g})
    vcf = write_vcf(tmp_path / "v.vcf.gz", {"chr20": 100}, ["A"], [VcfRecord("chr20", 10, g[9], ("N",), [(0, 1)])])
    region = [Region("r", "20", 0, 100)]
    with pytest.raises(BrainmmError, match=r"contig '20' .* not in VCF .*v\.vcf\.gz.* alias 20=chr20"):
        build_plan(VariantSource(vcf), Reference(fasta), region, ["A"], ["A"])
    plan = build_plan(VariantSource(vcf, {"20": "chr20"}), Reference(fasta), region, ["A"], ["A"])
    assert g[:9] + "N" + g[10:] in plan.regions[0].sequences


def test_ref_mismatch_names_variant_and_file(world: dict) -> None:
    g = world["g"]
    bad = write_vcf(world["tmp"] / "bad.vcf.gz", {"c1": 400}, ["A"],
                    [VcfRecord("c1", 60, _alt(g[59]), (g[59],), [(0, 1)])])
    with pytest.raises(BrainmmError, match=rf"bad\.vcf\.gz: REF allele of c1:60 {_alt(g[59])}/{g[59]} does not match"):
        build_plan(VariantSource(bad), Reference(world["fasta"]), [Region("r", "c1", 0, 100)], ["A"], ["A"])


def test_empty_vcf_and_unknown_sample(world: dict) -> None:
    empty = write_vcf(world["tmp"] / "empty.vcf.gz", {"c1": 400}, ["A"], [])
    with pytest.raises(BrainmmError, match=r"empty\.vcf\.gz: no variant records"):
        VariantSource(empty)
    no_samples = write_vcf(world["tmp"] / "nos.vcf.gz", {"c1": 400}, [], [VcfRecord("c1", 5, world["g"][4], ("N",), [])])
    with pytest.raises(BrainmmError, match=r"nos\.vcf\.gz: no samples"):
        VariantSource(no_samples)
    with pytest.raises(BrainmmError, match=r"unknown sample\(s\) \['Z'\]"):
        _plan(world, [Region("r", "c1", 0, 100)], samples=["A", "Z"])


def test_cohort_mapping_missing_ids_and_drop(world: dict, caplog: pytest.LogCaptureFixture) -> None:
    cohort = world["tmp"] / "cohort.csv"
    cohort.write_text("subject_id,vcf_id\nsub-1,A\nsub-2,B\nsub-9,\n")
    (world["tmp"] / "r.bed").write_text("c1\t160\t260\tright\n")
    inputs = SequenceInputs(vcf=str(world["vcf"]), fasta=str(world["fasta"]), regions=str(world["tmp"] / "r.bed"),
                            cohort=str(cohort), sample_column="vcf_id")
    with pytest.raises(BrainmmError, match=r"1 of 3 samples of .*cohort\.vcf\.gz are not in the cohort table \(e\.g\. C\)"):
        make_plan(inputs, "haplotypes")
    inputs.drop_unmatched_samples = True
    with caplog.at_level(logging.WARNING, logger="brainmm"):
        plan = make_plan(inputs, "haplotypes")
    assert plan.subjects == ["sub-1", "sub-2"] and plan.samples == ["A", "B"]
    assert "dropping 1 of 3 samples" in caplog.text
    cohort.write_text("subject_id,vcf_id\nsub-1,A\nsub-2,A\n")
    with pytest.raises(BrainmmError, match=r"cohort\.csv: genotype sample id column 'vcf_id' repeats a sample"):
        make_plan(inputs, "haplotypes")


def test_fasta_index_built_or_clear_error(tmp_path: Path, world: dict) -> None:
    g = world["g"]
    plain = tmp_path / "noindex.fa"
    plain.write_text(f">c1\n{g}\n")
    assert Reference(plain).fetch("c1", 0, 10) == g[:10] and Path(f"{plain}.fai").is_file()
    gz = tmp_path / "plain.fa.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(f">c1\n{g}\n")
    with pytest.raises(BrainmmError, match=r"plain\.fa\.gz: gzip-compressed but not bgzip"):
        Reference(gz)
    bgz = tmp_path / "bgz.fa.gz"
    pysam.tabix_compress(str(plain), str(bgz))
    assert Reference(bgz).fetch("c1", 5, 9) == g[5:9] and Path(f"{bgz}.gzi").is_file()


def test_vcf_must_be_bgzipped_index_is_built(world: dict) -> None:
    text = world["tmp"] / "plain.vcf"
    with gzip.open(world["vcf"], "rt") as fh:
        text.write_text(fh.read())
    with pytest.raises(BrainmmError, match=r"plain\.vcf: plain text; .*bgzip"):
        VariantSource(text)
    with gzip.open(world["tmp"] / "gz.vcf.gz", "wt") as fh:
        fh.write(text.read_text())
    with pytest.raises(BrainmmError, match=r"gz\.vcf\.gz: gzip-compressed but not bgzip"):
        VariantSource(world["tmp"] / "gz.vcf.gz")
    Path(f"{world['vcf']}.tbi").unlink()
    assert VariantSource(world["vcf"]).samples == SAMPLES and Path(f"{world['vcf']}.tbi").is_file()


def test_cli_haplotypes_fasta_and_one_line_errors(world: dict, capsys: pytest.CaptureFixture) -> None:
    (world["tmp"] / "r.bed").write_text("c1\t160\t260\tright\n")
    out = world["tmp"] / "haps.fa"
    args = ["genetics", "haplotypes", "--vcf", str(world["vcf"]), "--fasta", str(world["fasta"]),
            "--regions", str(world["tmp"] / "r.bed")]
    assert main([*args, "--samples", "B", "--out", str(out)]) == 0
    records = out.read_text().splitlines()
    assert records[0] == ">B|right|hap1" and records[2] == ">B|right|hap2" and len(records) == 4
    assert records[1] == bcftools_haplotype(world["tmp"], "c1:161-260", world["g"][160:260], world["vcf"], "B", 1)
    capsys.readouterr()
    assert main(["-q", *args, "--samples", "Q", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("brainmm: error: --samples: unknown subject id(s) ['Q']") and "\n" not in err


# ---- real reference: human chr20 (GRCh37) from the genetics sample ------------------------------------


def test_real_chr20_haplotypes_match_bcftools(sample_data_dir: Path, tmp_path: Path) -> None:
    from brainmm.data.genetics.sample import fetch_genetics_sample

    folder = fetch_genetics_sample(sample_data_dir)
    fasta = folder / "20.fa.gz"
    ref = Reference(fasta)
    assert ref.contigs == {"20": 63_025_520}
    regions = [Region("w1", "20", 1_000_000, 1_000_600), Region("w2", "20", 30_000_000, 30_000_480, "-"),
               Region("w3", "20", 45_000_000, 45_000_900)]
    rng = np.random.default_rng(7)
    samples = ["NA1", "NA2", "NA3", "NA4"]
    records = []
    for r in regions:
        seq = ref.fetch("20", r.start, r.end)
        assert set(seq) <= set("ACGT")
        for off, kind in ((40, "snv"), (120, "ins"), (260, "del"), (380, "snv"), (430, "del")):
            pos0 = r.start + off
            base = seq[off]
            ref_a, alt = {"snv": (base, _alt(base)), "ins": (base, base + "CAG"), "del": (seq[off: off + 4], base)}[kind]
            gts = [tuple(int(x) for x in rng.integers(0, 2, size=2)) for _ in samples]
            records.append(VcfRecord("20", pos0 + 1, ref_a, (alt,), gts))
    vcf = write_vcf(tmp_path / "chr20.vcf.gz", {"20": 63_025_520}, samples, records)
    plan = build_plan(VariantSource(vcf), ref, regions, samples, samples)
    assert plan.counts.records == 15 and plan.counts.crossing_region_boundary == 0
    for r in plan.regions:
        window = ref.fetch("20", r.region.start, r.region.end)
        for s, sample in enumerate(samples):
            for h in (1, 2):
                expected = bcftools_haplotype(tmp_path, r.region.locus, window, vcf, sample, h)
                if r.region.strand == "-":
                    expected = expected.translate(str.maketrans("ACGT", "TGCA"))[::-1]
                assert r.sequences[r.index[s, h - 1]] == expected
    # A wrong genome build shows up as a REF mismatch naming the variant and the file.
    off = 50
    base = ref.fetch("20", 1_000_000 + off, 1_000_000 + off + 1)
    bad = write_vcf(tmp_path / "wrongbuild.vcf.gz", {"20": 63_025_520}, ["NA1"],
                    [VcfRecord("20", 1_000_000 + off + 1, _alt(base), (base,), [(0, 1)])])
    with pytest.raises(BrainmmError, match=rf"wrongbuild\.vcf\.gz: REF allele of 20:{1_000_000 + off + 1} "):
        build_plan(VariantSource(bad), ref, regions[:1], ["NA1"], ["NA1"])
