"""Nucleotide Transformer (InstaDeep) v1 and v2: ESM encoders on 6-mers with single-base fallback.

v1 checkpoints are native `EsmForMaskedLM`. v2 checkpoints ship their own `modeling_esm.py`: the
same pre-LayerNorm ESM with rotary positions, but a bias-free SwiGLU feed-forward
(`add_bias_fnn: false`). With `trust_remote_code=True` that code is run (loaded through
`AutoModelForMaskedLM`, whose `.esm` is the encoder, since the v2 `auto_map` has no `AutoModel`);
otherwise the weights load into `NTv2EsmModel`, a native `EsmModel` with the SwiGLU feed-forward.

Tokenization follows the NT tokenizer on the folder's `vocab.txt`: within each run of ACGT, 6-mers
from the run start, leftover bases one by one; each N is its own token; `<cls>` first, no EOS.
Weights are licensed CC BY-NC-SA 4.0 (non-commercial).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from encoders.dna.base import DNAEncoder, TokenBatch, pad_token_rows
from encoders.dna.kmers import KmerVocab, base_codes, read_vocab_lines
from encoders.dna.registry import register_dna_encoder
from encoders.errors import EncoderInputError


class SwiGLUIntermediate(nn.Module):
    """NT-v2 feed-forward input: dense to 2 x intermediate, SiLU(first half) * second half."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool):
        super().__init__()
        self.dense = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """SwiGLU activation of the projected states."""
        gate, value = self.dense(hidden_states).chunk(2, dim=-1)
        return nn.functional.silu(gate) * value


@functools.cache
def _ntv2_model_class() -> type:
    from transformers import EsmModel

    class NTv2EsmModel(EsmModel):
        """Native ESM encoder with NT-v2's bias-free SwiGLU feed-forward (parameter names unchanged)."""

        def __init__(self, config, add_pooling_layer: bool = False):
            super().__init__(config, add_pooling_layer=add_pooling_layer)
            bias = bool(getattr(config, "add_bias_fnn", True))
            for layer in self.encoder.layer:
                layer.intermediate = SwiGLUIntermediate(config.hidden_size, config.intermediate_size, bias)
                layer.output.dense = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
            self.post_init()

    return NTv2EsmModel


@register_dna_encoder("nt")
class NucleotideTransformerEncoder(DNAEncoder):
    """NT v1 (native ESM) and v2 (remote code, or the native SwiGLU port); default pooling = mean."""

    k = 6

    def load(self) -> None:
        """Read vocab.txt, pick v1/v2 from config.json (`add_bias_fnn`) and load the encoder."""
        from transformers import AutoModelForMaskedLM, EsmConfig, EsmModel

        raw = self.read_config_json()
        tokens = read_vocab_lines(self.path / "vocab.txt")
        index = {t: i for i, t in enumerate(tokens)}
        missing = [t for t in ("<unk>", "<pad>", "<cls>") if t not in index]
        if missing:
            raise EncoderInputError(f"tokenizer: {self.path / 'vocab.txt'} lacks {', '.join(missing)}")
        self.vocab = KmerVocab(tokens, self.k, index["<unk>"], self.path / "vocab.txt")
        self.cls_id, self.pad_id = index["<cls>"], index["<pad>"]
        self.is_v2 = raw.get("add_bias_fnn") is False or "auto_map" in raw
        if self.is_v2 and self.config.trust_remote_code:
            self.require_remote_code("NT-v2 ships its own modeling_esm.py")
            try:
                model = self.load_weights(AutoModelForMaskedLM, trust_remote_code=self.config.trust_remote_code)
            except (ImportError, AttributeError, TypeError) as err:
                raise EncoderInputError(
                    f"nt: the remote code in {self.path} failed under this transformers version ({err}); "
                    "leave trust_remote_code=False to use the native NT-v2 port") from err
            self.model = model.esm
        else:
            config = EsmConfig.from_pretrained(self.path, local_files_only=True)
            model_cls = _ntv2_model_class() if self.is_v2 else EsmModel
            self.model = self.load_weights(model_cls, config=config, add_pooling_layer=False,
                                           ignore_missing=("contact_head.",))
        if self.model.config.pad_token_id != self.pad_id:
            raise EncoderInputError(f"nt: config.json pad_token_id={self.model.config.pad_token_id} but "
                                    f"vocab.txt in {self.path} puts <pad> at {self.pad_id}")

    @property
    def max_tokens(self) -> int:
        """ESM positions start after the pad id: max_position_embeddings - pad_token_id - 1 tokens."""
        cfg = self.model.config
        return int(cfg.max_position_embeddings) - int(cfg.pad_token_id) - 1

    def tokenize(self, sequences: list[str]) -> TokenBatch:
        """`<cls>` + NT tokens, right-padded with `<pad>` (ESM positions count from the left)."""
        rows, spans = [], []
        for seq in sequences:
            ids = self.vocab.kmers_then_singles(base_codes(seq))
            rows.append(np.concatenate([[self.cls_id], ids]))
            spans.append((1, 1 + len(ids)))
        return pad_token_rows(rows, spans, self.pad_id, self.padding_side)
