"""Benchmark: the vectorised 6-mer tokenizers (NT, GENERator) against reference tokenizers, same run.

Both families' `tokenize()` (numpy lookup tables in `encoders.dna.kmers`, through the real registry,
tiny random-init checkpoints in the published folder layouts) are timed on the same sequences as:

* NT: transformers' `EsmTokenizer` on the same `vocab.txt` (the tokenizer the NT checkpoints ship),
  called as `tok(seqs, padding=True, return_tensors="pt")`;
* GENERator: a straightforward regex + dict implementation (below): `<s>`, one dict lookup per
  6-mer found by `re.findall`, unknown (N-containing) 6-mers -> `<oov>`, `<s>` (v2), right-padded.

Sequences: random ACGT with a few runs of N (so NT's single-base fallback and GENERator's `<oov>` are
exercised), lengths a multiple of 6 (no GENERator remainder trimming). Token ids (and NT's attention
mask) must be identical; the script exits with status 1 otherwise. Times are the best of `--repeat` calls.

    python benchmarks/dna_tokenize.py [--sequences 16] [--length 12000] [--repeat 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

KMERS = ["".join(p) for p in itertools.product("ATCG", repeat=6)]
NT_VOCAB = ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"] + KMERS + list("ATCGN")
GENERATOR_VOCAB = ["<oov>", "<s>", "</s>", "<pad>", "<mask>"] + [f"<reserved_{i}>" for i in range(27)] + KMERS


def tiny_nt(folder: Path) -> Path:
    """Random-init NT-v1 layout: EsmForMaskedLM (hidden 32, 1 layer) + vocab.txt."""
    from transformers import EsmConfig, EsmForMaskedLM

    EsmForMaskedLM(EsmConfig(vocab_size=len(NT_VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, pad_token_id=1, mask_token_id=2, max_position_embeddings=64,
                             position_embedding_type="absolute")).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(NT_VOCAB) + "\n")
    return folder


def tiny_generator(folder: Path) -> Path:
    """Random-init GENERator-v2 layout: Llama (hidden 32, 1 layer) + 6-mer vocab.txt."""
    from transformers import LlamaConfig, LlamaModel

    LlamaModel(LlamaConfig(vocab_size=len(GENERATOR_VOCAB), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=64)).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(GENERATOR_VOCAB) + "\n")
    return folder


def random_sequences(n: int, length: int, seed: int) -> list[str]:
    """Random ACGT sequences with 0-3 runs of 1-40 N each."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        seq = [rng.choice("ACGT") for _ in range(length)]
        for _ in range(rng.randint(0, 3)):
            start, size = rng.randrange(length), rng.randint(1, 40)
            seq[start:start + size] = "N" * len(seq[start:start + size])
        out.append("".join(seq))
    return out


def regex_generator_tokenize(seqs: list[str], vocab: list[str], v2: bool = True) -> torch.Tensor:
    """Reference GENERator tokenizer: regex 6-mers, dict lookup, `<s>` ... `<s>`, right padding with `<pad>`."""
    index = {t: i for i, t in enumerate(vocab)}
    oov, bos, pad = index["<oov>"], index["<s>"], index["<pad>"]
    rows = []
    for seq in seqs:
        seq = seq[len(seq) % 6:]
        rows.append([bos] + [index.get(kmer, oov) for kmer in re.findall(r"[ACGTN]{6}", seq)] + ([bos] if v2 else []))
    width = max(map(len, rows))
    return torch.tensor([row + [pad] * (width - len(row)) for row in rows])


def best_time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Best wall time of `repeat` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> int:
    from transformers import EsmTokenizer
    from transformers.utils import logging as hf_logging

    from encoders.dna import create_dna_encoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=16)
    ap.add_argument("--length", type=int, default=12_000, help="bases per sequence")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    hf_logging.set_verbosity_error()  # EsmTokenizer warns about sequences longer than model_max_length
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    seqs = random_sequences(args.sequences, args.length, args.seed)
    n_bases = sum(map(len, seqs))
    print(f"{args.sequences} sequences x {args.length} bp ({sum(s.count('N') for s in seqs)} N), "
          f"best of {args.repeat}; torch threads {torch.get_num_threads()}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nt = create_dna_encoder("nt", path=tiny_nt(tmp / "nt-tiny"))
        t0 = time.perf_counter()
        esm = EsmTokenizer(str(tmp / "nt-tiny" / "vocab.txt"), eos_token=None)
        t_esm_init = time.perf_counter() - t0
        t_ours, ours = best_time(lambda: nt.tokenize(seqs), args.repeat)
        t_ref, ref = best_time(lambda: esm(seqs, padding=True, return_tensors="pt"), args.repeat)
        same = torch.equal(ours.input_ids, ref["input_ids"]) and torch.equal(ours.attention_mask,
                                                                              ref["attention_mask"])
        ok &= same
        print(f"NT        ours {t_ours * 1e3:8.1f} ms | EsmTokenizer {t_ref * 1e3:8.1f} ms "
              f"(+{t_esm_init * 1e3:.0f} ms to build it) | speed-up {t_ref / t_ours:6.1f}x | "
              f"{ours.input_ids.shape[1]} tokens/row | ids identical: {same}")

        gen = create_dna_encoder("generator", path=tiny_generator(tmp / "GENERator-v2-tiny"))
        t_ours, ours = best_time(lambda: gen.tokenize(seqs), args.repeat)
        t_ref, ref = best_time(lambda: regex_generator_tokenize(seqs, GENERATOR_VOCAB), args.repeat)
        same = torch.equal(ours.input_ids, ref)
        ok &= same
        print(f"GENERator ours {t_ours * 1e3:8.1f} ms | regex + dict {t_ref * 1e3:8.1f} ms "
              f"| speed-up {t_ref / t_ours:6.1f}x | {ours.input_ids.shape[1]} tokens/row | ids identical: {same}")
    print(f"({n_bases / 1e3:.0f} kb per call)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
