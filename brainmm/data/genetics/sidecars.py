"""Text files beside genotype files (.pvar, .psam, .bim, Oxford .sample), read with row-level checks, and the
cross-checks between files that describe the same samples or variants: the sample ids stored in a BGEN against
its .sample, and a BGEN's allele order against a .pvar/.bim of the same variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainmm.errors import BrainmmError
from brainmm.runtime import LOG


def _fields(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of the non-blank lines of a text file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [(i, line.split()) for i, line in enumerate(fh, 1) if line.strip()]
    except OSError as err:
        raise BrainmmError(f"{path}: unreadable ({err.strerror or err})") from None


def _cut(value: str, width: int = 40) -> str:
    return value if len(value) <= width else value[:width] + "..."


def check_positions(values: pd.Series, lines: pd.Series, path: Path, what: str) -> None:
    """Every base-pair position a positive integer, else an error naming the file, line and value."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~((numbers > 0) & (numbers == np.floor(numbers)))  # NaN (not a number) is bad too
    bad = pd.Series(bad, index=values.index)
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise BrainmmError(f"{what} {path}: line {int(lines.iloc[i])}: position {_cut(str(values.iloc[i]))!r} is not "
                           "a positive integer (expected a base-pair position)")


def read_pvar(path: Path) -> pd.DataFrame:
    """A .pvar's #CHROM, POS, ID, REF, ALT (and INFO) columns; '##' meta lines skipped; rows checked."""
    if not path.is_file():
        raise BrainmmError(f"PLINK 2 genotypes: {path} not found (the .pvar beside the .pgen holds the variants)")
    skip = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.startswith("##"):
                header = line
                break
            skip += 1
        else:
            raise BrainmmError(f"PLINK 2 variants {path}: empty (expected a #CHROM POS ID REF ALT header)")
    if not header.startswith("#CHROM"):
        raise BrainmmError(f"PLINK 2 variants {path}: expected a '#CHROM POS ID REF ALT' header line, got "
                           f"{header[:60].strip()!r}")
    try:
        table = pd.read_csv(path, sep="\t", skiprows=skip, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise BrainmmError(f"PLINK 2 variants {path}: unreadable ({str(err).strip()})") from None
    table = table.rename(columns={"#CHROM": "CHROM"})
    missing = [c for c in ("CHROM", "POS", "ID", "REF", "ALT") if c not in table]
    if missing:
        raise BrainmmError(f"PLINK 2 variants {path}: missing column(s) {missing}")
    lines = pd.Series(range(skip + 2, skip + 2 + len(table)))
    required = ["CHROM", "POS", "ID", "REF", "ALT"]
    empty = (table[required].fillna("").apply(lambda c: c.str.strip()) == "").to_numpy()
    if empty.any():
        i, col = np.unravel_index(int(empty.argmax()), empty.shape)
        line = int(lines.iloc[i])
        n = len(_line(path, line).rstrip("\r\n").split("\t"))
        if n < table.shape[1]:
            raise BrainmmError(f"PLINK 2 variants {path}: line {line} has {n} tab-separated fields, expected "
                               f"{table.shape[1]} ({' '.join(map(str, table.columns))})")
        raise BrainmmError(f"PLINK 2 variants {path}: line {line}: empty {required[col]} (expected a value; an "
                           "allele may be '.' for none)")
    check_positions(table["POS"], lines, path, "PLINK 2 variants")
    return table


def _line(path: Path, number: int) -> str:
    """Line `number` (1-based) of a text file."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, 1):
            if i == number:
                return line
    return ""


def read_psam(path: Path) -> list[str]:
    """IIDs of a .psam (header #FID/#IID) or .fam-style file (FID IID ...); every row checked."""
    if not path.is_file():
        raise BrainmmError(f"PLINK 2 genotypes: {path} not found (the .psam beside the .pgen holds the samples)")
    rows = _fields(path)
    if rows and rows[0][1][0].startswith("#"):
        cols = " ".join(rows[0][1])[1:].split()
        if "IID" not in cols:
            raise BrainmmError(f"PLINK 2 samples {path}: header {' '.join(rows[0][1])!r} has no IID column")
        i, need, rows = cols.index("IID"), len(cols), rows[1:]
        expected = f"{need} fields ({' '.join(cols)})"
    else:
        i, need, expected = 1, 2, "at least 2 fields (FID IID ...) as in a .fam"
    for line, fields in rows:
        if len(fields) < need:
            raise BrainmmError(f"PLINK 2 samples {path}: line {line} has {len(fields)} field(s), expected {expected}")
    if not rows:
        raise BrainmmError(f"PLINK 2 samples {path}: no samples (expected one line per sample)")
    return [fields[i] for _, fields in rows]


def read_oxford_sample(path: Path) -> list[str]:
    """Sample ids (column ID_2, else the first column) of an Oxford .sample file (two header lines)."""
    rows = _fields(path)
    if len(rows) < 2 or not rows[1][1] or rows[1][1][0] != "0":
        raise BrainmmError(f"BGEN samples {path}: not an Oxford .sample file (expected a header line and a "
                           "'0 0 ...' type line, then one line per sample)")
    header = rows[0][1]
    col = header.index("ID_2") if "ID_2" in header else 0
    for line, fields in rows[2:]:
        if len(fields) != len(header):
            raise BrainmmError(f"BGEN samples {path}: line {line} has {len(fields)} field(s), expected "
                               f"{len(header)} ({' '.join(header)})")
    return [fields[col] for _, fields in rows[2:]]


def check_embedded_ids(bgen: Path, sample: Path, embedded: list[str], samples: list[str]) -> None:
    """The sample ids stored inside a BGEN must equal its .sample file's, row by row."""
    for row, (inside, outside) in enumerate(zip(embedded, samples), 1):
        if inside != outside:
            raise BrainmmError(f"BGEN samples {sample}: sample {row} is {_cut(outside)!r} but {bgen.name} stores "
                               f"{_cut(inside)!r} for it; the .sample rows must be in the BGEN's sample order "
                               "(fix the .sample file, or drop it to use the ids stored in the BGEN)")


def read_bim(path: Path) -> pd.DataFrame:
    """A PLINK 1 .bim as CHROM, POS, REF (allele 2), ALT (allele 1); rows checked."""
    rows = _fields(path)
    for line, fields in rows:
        if len(fields) != 6:
            raise BrainmmError(f"PLINK variants {path}: line {line} has {len(fields)} field(s), expected 6 "
                               "(chrom id cM pos allele1 allele2)")
    table = pd.DataFrame([[f[0], f[3], f[5], f[4]] for _, f in rows], columns=["CHROM", "POS", "REF", "ALT"])
    check_positions(table["POS"], pd.Series([line for line, _ in rows]), path, "PLINK variants")
    return table


def allele_reference(path: Path) -> Path | None:
    """A .pvar or .bim with the BGEN's stem beside it (the variants of the same data in PLINK form), if any."""
    for ext in (".pvar", ".bim"):
        other = path.with_suffix(ext)
        if other.is_file():
            return other
    return None


CHECK_VARIANTS = 100_000  # the allele-order check compares the BGEN's first variants (evidence, not a full pass)


def check_allele_order(variants: pd.DataFrame, bgen: Path, reference: Path, option: str | None) -> dict:
    """Compare the BGEN's REF/ALT (as read) with `reference` (.pvar/.bim) at shared positions.

    Mostly swapped is an error naming both files, the first swapped variant and `option` (None: the reader
    needs REF first, so the fix is a re-export); a few swapped variants
    are a warning. Returns the evidence (variants compared, same order, swapped)."""
    table = read_pvar(reference) if reference.suffix == ".pvar" else read_bim(reference)
    mine = variants.head(CHECK_VARIANTS)[["contig", "pos", "ref", "alt"]].reset_index(drop=True)
    theirs = pd.DataFrame({"contig": table["CHROM"].astype(str), "pos": pd.to_numeric(table["POS"]).astype(np.int64),
                           "REF": table["REF"].str.upper(), "ALT": table["ALT"].str.upper().str.split(",")})
    theirs = theirs[theirs["pos"].isin(set(mine["pos"]))].explode("ALT")
    pairs = mine.reset_index().merge(theirs, on=["contig", "pos"])
    ref, alt = pairs["ref"].str.upper(), pairs["alt"].str.upper()
    flags = pairs.assign(same=(ref == pairs["REF"]) & (alt == pairs["ALT"]),
                         swapped=(ref == pairs["ALT"]) & (alt == pairs["REF"]))
    per_variant = flags.groupby("index")[["same", "swapped"]].any()  # one verdict per BGEN variant
    same = int(per_variant["same"].sum())
    flipped = per_variant["swapped"] & ~per_variant["same"]
    swapped = int(flipped.sum())
    first = None
    if swapped:
        row = mine.loc[flipped.index[flipped.to_numpy().argmax()]]
        first = (f"{row.contig}:{row.pos} read as REF {row.ref} ALT {row.alt}, {reference.name} has REF {row.alt} "
                 f"ALT {row.ref}")
    evidence = {"checked_against": str(reference), "variants_compared": same + swapped, "same_order": same,
                "swapped": swapped}
    if swapped > same:
        raise BrainmmError(f"BGEN {bgen}: alleles in the opposite order to {reference} in {swapped} of {same + swapped} "
                           f"shared variants (e.g. {first}); plink2 writes BGEN ALT-first unless exported with "
                           + (f"'ref-first': set {option} last if the BGEN lists ALT first (or re-export it)"
                              if option else "'ref-first', which this reader needs: re-export it with "
                              "`plink2 --export bgen-1.2 ref-first`"))
    if swapped:
        LOG.warning("BGEN %s: %d of %d variants shared with %s have REF and ALT swapped (e.g. %s); those count "
                    "the other allele", bgen, swapped, same + swapped, reference, first)
    return evidence
