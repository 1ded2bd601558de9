"""Vectorised k-mer tokenization (GENERator, Nucleotide Transformer) from a vocabulary file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from encoders.errors import EncoderInputError

# Byte -> base code: A, C, G, T = 0..3 (in that order), anything else (N) = 4.
_CODE = np.full(256, 4, dtype=np.int64)
for _i, _c in enumerate("ACGT"):
    _CODE[ord(_c)] = _i


def base_codes(seq: str) -> np.ndarray:
    """Codes 0..3 for A, C, G, T and 4 for N, one per base of an uppercase sequence."""
    return _CODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


def read_vocab_lines(path: Path) -> list[str]:
    """Tokens of a vocab.txt file, one per line, id = line number."""
    if not path.is_file():
        raise EncoderInputError(f"tokenizer: {path.parent} lacks {path.name}")
    return path.read_text(encoding="utf-8").splitlines()


class KmerVocab:
    """Maps k-mers and single bases to token ids of a vocabulary (any id order)."""

    def __init__(self, tokens: list[str], k: int, unknown_id: int, source: Path):
        self.k = k
        self.unknown_id = unknown_id
        self.powers = 4 ** np.arange(k - 1, -1, -1, dtype=np.int64)
        self.kmer_lut = np.full(4 ** k, unknown_id, dtype=np.int64)
        found = 0
        for i, token in enumerate(tokens):
            if len(token) == k and set(token) <= set("ACGT"):
                self.kmer_lut[int(base_codes(token) @ self.powers)] = i
                found += 1
        if found != 4 ** k:
            raise EncoderInputError(f"tokenizer: {source} has {found} of the {4 ** k} {k}-mers over ACGT; "
                                    f"expected a complete {k}-mer vocabulary")
        index = {t: i for i, t in enumerate(tokens)}
        self.single_lut = np.array([index.get(c, unknown_id) for c in "ACGTN"], dtype=np.int64)

    def kmers(self, codes: np.ndarray) -> np.ndarray:
        """Ids of consecutive non-overlapping k-mers (len(codes) % k == 0); k-mers with N -> unknown_id."""
        grid = codes.reshape(-1, self.k)
        ids = self.kmer_lut[np.minimum(grid, 3) @ self.powers]
        return np.where((grid < 4).all(axis=1), ids, self.unknown_id)

    def kmers_then_singles(self, codes: np.ndarray) -> np.ndarray:
        """Nucleotide-Transformer split: within each run of ACGT, k-mers from its start and the leftover
        bases one by one; every N is its own token."""
        acgt = codes < 4
        n = len(codes)
        if not acgt.any():
            return self.single_lut[codes]
        pos = np.arange(n)
        prev = np.concatenate([[False], acgt[:-1]])
        nxt = np.concatenate([acgt[1:], [False]])
        starts = np.flatnonzero(acgt & ~prev)
        ends = np.flatnonzero(acgt & ~nxt) + 1
        run = np.cumsum(acgt & ~prev) - 1
        run = np.clip(run, 0, None)
        in_run = pos - starts[run]
        covered = acgt & (in_run < ((ends - starts) // self.k * self.k)[run])
        kmer_start = covered & (in_run % self.k == 0)
        token_pos = np.flatnonzero(kmer_start | ~covered)
        ids = self.single_lut[codes[token_pos]]
        is_kmer = kmer_start[token_pos]
        if is_kmer.any():
            padded = np.concatenate([np.minimum(codes, 3), np.zeros(self.k - 1, dtype=np.int64)])
            windows = np.lib.stride_tricks.sliding_window_view(padded, self.k)[token_pos[is_kmer]]
            ids[is_kmer] = self.kmer_lut[windows @ self.powers]
        return ids
