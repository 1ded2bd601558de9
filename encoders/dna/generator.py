"""GENERator (GenerTeam): a Llama decoder on non-overlapping 6-mers, loaded with native `LlamaModel`.

The tokenizer is re-implemented from the folder's `vocab.txt` (no remote code): 6-mers left to right,
any 6-mer containing N -> `<oov>`. The official tokenizer turns a trailing 1-5 bases into `<oov>`
(silently degenerate output), so sequence length is made a multiple of 6 first by `remainder`:
"trim_left" drops the first len % 6 bases (as GENERator's variant-effect script), "pad_left"
prepends A's, "error" refuses. Input is `<s>` + 6-mers, plus a trailing `<s>` for v2 models.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

import numpy as np

from encoders.dna.base import DNAEncoder, DNAEncoderConfig, TokenBatch, pad_token_rows
from encoders.dna.kmers import KmerVocab, base_codes, read_vocab_lines
from encoders.dna.registry import register_dna_encoder
from encoders.errors import EncoderInputError

logger = logging.getLogger("encoders.dna")

REMAINDER_POLICIES = ("trim_left", "pad_left", "error")


@dataclass(frozen=True)
class GeneratorConfig(DNAEncoderConfig):
    """GENERator options: `remainder` policy for lengths not a multiple of 6; `variant` "v1"/"v2"
    (None = "v2" when the folder name contains "v2", else "v1")."""

    remainder: str = "trim_left"
    variant: str | None = None


@register_dna_encoder("generator")
class GeneratorEncoder(DNAEncoder):
    """GENERator v1/v2 (Llama weights, 6-mer tokens); default pooling = last token, as in the paper."""

    config_class = GeneratorConfig
    default_pooling = "last"
    window_multiple = 6
    k = 6

    def load(self) -> None:
        """Read vocab.txt (and tokenizer_config.json's k) and load `LlamaModel` weights."""
        from transformers import LlamaModel

        cfg = self.config
        if cfg.remainder not in REMAINDER_POLICIES:
            raise EncoderInputError(f"remainder: expected one of {REMAINDER_POLICIES}, got {cfg.remainder!r}")
        variant = cfg.variant or ("v2" if "v2" in self.path.name.lower() else "v1")
        if variant not in ("v1", "v2"):
            raise EncoderInputError(f"variant: expected 'v1' or 'v2', got {variant!r}")
        self.config = dataclasses.replace(cfg, variant=variant)
        model_type = self.read_config_json().get("model_type")
        if model_type not in ("llama", "generator"):
            raise EncoderInputError(f"generator: {self.path / 'config.json'} has model_type {model_type!r}; "
                                    "expected a Llama (GENERator) checkpoint")
        tok_cfg_path = self.path / "tokenizer_config.json"
        k = json.loads(tok_cfg_path.read_text()).get("k", self.k) if tok_cfg_path.is_file() else self.k
        if k != self.k:
            raise EncoderInputError(f"generator: {tok_cfg_path} declares k={k}; GENERator uses 6-mers")
        tokens = read_vocab_lines(self.path / "vocab.txt")
        index = {t: i for i, t in enumerate(tokens)}
        missing = [t for t in ("<oov>", "<s>", "<pad>") if t not in index]
        if missing:
            raise EncoderInputError(f"tokenizer: {self.path / 'vocab.txt'} lacks {', '.join(missing)}")
        self.vocab = KmerVocab(tokens, self.k, index["<oov>"], self.path / "vocab.txt")
        self.bos_id, self.pad_id = index["<s>"], index["<pad>"]
        self.model = self.load_weights(LlamaModel)
        if self.model.config.vocab_size < len(tokens):
            raise EncoderInputError(f"generator: vocab.txt in {self.path} has {len(tokens)} tokens but the "
                                    f"model embeds {self.model.config.vocab_size}")

    @property
    def max_tokens(self) -> int:
        """Llama context (max_position_embeddings), BOS/suffix included."""
        return int(self.model.config.max_position_embeddings)

    def _fit_length(self, seq: str) -> str:
        rest = len(seq) % self.k
        if rest == 0:
            return seq
        policy = self.config.remainder
        if policy == "error":
            raise EncoderInputError(f"remainder: sequence of {len(seq)} bp is not a multiple of 6 "
                                    "(GENERator); use remainder='trim_left' or 'pad_left'")
        if policy == "pad_left":
            return "A" * (self.k - rest) + seq
        if len(seq) < self.k:
            raise EncoderInputError(f"sequence of {len(seq)} bp is shorter than one 6-mer; GENERator needs >= 6 bp")
        return seq[rest:]

    def tokenize(self, sequences: list[str]) -> TokenBatch:
        """`<s>` + 6-mer ids (+ `<s>` for v2), right-padded with `<pad>`."""
        suffix = [self.bos_id] if self.config.variant == "v2" else []
        rows, spans = [], []
        for seq in sequences:
            ids = self.vocab.kmers(base_codes(self._fit_length(seq)))
            rows.append(np.concatenate([[self.bos_id], ids, suffix]))
            spans.append((1, 1 + len(ids)))
        return pad_token_rows(rows, spans, self.pad_id, self.padding_side)

