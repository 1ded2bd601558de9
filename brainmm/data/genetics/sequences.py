"""DNA sequence checks shared by the genetics readers: upper-casing and the ACGTN alphabet."""

from __future__ import annotations

import re

from brainmm.errors import BrainmmError

ALPHABET = "ACGTN"
_NOT_ACGTN = re.compile(r"[^ACGTN]")
_IUPAC = set("RYSWKMBDHVU")


def normalise_sequence(seq: str, where: str) -> tuple[str, int]:
    """Upper-case `seq` (soft-masked bases count as ordinary bases) and check it is A/C/G/T/N only.

    Returns (sequence, number of lower-case bases). Other IUPAC codes or any other character raise a
    BrainmmError naming `where` and the first offending position (0-based within `seq`).
    """
    n_lower = sum(1 for c in seq if c.islower()) if not seq.isupper() else 0
    upper = seq.upper()
    bad = _NOT_ACGTN.search(upper)
    if bad is not None:
        char = bad.group()
        kind = "IUPAC ambiguity code" if char in _IUPAC else "character"
        raise BrainmmError(
            f"{where}: {kind} {char!r} at offset {bad.start()}; expected only A, C, G, T or N "
            "(replace ambiguity codes with N in the FASTA or drop the variant)"
        )
    return upper, n_lower
