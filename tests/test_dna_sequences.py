"""DNA sequence utilities: normalisation, reverse complement, tiling, k-mer tokenization."""

from __future__ import annotations

import itertools
import random
import re

import numpy as np
import pytest

from encoders.dna.kmers import KmerVocab, base_codes
from encoders.dna.sequences import normalize_sequences, reverse_complement, tile_windows
from encoders.errors import EncoderInputError


def random_dna(rng: random.Random, n: int, alphabet: str = "ACGT") -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_normalize_uppercases_and_counts_soft_masked_bases():
    seqs, report = normalize_sequences(["acgTN", "GGcc"])
    assert seqs == ["ACGTN", "GGCC"]
    assert (report.n_sequences, report.n_bases, report.n_lowercase, report.n_n) == (2, 9, 5, 1)


def test_normalize_iupac_policy():
    with pytest.raises(EncoderInputError, match=r"sequences\[1\].*'R' at position 2.*iupac='n'"):
        normalize_sequences(["ACGT", "ACRT"])
    seqs, report = normalize_sequences(["ACRTyk"], iupac="n")
    assert seqs == ["ACNTNN"] and report.n_ambiguous_to_n == 3 and report.n_n == 3


@pytest.mark.parametrize("bad, match", [
    (["ACGT", ""], r"sequences\[1\]: empty"),
    (["ACXT"], r"'X' at position 2"),
    (["AC-T"], r"'-' at position 2"),
    ("ACGT", "expected a list of strings"),
    ([b"ACGT"], r"sequences\[0\]: expected str"),
])
def test_normalize_rejects_bad_input(bad, match):
    with pytest.raises(EncoderInputError, match=match):
        normalize_sequences(bad, iupac="n")


def test_reverse_complement():
    assert reverse_complement("AACGTN") == "NACGTT"
    seq = random_dna(random.Random(0), 101, "ACGTN")
    assert reverse_complement(reverse_complement(seq)) == seq


@pytest.mark.parametrize("length, window, overlap", [
    (n, w, o) for n, w, o in itertools.product((1, 50, 99, 100, 101, 257, 1000), (10, 30, 96), (0, 5, 9))])
def test_tile_windows_cover_exactly_with_overlap_and_mirror(length, window, overlap):
    wins = tile_windows(length, window, overlap)
    if length <= window:
        assert wins == [(0, length)]
        return
    assert wins[0][0] == 0 and wins[-1][1] == length
    assert all(end - start == window for start, end in wins)
    assert all(b[0] - a[0] >= 1 and a[1] - b[0] >= overlap for a, b in zip(wins, wins[1:]))
    # windows of the reverse complement are the mirrored windows
    assert sorted((length - e, length - s) for s, e in wins) == wins


def test_tile_windows_none_is_one_window():
    assert tile_windows(10_000, None) == [(0, 10_000)]


NT_VOCAB = (["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"]
            + ["".join(p) for p in itertools.product("ATCG", repeat=6)] + list("ATCGN"))


def test_nt_split_matches_the_esm_tokenizer(tmp_path):
    from transformers import EsmTokenizer

    (tmp_path / "vocab.txt").write_text("\n".join(NT_VOCAB) + "\n")
    reference = EsmTokenizer(str(tmp_path / "vocab.txt"), eos_token=None)
    vocab = KmerVocab(NT_VOCAB, 6, 0, tmp_path / "vocab.txt")
    rng = random.Random(1)
    seqs = ["N", "NNNN", "ACGTA", "ACGTAC", "ACGTACN", "NACGTACG"]
    seqs += [random_dna(rng, rng.randint(1, 80), "ACGT" * 5 + "N") for _ in range(40)]
    for seq in seqs:
        assert vocab.kmers_then_singles(base_codes(seq)).tolist() == reference(seq)["input_ids"][1:], seq


GENERATOR_VOCAB = (["<oov>", "<s>", "</s>", "<pad>", "<mask>"] + [f"<x{i}>" for i in range(27)]
                   + ["".join(p) for p in itertools.product("ATCG", repeat=6)])


def test_generator_kmers_match_the_reference_regex_tokenizer(tmp_path):
    index = {t: i for i, t in enumerate(GENERATOR_VOCAB)}
    vocab = KmerVocab(GENERATOR_VOCAB, 6, 0, tmp_path / "vocab.txt")
    rng = random.Random(2)
    for _ in range(30):
        seq = random_dna(rng, 6 * rng.randint(1, 20), "ACGT" * 10 + "N")
        expected = [index.get(tok, 0) for tok in re.findall(r"[A-Z]{6}|[A-Z]+", seq)]
        assert vocab.kmers(base_codes(seq)).tolist() == expected
    assert vocab.kmers(base_codes("AAAAAAACGTNA")).tolist() == [index["AAAAAA"], 0]


def test_incomplete_kmer_vocabulary_is_rejected(tmp_path):
    with pytest.raises(EncoderInputError, match="4095 of the 4096 6-mers"):
        KmerVocab(GENERATOR_VOCAB[:-1], 6, 0, tmp_path / "vocab.txt")


def test_base_codes():
    assert base_codes("ACGTN").tolist() == [0, 1, 2, 3, 4]
    assert base_codes("").dtype == np.int64
