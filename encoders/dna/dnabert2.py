"""DNABERT-2 (MAGICS-LAB): MosaicBERT (ALiBi, GEGLU, unpadded attention) on a DNA BPE vocabulary.

The model code ships in the checkpoint (`bert_layers.py`), so `trust_remote_code=True` is required.
Two known breakages are handled here:
* `config_class` mismatch on newer transformers: the class named by `auto_map["AutoModel"]` is
  resolved directly and given a config of its own `config_class` (the DNABERT_2#22/#38 workaround).
* Triton flash attention: when the remote module found `triton`, its `flash_attn_qkvpacked_func`
  asserts CUDA and half precision; on CPU or in float32 it is switched off (set to None, which makes
  the remote code use its PyTorch attention) and this is logged.
Tokens are BPE pieces from the folder's `tokenizer.json`, `[CLS] ... [SEP]`; default pooling = mean.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from encoders.dna.base import TokenBatch, logger
from encoders.dna.hf import HFEncoder, load_dna_tokenizer
from encoders.dna.registry import register_dna_encoder
from encoders.errors import EncoderInputError


@register_dna_encoder("dnabert2")
class DNABERT2Encoder(HFEncoder):
    """DNABERT-2 through its remote code; intermediate layers from `output_all_encoded_layers`."""

    def load(self) -> None:
        """Resolve the remote BertModel class, load it with a matching config, disable Triton off-GPU."""
        import transformers
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        auto_map = self.read_config_json().get("auto_map") or {}
        if "AutoModel" not in auto_map:
            raise EncoderInputError(f"dnabert2: {self.path / 'config.json'} has no auto_map.AutoModel; "
                                    "expected a DNABERT-2 checkpoint with its bert_layers.py")
        self.require_remote_code("DNABERT-2 ships its own bert_layers.py")
        self.tokenizer = load_dna_tokenizer(self.path, self.family)
        model_cls = get_class_from_dynamic_module(auto_map["AutoModel"], str(self.path), local_files_only=True)
        config_cls = getattr(model_cls, "config_class", None) or transformers.BertConfig
        config = config_cls.from_pretrained(self.path, local_files_only=True)
        # No pooler: with output_all_encoded_layers=True the remote pooler would get unpadded states.
        self.model = self.load_weights(model_cls, config=config, add_pooling_layer=False)
        module = sys.modules[model_cls.__module__]
        off_gpu = self.device.type != "cuda" or self.dtype == torch.float32
        if getattr(module, "flash_attn_qkvpacked_func", None) is not None and off_gpu:
            module.flash_attn_qkvpacked_func = None
            logger.warning("dnabert2: Triton flash attention needs CUDA and fp16/bf16; using the PyTorch "
                           "attention of %s instead", model_cls.__module__)

    def _check_layer(self) -> None:
        super()._check_layer()
        if self.config.layer % self.num_hidden_states == 0:
            raise EncoderInputError("layer: DNABERT-2's remote code does not expose the embedding output "
                                    "(hidden_states index 0); use 1..num_layers or a negative index")

    @property
    def hidden_size(self) -> int:
        """Width from config.json."""
        return int(self.model.config.hidden_size)

    @property
    def num_hidden_states(self) -> int:
        """Embeddings + one per layer (index 0 itself is not available, see _check_layer)."""
        return int(self.model.config.num_hidden_layers) + 1

    def run_model(self, batch: TokenBatch, output_hidden_states: bool) -> Any:
        """MosaicBERT forward: (last layer [B, T, H] or a list of unpadded layers [nnz, H], pooled)."""
        return self.model(batch.input_ids, attention_mask=batch.attention_mask,
                          output_all_encoded_layers=output_hidden_states)

    def forward_hidden(self, batch: TokenBatch) -> torch.Tensor:
        """States of the configured layer, re-padded to [B, T, H] when taken from the unpadded list."""
        index = self.config.layer % self.num_hidden_states
        if index == self.num_hidden_states - 1:
            return self.run_model(batch, output_hidden_states=False)[0]
        unpadded = self.run_model(batch, output_hidden_states=True)[0][index - 1]
        mask = batch.attention_mask.bool()
        full = unpadded.new_zeros(*mask.shape, unpadded.shape[-1])
        full[mask] = unpadded
        return full
