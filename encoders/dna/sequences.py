"""DNA sequence utilities shared by all encoders: normalisation, reverse complement, tiling into windows."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from encoders.errors import EncoderInputError

ALPHABET = "ACGTN"
# IUPAC ambiguity codes other than N; with iupac="n" they become N, otherwise they are an error.
IUPAC_AMBIGUOUS = "RYKMSWBDHV"
IUPAC_POLICIES = ("error", "n")

_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
_TO_N = str.maketrans(IUPAC_AMBIGUOUS, "N" * len(IUPAC_AMBIGUOUS))
_INVALID = re.compile(f"[^{ALPHABET}]")


@dataclass
class SequenceReport:
    """Counts from one normalisation pass (soft-masked bases are lowercase in FASTA)."""

    n_sequences: int = 0
    n_bases: int = 0
    n_lowercase: int = 0
    n_ambiguous_to_n: int = 0
    n_n: int = 0


def normalize_sequences(sequences: Sequence[str], iupac: str = "error") -> tuple[list[str], SequenceReport]:
    """Uppercase and validate sequences (alphabet ACGTN); IUPAC codes raise or become N (`iupac="n"`)."""
    if isinstance(sequences, str | bytes) or not isinstance(sequences, Sequence):
        raise EncoderInputError(f"sequences: expected a list of strings, got {type(sequences).__name__}")
    if iupac not in IUPAC_POLICIES:
        raise EncoderInputError(f"iupac: expected one of {IUPAC_POLICIES}, got {iupac!r}")
    report = SequenceReport(n_sequences=len(sequences))
    out: list[str] = []
    for i, seq in enumerate(sequences):
        if not isinstance(seq, str):
            raise EncoderInputError(f"sequences[{i}]: expected str, got {type(seq).__name__}")
        if not seq:
            raise EncoderInputError(f"sequences[{i}]: empty sequence")
        upper = seq.upper()
        if upper != seq:
            report.n_lowercase += sum(map(seq.count, "acgtnrykmswbdhv"))
        bad = _INVALID.search(upper)
        if bad is not None and iupac == "n":
            before = len(upper) - sum(map(upper.count, ALPHABET))
            upper = upper.translate(_TO_N)
            report.n_ambiguous_to_n += before - (len(upper) - sum(map(upper.count, ALPHABET)))
            bad = _INVALID.search(upper)
        if bad is not None:
            char = bad.group()
            hint = (" (an IUPAC ambiguity code; pass iupac='n' to read it as N)"
                    if char in IUPAC_AMBIGUOUS else "")
            raise EncoderInputError(
                f"sequences[{i}]: character {char!r} at position {bad.start()} is not one of "
                f"{ALPHABET} (case-insensitive){hint}")
        report.n_bases += len(upper)
        report.n_n += upper.count("N")
        out.append(upper)
    return out, report


def reverse_complement(seq: str) -> str:
    """Reverse complement of an uppercase ACGTN sequence."""
    return seq.translate(_COMPLEMENT)[::-1]


def tile_windows(length: int, window: int | None, overlap: int = 0) -> list[tuple[int, int]]:
    """Half-open windows [start, end) of `window` bases covering [0, length).

    Consecutive windows overlap by at least `overlap` bases; the first starts at 0 and the last ends at
    `length`, so every window has the full length. Starts are placed evenly and mirror-symmetrically
    (the windows of the reverse complement are the reverse complements of the windows), which keeps
    reverse-complement averaging exact for tiled sequences. A sequence no longer than `window` (or
    `window=None`) is one window.
    """
    if window is None or length <= window:
        return [(0, length)]
    step = window - overlap
    span = length - window  # the last start
    n = math.ceil(span / step) + 1
    while True:
        if n % 2 == 1 and span % 2 == 1:  # an odd middle start cannot mirror onto itself
            n += 1
            continue
        half = [(i * span) // (n - 1) for i in range(n // 2)]
        middle = [span // 2] if n % 2 else []
        starts = half + middle + [span - s for s in reversed(half)]
        if max(b - a for a, b in zip(starts, starts[1:])) <= step:
            return [(s, s + window) for s in starts]
        n += 1
