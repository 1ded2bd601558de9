"""Variant selection before any genotype is read: an ID list, BED regions, an INFO-score threshold.

IDs are `contig:pos:ref:alt` (a genotype matrix's `.variants.tsv` works as the list) or rsids. A listed
`contig:pos:ref:alt` found with REF and ALT swapped is kept and its dosage flipped (2 - dosage), so a BGEN or
.pgen with the other allele order lines up with a VCF-derived variant set; the count goes to the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brainmm.errors import BrainmmError


@dataclass
class Selection:
    """Rows of the source's variant table to read, whether each is flipped, and what was dropped."""

    rows: np.ndarray
    flip: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


def read_id_list(path: str | Path) -> list[str]:
    """Variant ids from a text file (one per line) or a table with a `variant_id` (or `rsid`) column."""
    path = Path(path)
    if not path.is_file():
        raise BrainmmError(f"variant list {path}: not found (expected one variant id per line, or a table with a "
                           "variant_id column)")
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise BrainmmError(f"variant list {path}: not a text file ({err.reason} at byte {err.start}); expected one "
                           "variant id per line, or a table with a variant_id column") from None
    first = text.splitlines()[:1]
    if first and ("\t" in first[0] or "," in first[0]):
        table = pd.read_csv(path, sep="\t" if "\t" in first[0] else ",", dtype=str, keep_default_na=False)
        col = "variant_id" if "variant_id" in table else "rsid" if "rsid" in table else None
        if col is None:
            raise BrainmmError(f"variant list {path}: a table needs a 'variant_id' or 'rsid' column")
        ids = table[col].tolist()
    else:
        ids = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not ids:
        raise BrainmmError(f"variant list {path}: no variant ids")
    return ids


def _swapped(variant_id: str) -> str | None:
    parts = variant_id.split(":")
    return ":".join([parts[0], parts[1], parts[3], parts[2]]) if len(parts) == 4 else None


def select_variants(variants: pd.DataFrame, source: str, ids: str | None = None, regions: str | None = None,
                    min_info: float | None = None) -> Selection:
    """Rows of `variants` passing the ID list, the regions and the INFO threshold (all optional), in file order."""
    keep = np.ones(len(variants), dtype=bool)
    flip = np.zeros(len(variants), dtype=bool)
    counts = {"variants_in_file": int(len(variants))}
    if ids:
        wanted = read_id_list(ids)
        index = {v: i for i, v in enumerate(variants["variant_id"])}
        rsid = {r: i for i, r in enumerate(variants["rsid"]) if r and r != "."}
        listed = np.zeros(len(variants), dtype=bool)
        for v in wanted:
            i = index.get(v)
            if i is None and (sw := _swapped(v)) is not None and (i := index.get(sw)) is not None:
                flip[i] = True
            if i is None:
                i = rsid.get(v)
            if i is not None:
                listed[i] = True
        keep &= listed
        counts.update(variant_list=len(wanted), variant_list_found=int(listed.sum()), alleles_flipped=int(flip.sum()))
    if regions:
        from brainmm.data.genetics.regions import read_regions

        inside = np.zeros(len(variants), dtype=bool)
        pos0 = variants["pos"].to_numpy() - 1
        contig = variants["contig"].to_numpy()
        for r in read_regions(regions):
            inside |= (contig == r.contig) & (pos0 >= r.start) & (pos0 < r.end)
        keep &= inside
        counts["in_regions"] = int(inside.sum())
    if min_info is not None:
        info = variants["info"].to_numpy(dtype=float)
        if np.isnan(info).all():
            raise BrainmmError(f"min_info {min_info}: genotypes {source} carry no INFO score (an INFO, R2 or DR2 "
                               "field of the VCF/.pvar INFO column); drop min_info or filter with your imputation "
                               "server's info table and a variant list")
        passing = info >= min_info
        keep &= passing
        counts["info_passing"] = int(passing.sum())
    rows = np.flatnonzero(keep)
    if not rows.size:
        raise BrainmmError(f"genotypes {source}: no variant left after the selection ({counts})")
    counts["variants_selected"] = int(rows.size)
    return Selection(rows, flip[rows], counts)
