"""Generic Hugging Face path: any local folder with a config, weights and a tokenizer.

The encoder is the checkpoint's base model: `AutoModel` for native configs (a masked-LM or causal-LM
checkpoint loads its base model; heads and random poolers are ignored); for remote code, the first
of `AutoModel`, `AutoModelForMaskedLM`, `AutoModelForCausalLM` that the config's `auto_map` names,
then `.base_model` (NT-v2, for example, maps no `AutoModel`). Tokens are the folder tokenizer's
tokens; special tokens (CLS, SEP, BOS, ...) are excluded from mean/max pooling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from encoders.dna.base import DNAEncoder, TokenBatch
from encoders.dna.registry import register_dna_encoder
from encoders.errors import EncoderInputError

_AUTO_ORDER = ("AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM")
_UNBOUNDED = 10**8  # tokenizers without a limit report a huge model_max_length
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "tokenizer_config.json")


def load_dna_tokenizer(path: Path, family: str, trust_remote_code: bool = False) -> Any:
    """The folder's tokenizer, checked to exist, to pad, and to map A/C/G/T to known tokens."""
    import transformers

    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise EncoderInputError(f"{family}: no usable tokenizer in {path} (expected one of "
                                f"{', '.join(_TOKENIZER_FILES)})")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                               trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        raise EncoderInputError(f"{family}: no usable tokenizer in {path} ({err})") from err
    if tokenizer.pad_token_id is None:
        raise EncoderInputError(f"{family}: the tokenizer in {path} has no pad token; batching needs one")
    ids = tokenizer("ACGTACGTAACCGGTT", add_special_tokens=False)["input_ids"]
    if not ids or tokenizer.unk_token_id in ids:
        raise EncoderInputError(f"{family}: the tokenizer in {path} maps DNA to unknown tokens; "
                                "is it a DNA tokenizer?")
    return tokenizer


@register_dna_encoder("hf")
class HFEncoder(DNAEncoder):
    """Any local transformers checkpoint + its tokenizer; right padding with the attention mask."""

    def load(self) -> None:
        """Load tokenizer and base model with `local_files_only=True` (remote code only when trusted)."""
        import transformers

        raw = self.read_config_json()
        auto_map = raw.get("auto_map") or {}
        remote = any(key in auto_map for key in _AUTO_ORDER)
        if remote:
            self.require_remote_code(f"config.json maps {sorted(auto_map)} to code in the folder")
        self.tokenizer = load_dna_tokenizer(self.path, self.family, self.config.trust_remote_code)
        auto = next((getattr(transformers, k) for k in _AUTO_ORDER if k in auto_map), transformers.AutoModel)
        self.model = self.load_weights(auto, trust_remote_code=remote and self.config.trust_remote_code).base_model

    @property
    def hidden_size(self) -> int:
        """Width measured from the model's hidden states."""
        return self.probe()[1]

    @property
    def num_hidden_states(self) -> int:
        """Length of the model's hidden_states tuple, measured."""
        return self.probe()[0]

    @property
    def max_tokens(self) -> int | None:
        """The tokenizer's model_max_length, else the config's max_position_embeddings, else unbounded."""
        limit = self.tokenizer.model_max_length
        if limit and limit < _UNBOUNDED:
            return int(limit)
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value else None

    def tokenize(self, sequences: list[str]) -> TokenBatch:
        """The folder tokenizer with its special tokens, padded on the right."""
        enc = self.tokenizer(sequences, padding=True, return_tensors="pt", padding_side=self.padding_side,
                             return_special_tokens_mask=True, return_token_type_ids=False)
        attention = enc["attention_mask"]
        content = attention.bool() & ~enc["special_tokens_mask"].bool()
        return TokenBatch(enc["input_ids"], attention, content)
