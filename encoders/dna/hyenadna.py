"""HyenaDNA (HazyResearch / LongSafari): a causal long-convolution model on single bases.

Checkpoints ship their own `modeling_hyena.py` (pure PyTorch, runs on CPU), so `trust_remote_code=True`
is required for them. Folders without an `auto_map` (a native causal model such as `MambaModel`)
load with the native class, which is how the adapter is tested without remote code.

Tokens: HyenaDNA's fixed character vocabulary (`[CLS]`0 `[SEP]`1 `[BOS]`2 `[MASK]`3 `[PAD]`4
`[RESERVED]`5 `[UNK]`6 A7 C8 G9 T10 N11), one token per base, `[SEP]` appended. The forward pass
takes no attention mask, so batches are padded on the right: the model is causal, so real tokens
never see the padding, and pooling ignores it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from encoders.dna.base import DNAEncoder, TokenBatch, pad_token_rows
from encoders.dna.kmers import base_codes
from encoders.dna.registry import register_dna_encoder
from encoders.errors import EncoderInputError

CHAR_IDS = np.array([7, 8, 9, 10, 11], dtype=np.int64)  # A, C, G, T, N (base_codes order)
SEP_ID, PAD_ID = 1, 4
CHARACTERS = ["A", "C", "G", "T", "N"]


@register_dna_encoder("hyenadna")
class HyenaDNAEncoder(DNAEncoder):
    """HyenaDNA: char tokens + `[SEP]`, right padding, masked mean (default) or last token."""

    single_base_tokens = True

    def load(self) -> None:
        """Load the model (remote code when the folder declares it) and check the character vocabulary."""
        from transformers import AutoModel

        raw = self.read_config_json()
        self._check_tokenizer_config()
        remote = "auto_map" in raw
        if remote:
            self.require_remote_code("HyenaDNA ships its own modeling_hyena.py")
        self.model = self.load_weights(AutoModel, trust_remote_code=remote and self.config.trust_remote_code)
        vocab = int(getattr(self.model.config, "vocab_size", 0))
        if vocab < len(CHAR_IDS) + 7:
            raise EncoderInputError(f"hyenadna: {self.path / 'config.json'} has vocab_size={vocab}; "
                                    "the HyenaDNA character vocabulary needs 12")

    def _check_tokenizer_config(self) -> None:
        path = self.path / "tokenizer_config.json"
        if not path.is_file():
            return
        cfg = json.loads(path.read_text())
        chars = cfg.get("characters")
        if chars is not None and list(chars) != CHARACTERS:
            raise EncoderInputError(f"tokenizer: {path} lists characters {chars}; expected {CHARACTERS}")
        for token_id, spec in (cfg.get("added_tokens_decoder") or {}).items():
            expected = {"1": "[SEP]", "4": "[PAD]"}.get(token_id)
            if expected is not None and spec.get("content") != expected:
                raise EncoderInputError(f"tokenizer: {path} maps id {token_id} to {spec.get('content')!r}; "
                                        f"HyenaDNA uses {expected}")

    @property
    def hidden_size(self) -> int:
        """Width measured from the model (HyenaDNA configs call it d_model)."""
        return self.probe()[1]

    @property
    def num_hidden_states(self) -> int:
        """HyenaDNA returns embeddings, each layer, then the final LayerNorm output."""
        return self.probe()[0]

    @property
    def max_tokens(self) -> int | None:
        """`max_seq_len` of the config (the positional filter length), [SEP] included."""
        value = getattr(self.model.config, "max_seq_len", None)
        return int(value) if value else None

    def tokenize(self, sequences: list[str]) -> TokenBatch:
        """Character ids + `[SEP]`, right-padded with `[PAD]`."""
        rows = [np.concatenate([CHAR_IDS[base_codes(seq)], [SEP_ID]]) for seq in sequences]
        spans = [(0, len(seq)) for seq in sequences]
        return pad_token_rows(rows, spans, PAD_ID, "right")

    def run_model(self, batch: TokenBatch, output_hidden_states: bool) -> Any:
        """Forward without an attention mask (HyenaDNA takes none; causal, so right padding is exact)."""
        return self.model(input_ids=batch.input_ids, output_hidden_states=output_hidden_states, return_dict=True)
