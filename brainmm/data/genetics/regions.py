"""Genomic regions (BED or a gene table) in a fixed, recorded order."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

from brainmm.errors import BrainmmError


@dataclass(frozen=True)
class Region:
    """One window of a contig: 0-based half-open [start, end), named, on + or - strand."""

    name: str
    contig: str
    start: int
    end: int
    strand: str = "+"

    @property
    def length(self) -> int:
        """Number of reference bases."""
        return self.end - self.start

    @property
    def locus(self) -> str:
        """1-based inclusive 'contig:start-end' (the samtools/bcftools region syntax)."""
        return f"{self.contig}:{self.start + 1}-{self.end}"

    def to_dict(self) -> dict[str, object]:
        """Plain dict for JSON metadata."""
        return {"name": self.name, "contig": self.contig, "start": self.start, "end": self.end,
                "strand": self.strand}


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def _int(value: str, path: Path, line: int, field: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise BrainmmError(f"regions file {path}, line {line}: {field} {value!r} is not an integer") from None


def _check(regions: list[Region], path: Path) -> list[Region]:
    if not regions:
        raise BrainmmError(f"regions file {path}: no regions found")
    seen: set[str] = set()
    for r in regions:
        if r.start < 0 or r.end <= r.start:
            raise BrainmmError(
                f"regions file {path}: region {r.name!r} ({r.contig} {r.start}-{r.end}) is empty or negative; "
                "expected start < end"
            )
        if r.strand not in ("+", "-"):
            raise BrainmmError(f"regions file {path}: region {r.name!r} has strand {r.strand!r}; expected + or -")
        if r.name in seen:
            raise BrainmmError(f"regions file {path}: region name {r.name!r} appears twice; names must be unique")
        seen.add(r.name)
    return regions


def read_bed(path: str | Path) -> list[Region]:
    """Regions from a BED file (0-based starts; columns chrom, start, end, [name], [score], [strand])."""
    path = Path(path)
    regions = []
    with _open_text(path) as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            cols = line.rstrip("\n\r").split("\t")
            if len(cols) < 3:
                raise BrainmmError(f"regions file {path}, line {i}: expected at least 3 tab-separated columns "
                                   "(chrom, start, end)")
            contig, start, end = cols[0], _int(cols[1], path, i, "start"), _int(cols[2], path, i, "end")
            name = cols[3] if len(cols) > 3 and cols[3] not in ("", ".") else f"{contig}:{start + 1}-{end}"
            strand = cols[5] if len(cols) > 5 and cols[5] != "." else "+"
            regions.append(Region(name, contig, start, end, strand))
    return _check(regions, path)


def read_gene_table(path: str | Path) -> list[Region]:
    """Regions from a CSV/TSV gene table with a header: name, contig (or chrom), start, end (1-based, inclusive)
    and optionally strand."""
    import pandas as pd

    path = Path(path)
    sep = "," if path.name.removesuffix(".gz").endswith(".csv") else "\t"
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise BrainmmError(f"regions file {path}: unreadable ({err.__class__.__name__}: {err})") from None
    table.columns = [c.strip().lower() for c in table.columns]
    if "chrom" in table and "contig" not in table:
        table = table.rename(columns={"chrom": "contig"})
    missing = [c for c in ("name", "contig", "start", "end") if c not in table]
    if missing:
        raise BrainmmError(f"regions file {path}: missing column(s) {missing}; expected name, contig (or chrom), "
                           "start, end (1-based inclusive) and optionally strand")
    regions = []
    for i, row in enumerate(table.itertuples(index=False), 2):
        start = _int(row.start, path, i, "start")
        end = _int(row.end, path, i, "end")
        strand = getattr(row, "strand", "+") or "+"
        regions.append(Region(row.name, row.contig, start - 1, end, "+" if strand == "." else strand))
    return _check(regions, path)


def read_regions(path: str | Path) -> list[Region]:
    """Regions from a BED file (.bed, .bed.gz) or a gene table (.csv, .tsv), in file order."""
    path = Path(path)
    if not path.is_file():
        raise BrainmmError(f"regions file {path}: not found (expected a BED file or a CSV/TSV gene table)")
    name = path.name.removesuffix(".gz")
    if name.endswith(".bed"):
        return read_bed(path)
    if name.endswith((".csv", ".tsv")):
        return read_gene_table(path)
    raise BrainmmError(f"regions file {path}: unknown format; expected .bed (0-based) or .csv/.tsv gene table "
                       "(columns name, contig, start, end; 1-based inclusive)")
