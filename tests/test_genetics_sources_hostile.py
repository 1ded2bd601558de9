"""Hostile genotype file sets (issue 29): files that disagree with each other (BGEN ids vs .sample, allele order vs
a .pvar/.bim) and damaged sidecar rows (.sample, .pvar, .psam, .bim), each refused with one line naming the file
and row, exit 2, no traceback, no output; docs/bad-inputs.md lists them."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from stage_inputs import check_error
from test_genetics_sources import SAMPLES, N, _plink2, _split, _truth, _write_bgen, _write_pgen

from brainmm.cli import main
from brainmm.data.genetics.config import GeneticPcaConfig, GenotypeMatrixConfig
from brainmm.data.genetics.matrix import run_matrix
from brainmm.data.genetics.pca import run_pca
from brainmm.data.genetics.sources import open_source


def _bgen(tmp: Path) -> Path:
    return _write_bgen(tmp / "g.bgen", _truth(5)[0])


def _pgen(tmp: Path) -> Path:
    return _write_pgen(tmp / "g.pgen", _truth(6)[1])


def _swapped_sample(tmp: Path) -> tuple[list[str], str]:
    path = _bgen(tmp)
    rows = path.with_suffix(".sample").read_text().splitlines()
    rows[3], rows[4] = rows[4], rows[3]  # samples 2 and 3
    path.with_suffix(".sample").write_text("\n".join(rows) + "\n")
    return ["--bgen", str(path)], r"g\.sample: sample 2 is 'S02' but g\.bgen stores 'S01'"


def _one_field_sample(tmp: Path) -> tuple[list[str], str]:
    path = _bgen(tmp)
    rows = path.with_suffix(".sample").read_text().splitlines()
    rows[5] = "S03"
    path.with_suffix(".sample").write_text("\n".join(rows) + "\n")
    return ["--bgen", str(path)], r"BGEN samples .*g\.sample: line 6 has 1 field\(s\), expected 3"


def _edit_pvar(tmp: Path, line: int, new: str) -> Path:
    path = _pgen(tmp)
    rows = path.with_suffix(".pvar").read_text().splitlines()
    rows[line - 1] = new
    path.with_suffix(".pvar").write_text("\n".join(rows) + "\n")
    return path


def _pvar_pos_text(tmp: Path) -> tuple[list[str], str]:
    path = _edit_pvar(tmp, 5, "1\t10x30\trs2\tA\tG")
    return ["--pgen", str(path)], r"g\.pvar: line 5: position '10x30' is not a positive integer"


def _pvar_short_row(tmp: Path) -> tuple[list[str], str]:
    path = _edit_pvar(tmp, 4, "1\t1020\trs1")
    return ["--pgen", str(path)], r"g\.pvar: line 4 has 3 tab-separated fields, expected 5"


def _pvar_empty_alt(tmp: Path) -> tuple[list[str], str]:
    path = _edit_pvar(tmp, 3, "1\t1000\trs0\tA\t ")
    return ["--pgen", str(path)], r"g\.pvar: line 3: empty ALT"


def _sidecar(kind: str, ext: str, text: str, match: str) -> Callable[[Path], tuple[list[str], str]]:
    """A case: a valid --pgen / --bgen with the file `ext` beside it replaced by `text`."""
    def case(tmp: Path) -> tuple[list[str], str]:
        path = (_bgen if kind == "bgen" else _pgen)(tmp)
        path.with_suffix(ext).write_text(text)
        return [f"--{kind}", str(path)], match

    return case


PSAM_SHORT = "#FID\tIID\tSEX\n" + "".join(f"F{i}\t{s}\t1\n" if i != 7 else f"F{i}\t{s}\n" for i, s in enumerate(SAMPLES))


def _csv_as_pgen(tmp: Path) -> tuple[list[str], str]:
    path = tmp / "table.csv"
    path.write_text("subject_id,x\nS00,1\n")
    return ["--pgen", str(path)], r"table\.csv: not a \.pgen file .*expected the binary \.pgen with \.pvar and \.psam"


def _csv_as_bed(tmp: Path) -> tuple[list[str], str]:
    path = tmp / "table.csv"
    path.write_text("subject_id,x\nS00,1\n")
    return ["--bed", str(path)], r"table\.csv: not a \.bed file .*\.bim and \.fam"


def _alt_first_bgen(tmp: Path) -> tuple[list[str], str]:
    path = _bgen(tmp)  # alleles A, G read REF A ALT G; the .pvar beside it says REF G ALT A
    rows = [f"1\t{1000 + 10 * j}\trs{j}\tG\tA" for j in range(12)]
    path.with_suffix(".pvar").write_text("#CHROM\tPOS\tID\tREF\tALT\n" + "\n".join(rows) + "\n")
    return ["--bgen", str(path)], (r"BGEN .*g\.bgen: alleles in the opposite order to .*g\.pvar in 12 of 12 .*"
                                   r"1:1000 read as REF A ALT G.*set bgen_ref \(--bgen-ref\) last")


def _bgen_ref_on_pgen(tmp: Path) -> tuple[list[str], str]:
    return ["--pgen", str(_pgen(tmp)), "--bgen-ref", "last"], r"config field 'bgen_ref': only for a BGEN source"


def _missing_sample_flag(tmp: Path) -> tuple[list[str], str]:
    (tmp / "dir.sample").mkdir()  # the BGEN stores ids too: a --sample that is not a file must not fall back to them
    return (["--bgen", str(_bgen(tmp)), "--sample", str(tmp / "dir.sample")],
            r"BGEN samples .*dir\.sample: not found or not a file \(expected the Oxford \.sample file of g\.bgen\)")


def _binary_variant_list(tmp: Path) -> tuple[list[str], str]:
    (tmp / "v.txt").write_bytes(b"\xff\xfe\x00garbage")
    return (["--pgen", str(_pgen(tmp)), "--variants", str(tmp / "v.txt")],
            r"variant list .*v\.txt: not a text file \(invalid start byte at byte 0\)")


CASES: dict[str, Callable[[Path], tuple[list[str], str]]] = {
    "--sample that is a folder": _missing_sample_flag,
    "binary --variants list": _binary_variant_list,
    "bgen sample rows swapped": _swapped_sample,
    ".sample row with one field": _one_field_sample,
    ".pvar POS not a number": _pvar_pos_text,
    ".pvar row with too few fields": _pvar_short_row,
    ".pvar empty ALT": _pvar_empty_alt,
    ".psam row with too few fields": _sidecar("pgen", ".psam", PSAM_SHORT,
                                              r"g\.psam: line 9 has 2 field\(s\), expected 3 fields \(FID IID SEX\)"),
    ".psam without samples": _sidecar("pgen", ".psam", "#IID\n", r"g\.psam: no samples"),
    ".csv given as --pgen": _csv_as_pgen,
    ".csv given as --bed": _csv_as_bed,
    "ALT-first BGEN beside its .pvar": _alt_first_bgen,
    ".bim POS not a number": _sidecar("bgen", ".bim", "1\trs0\t0\t1000\tG\tA\n1\trs1\t0\tabc\tG\tA\n",
                                      r"g\.bim: line 2: position 'abc' is not a positive integer"),
    ".bim row with too few fields": _sidecar("bgen", ".bim", "1\trs0\t0\t1000\tG\n",
                                             r"g\.bim: line 1 has 5 field\(s\), expected 6"),
    "--bgen-ref without a BGEN": _bgen_ref_on_pgen,
}


@pytest.mark.parametrize("command", ["matrix", "pca"])
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_genotype_files(case: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, match = CASES[case](tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    code = main(["-q", "genetics", command, *source, "--split", str(_split(tmp_path)), "--out", str(out / "t")])
    check_error(code, capsys.readouterr().err, match)
    assert [p.name for p in out.iterdir() if not p.name.endswith(".log")] == []


def test_embedded_ids_equal_to_the_sample_file_are_accepted(tmp_path: Path) -> None:
    src = open_source(bgen=str(_bgen(tmp_path)))
    assert src.samples == SAMPLES and src.allele_check is None


def test_bgen_ref_last_reads_an_alt_first_bgen(tmp_path: Path) -> None:
    probs, truth = _truth(7)
    path = _write_bgen(tmp_path / "g.bgen", probs)  # stored A, G; the data say REF G, ALT A
    rows = [f"1\t{1000 + 10 * j}\trs{j}\tG\tA" for j in range(12)]
    path.with_suffix(".pvar").write_text("#CHROM\tPOS\tID\tREF\tALT\n" + "\n".join(rows) + "\n")
    src = open_source(bgen=str(path), bgen_ref="last")
    assert src.variants["ref"].eq("G").all() and src.variants["alt"].eq("A").all()
    got = np.concatenate([v for _, v in src.blocks(np.arange(N), np.arange(12), 5)], axis=1)
    np.testing.assert_allclose(got, 2.0 - truth, atol=3 / 255 + 1e-6)  # the count of A = 2 - count of G
    assert src.allele_check == {"checked_against": str(path.with_suffix(".pvar")), "variants_compared": 12,
                                "same_order": 12, "swapped": 0}
    table = run_matrix(GenotypeMatrixConfig(bgen=str(path), bgen_ref="last", split=str(_split(tmp_path)),
                                            min_maf=0.0, out=str(tmp_path / "m")))
    assert table.meta["allele_order"]["same_order"] == 12 and table.meta["allele_order"]["ref_allele"] == "last"


def test_major_counted_allele_is_reported_with_its_evidence(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(8)
    probs = np.zeros((12, N, 3))
    probs[np.arange(12)[:, None], np.arange(N)[None, :], rng.choice(3, size=(12, N), p=[0.02, 0.1, 0.88])] = 1
    path = _write_bgen(tmp_path / "g.bgen", probs)  # the second allele has frequency ~0.93: ALT-first?
    with caplog.at_level(logging.WARNING, logger="brainmm"):
        table = run_matrix(GenotypeMatrixConfig(bgen=str(path), split=str(_split(tmp_path)), min_maf=0.0,
                                                out=str(tmp_path / "m")))
    order = table.meta["allele_order"]
    assert order["counted_major_share"] > 0.9 and order["median_counted_frequency"] > 0.85
    assert any("bgen_ref=last" in r.getMessage() and "g.bgen" in r.getMessage() for r in caplog.records)


def test_plink2_default_bgen_export_is_alt_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The oracle: plink2 --export bgen-1.2 (no modifier) writes ALT first, which the .pvar beside it exposes."""
    pgen = _pgen(tmp_path)
    subprocess.run([_plink2(), "--pfile", str(tmp_path / "g"), "--export", "bgen-1.2", "--out",
                    str(tmp_path / "x"), "--threads", "1", "--memory", "1000"], check=True, capture_output=True)
    shutil.copy(pgen.with_suffix(".pvar"), tmp_path / "x.pvar")
    capsys.readouterr()
    code = main(["-q", "genetics", "matrix", "--bgen", str(tmp_path / "x.bgen"), "--split", str(_split(tmp_path)),
                 "--out", str(tmp_path / "m")])
    check_error(code, capsys.readouterr().err, r"x\.bgen: alleles in the opposite order to .*x\.pvar")
    ok = open_source(bgen=str(tmp_path / "x.bgen"), bgen_ref="last")
    assert ok.allele_check["swapped"] == 0 and ok.allele_check["same_order"] == 12


def test_pca_says_how_many_split_subjects_lack_genotypes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import pandas as pd

    path = _pgen(tmp_path)
    split = _split(tmp_path, SAMPLES + ["X1", "X2", "X3"])
    with caplog.at_level(logging.WARNING, logger="brainmm"):
        table = run_pca(GeneticPcaConfig(pgen=str(path), split=str(split), n_pcs=2, min_maf=0.0,
                                         out=str(tmp_path / "pcs")))
    assert table.meta["split_subjects_without_genotypes"] == 3
    labels = pd.read_csv(split).set_index("subject_id").loc[["X1", "X2", "X3"], "split"].value_counts()
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "3 of 43 subjects of the split table have no genotypes" in text
    assert f"train {labels.get('train', 0)}, val {labels.get('val', 0)}, test {labels.get('test', 0)}" in text


@pytest.mark.parametrize(("cell", "shown"), [("abc", "'abc'"), ("", "'nan'"), ("inf", "'inf'")])
def test_pgs_weight_that_is_not_a_finite_number_names_the_row(cell: str, shown: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    weights = tmp_path / "w.tsv"
    weights.write_text(f"variant_id\teffect_allele\ts1\n1:1000:A:G\tG\t0.5\n1:1010:A:G\tG\t{cell}\n")
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    code = main(["-q", "genetics", "matrix", "--pgen", str(_pgen(tmp_path)), "--split", str(_split(tmp_path)),
                 "--out", str(out / "m"), "--pgs-weights", str(weights)])
    check_error(code, capsys.readouterr().err, rf"PGS weights .*w\.tsv: row 2 \(variant '1:1010:A:G'\), score column "
                                               rf"'s1': {shown} is not a finite number")
    assert [p.name for p in out.iterdir() if not p.name.endswith(".log")] == []


def test_balanced_frequencies_raise_no_allele_order_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="brainmm"):
        table = run_matrix(GenotypeMatrixConfig(bgen=str(_bgen(tmp_path)), split=str(_split(tmp_path)), min_maf=0.0,
                                                out=str(tmp_path / "m")))
    assert table.meta["allele_order"]["median_counted_frequency"] < 0.6
    assert not any("bgen_ref=last" in r.getMessage() for r in caplog.records)


def test_haplotype_reader_names_the_re_export_for_an_alt_first_bgen(tmp_path: Path) -> None:
    from brainmm.data.genetics.bgen_variants import BgenVariantSource
    from brainmm.errors import BrainmmError

    _alt_first_bgen(tmp_path)  # g.bgen with a .pvar beside it that lists the alleles the other way round
    with pytest.raises(BrainmmError, match=r"g\.bgen: alleles in the opposite order to .*g\.pvar .*which this reader "
                                           r"needs: re-export it with `plink2 --export bgen-1\.2 ref-first`"):
        BgenVariantSource(tmp_path / "g.bgen")
