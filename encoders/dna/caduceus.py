"""Caduceus (kuleshov-group): bidirectional Mamba on single bases, PS (RC-equivariant) and Ph variants.

`implementation="port"` (default) loads the checkpoint into the pure-torch port in `caduceus_model.py`
(CPU or GPU, no remote code). `implementation="official"` runs the code shipped in the snapshot
(`trust_remote_code=True`), which needs the CUDA-only `mamba_ssm` package and a CUDA device.

Tokens: the character vocabulary `[CLS]`0 `[SEP]`1 `[BOS]`2 `[MASK]`3 `[PAD]`4 `[RESERVED]`5 `[UNK]`6
A7 C8 G9 T10 N11, no special tokens added (the authors' embedding recipe). Batches are right-padded:
the port zeroes mixer inputs at padding (`attention_mask`); the official model takes no mask, so its
batches are run one sequence length at a time.

Reverse complement: PS (RC-equivariant parameter sharing) outputs [fwd ‖ rc] channels in one pass, so the
encoder sets `rc_in_model` and runs no reverse-complement sequences: with `rc="average"` (default) or
"concat" the hidden states are [h[..., :d] ‖ h[..., d:].flip(channels)], the reverse strand aligned to each
position (equal, by equivariance, to the forward half of the reverse-complement sequence read backwards).
After pooling this is the official `vep_embeddings.py` recipe ½(h[..., :d] + h[..., d:].flip(length,
channels)). Ph is not equivariant: it is run on the sequence and its reverse complement and averaged, as in
`vep_embeddings.py`.

`caduceus_model` (and transformers' Mamba with it) is imported only when a model is loaded, so importing
this module (e.g. `list_dna_encoders()`) stays light.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from encoders.dna.base import DNAEncoder, DNAEncoderConfig, TokenBatch, pad_token_rows
from encoders.dna.kmers import base_codes
from encoders.dna.registry import register_dna_encoder
from encoders.errors import EncoderInputError

if TYPE_CHECKING:
    from transformers.modeling_outputs import BaseModelOutputWithNoAttention

IMPLEMENTATIONS = ("port", "official")
# Character tokenizer of the Caduceus / HyenaDNA checkpoints (tokenization_caduceus.py).
SPECIAL_TOKEN_IDS = {"[CLS]": 0, "[SEP]": 1, "[BOS]": 2, "[MASK]": 3, "[PAD]": 4, "[RESERVED]": 5, "[UNK]": 6}
BASE_TOKEN_IDS = {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11}
PAD_TOKEN_ID = SPECIAL_TOKEN_IDS["[PAD]"]
# Token id -> id of its complement (specials and N map to themselves): the `complement_map` of PS configs.
DEFAULT_COMPLEMENT_MAP = {i: i for i in range(12)} | {7: 10, 8: 9, 9: 8, 10: 7}
_CHAR_IDS = np.array([BASE_TOKEN_IDS[c] for c in "ACGTN"], dtype=np.int64)  # base_codes order
_CHARACTERS = ["A", "C", "G", "T", "N"]


@dataclass(frozen=True)
class CaduceusEncoderConfig(DNAEncoderConfig):
    """Caduceus options: `implementation` "port" (pure torch, default) or "official" (remote code, CUDA)."""

    implementation: str = "port"


def run_by_length(model_fn: Any, batch: TokenBatch, output_hidden_states: bool) -> BaseModelOutputWithNoAttention:
    """Run a mask-less model on a right-padded batch one sequence length at a time; pads get zeros.

    `model_fn(input_ids, output_hidden_states)` returns an output with `last_hidden_state` (and
    `hidden_states` when asked).
    """
    from transformers.modeling_outputs import BaseModelOutputWithNoAttention

    lengths = batch.attention_mask.sum(dim=1)
    size, width = batch.input_ids.shape
    buffers: list[torch.Tensor] = []
    for length in lengths.unique().tolist():
        rows = (lengths == length).nonzero().squeeze(1)
        out = model_fn(batch.input_ids[rows, :length], output_hidden_states)
        states = [out.last_hidden_state, *(out.hidden_states or ())] if output_hidden_states else [
            out.last_hidden_state]
        if not buffers:
            buffers = [s.new_zeros(size, width, s.shape[-1]) for s in states]
        for buffer, state in zip(buffers, states):
            buffer[rows, :length] = state
    return BaseModelOutputWithNoAttention(last_hidden_state=buffers[0],
                                          hidden_states=tuple(buffers[1:]) if output_hidden_states else None)


@register_dna_encoder("caduceus")
class CaduceusEncoder(DNAEncoder):
    """Caduceus PS/Ph: character tokens, right padding, masked mean pooling, RC averaging."""

    config_class = CaduceusEncoderConfig
    single_base_tokens = True
    poolings = ("mean", "max")  # bidirectional model: no causal "last" token, no CLS

    def load(self) -> None:
        """Check config.json / tokenizer_config.json, then load the port or the official remote code."""
        raw = self.read_config_json()
        if raw.get("model_type") != "caduceus":
            raise EncoderInputError(f"caduceus: {self.path / 'config.json'} has model_type "
                                    f"{raw.get('model_type')!r}; expected 'caduceus'")
        self._check_vocabulary(raw)
        self.rcps = bool(raw.get("rcps", False))
        self.rc_in_model = self.rcps  # PS computes both strands in one pass
        implementation = self.config.implementation
        if implementation == "port":
            from encoders.dna.caduceus_model import Caduceus

            self.model = self.load_weights(Caduceus)
        elif implementation == "official":
            self._load_official()
        else:
            raise EncoderInputError(f"implementation: expected one of {IMPLEMENTATIONS}, got {implementation!r}")

    def _check_vocabulary(self, raw: dict[str, Any]) -> None:
        if int(raw.get("vocab_size", 0)) < len(_CHAR_IDS) + 7:
            raise EncoderInputError(f"caduceus: {self.path / 'config.json'} has vocab_size="
                                    f"{raw.get('vocab_size')}; the character vocabulary needs 12")
        complement = {int(k): int(v) for k, v in (raw.get("complement_map") or {}).items()}
        if raw.get("rcps") and any(complement.get(i) != j for i, j in DEFAULT_COMPLEMENT_MAP.items()):
            raise EncoderInputError(f"caduceus: complement_map in {self.path / 'config.json'} does not pair "
                                    "A7-T10 and C8-G9 (ids 0-11 must map as in the Caduceus tokenizer)")
        path = self.path / "tokenizer_config.json"
        if path.is_file():
            chars = json.loads(path.read_text()).get("characters")
            if chars is not None and list(chars) != _CHARACTERS:
                raise EncoderInputError(f"tokenizer: {path} lists characters {chars}; expected {_CHARACTERS}")

    def _load_official(self) -> None:
        self.require_remote_code("implementation='official' runs the Caduceus code of the checkpoint")
        if importlib.util.find_spec("mamba_ssm") is None:
            raise EncoderInputError(
                "caduceus: implementation='official' needs the 'mamba_ssm' package (CUDA only: "
                "pip install mamba-ssm causal-conv1d on a GPU machine); use implementation='port' otherwise")
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise EncoderInputError(
                f"caduceus: implementation='official' needs a CUDA device (device={self.config.device!r}, "
                f"torch.cuda.is_available()={torch.cuda.is_available()}); use implementation='port' on CPU")
        from transformers import AutoModelForMaskedLM

        self.model = self.load_weights(AutoModelForMaskedLM,  # the user's consent, checked above
                                        trust_remote_code=self.config.trust_remote_code).caduceus

    @property
    def hidden_size(self) -> int:
        """d_model: one strand's width (PS models output [fwd ‖ rc], twice this)."""
        return int(self.model.config.d_model)

    @property
    def num_hidden_states(self) -> int:
        """Embeddings + the input of each later block + the final normed output (official definition)."""
        return int(self.model.config.n_layer) + 1

    def tokenize(self, sequences: list[str]) -> TokenBatch:
        """Character ids, no special tokens, right-padded with `[PAD]`."""
        rows = [_CHAR_IDS[base_codes(seq)] for seq in sequences]
        return pad_token_rows(rows, [(0, len(seq)) for seq in sequences], PAD_TOKEN_ID, "right")

    def run_model(self, batch: TokenBatch, output_hidden_states: bool) -> BaseModelOutputWithNoAttention:
        """Forward pass; PS states have 2 * d_model channels, [fwd ‖ rc] as the model computes them."""
        if self.config.implementation == "port":
            return self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              output_hidden_states=output_hidden_states)
        return run_by_length(
            lambda ids, ohs: self.model(input_ids=ids, output_hidden_states=ohs, return_dict=True),
            batch, output_hidden_states)

    def forward_hidden(self, batch: TokenBatch) -> torch.Tensor:
        """States of the configured layer: Ph [B, T, d]; PS [B, T, 2d] = [forward ‖ reverse strand at the
        same position] when `rc` asks for both strands (`rc_in_model`), else the forward half [B, T, d]."""
        hidden = super().forward_hidden(batch)
        if not self.rcps:
            return hidden
        d = self.hidden_size
        if not (self.rc_in_model and self.config.rc != "none"):
            return hidden[..., :d]
        # rc half of the PS output: the reverse-complement sequence's states, flipped in length and channels
        # (official recipe rc = out[..., d:].flip(1, 2)); flipping channels only keeps them at position j.
        return torch.cat([hidden[..., :d], hidden[..., d:].flip(-1)], dim=-1)
