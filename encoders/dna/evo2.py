"""Evo 2 (Arc Institute): StripedHyena 2 on single bytes, embeddings from a forward hook on a named module.

Runs only on a CUDA GPU with the `evo2` package (which needs `vtx`, the vortex kernels, and flash-attn);
both are imported lazily, so this module imports everywhere. `path` is a folder holding the merged
checkpoint `<model_name>.pt` (or the file named by `weights`); nothing is downloaded.

Seam for tests and custom builds: `Evo2Encoder(config, loader=fn)` with
`fn(model_name, weights_path, device)` returning an Evo2-like object: `.model` (an nn.Module whose named
modules include `layer`), `.tokenizer.tokenize(str) -> list[int]` (UTF-8 bytes) and
`obj(input_ids, return_embeddings=True, layer_names=[layer]) -> (logits, {layer: [B, T, H]})`.
Through the registry the default loader `load_evo2` is used.

Tokens are raw bytes (A=65, C=67, G=71, T=84, N=78) with no BOS/EOS; sequences are uppercased and
validated first (soft-masked lowercase bases would be other tokens). The model is causal, so batches are
right-padded (pad id 1) and pooling reads only real tokens. The default layer `blocks.28.mlp.l3` (Evo 2 7B,
the README's choice) is the MLP output before the residual add; `blocks.N` is the block output.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.dna.base import DNAEncoder, DNAEncoderConfig, TokenBatch, pad_token_rows
from encoders.dna.registry import register_dna_encoder
from encoders.errors import EncoderInputError

_BLOCK = re.compile(r"blocks\.(\d+)")
_PROBE = "ACGTN"
Evo2Loader = Callable[[str, Path, torch.device], Any]


@dataclass(frozen=True)
class Evo2EncoderConfig(DNAEncoderConfig):
    """Evo 2 options: `model_name` (an evo2 model name), `weights` (file in `path`, default
    `<model_name>.pt`); `layer` is a module name; Evo 2 needs a CUDA `device`."""

    layer: int | str = "blocks.28.mlp.l3"
    device: str = "cuda"
    model_name: str = "evo2_7b"
    weights: str | None = None


def load_evo2(model_name: str, weights_path: Path, device: torch.device) -> Any:
    """`evo2.Evo2(model_name, local_path=weights_path)`, with one clear error when it cannot run here."""
    if importlib.util.find_spec("evo2") is None:
        raise EncoderInputError(
            "evo2: the 'evo2' package is not installed. Evo 2 runs only on a CUDA GPU, with the evo2 and vtx "
            "(vortex) packages and flash-attn (pip install evo2 on a GPU machine; no CPU support, evo2#71)")
    if device.type != "cuda" or not torch.cuda.is_available():
        raise EncoderInputError(
            f"evo2: Evo 2 needs a CUDA device; got device={str(device)!r} "
            f"(torch.cuda.is_available()={torch.cuda.is_available()})")
    try:
        from evo2 import Evo2
    except ImportError as err:
        raise EncoderInputError(
            f"evo2: importing the evo2 package failed ({err}); it needs vtx (vortex) and flash-attn built "
            "for this CUDA and torch") from err
    try:
        return Evo2(model_name, local_path=str(weights_path))
    except ValueError as err:  # evo2 rejects unknown model names with the list of valid ones
        raise EncoderInputError(f"model_name: {err}") from err


@register_dna_encoder("evo2")
class Evo2Encoder(DNAEncoder):
    """Evo 2: byte tokens, right padding, hooked layer, masked mean (default), last token or max."""

    config_class = Evo2EncoderConfig
    poolings = ("mean", "last", "max")
    single_base_tokens = True

    def __init__(self, config: Evo2EncoderConfig, loader: Evo2Loader | None = None):
        self._loader = loader
        self._hidden_size: int | None = None
        super().__init__(config)

    def load(self) -> None:
        """Load the merged checkpoint through the loader and check the byte tokenizer."""
        cfg = self.config
        weights = self.path / (cfg.weights or f"{cfg.model_name}.pt")
        if not weights.is_file():
            raise EncoderInputError(
                f"weights: {weights} not found; Evo 2 loads one merged .pt file (concatenate the "
                f"{cfg.model_name}.pt.part0..N files of the Hugging Face repository in order)")
        loader = self._loader or load_evo2
        self.model = loader(cfg.model_name, weights, self.device)
        expected = list(_PROBE.encode("ascii"))
        got = [int(i) for i in self.model.tokenizer.tokenize(_PROBE)]
        if got != expected:
            raise EncoderInputError(f"evo2: the model tokenizer maps {_PROBE!r} to {got}; "
                                    f"expected UTF-8 bytes {expected}")
        self.pad_id = int(getattr(self.model.tokenizer, "pad_id", 1))

    def _check_layer(self) -> None:
        """`layer` must name a module of the model (e.g. 'blocks.28.mlp.l3' or 'blocks.26')."""
        layer = self.config.layer
        names = {name for name, _ in self.model.model.named_modules()}
        if isinstance(layer, str) and layer in names:
            return
        blocks = sorted({int(m.group(1)) for n in names if (m := _BLOCK.fullmatch(n))})
        span = f"blocks.0..blocks.{blocks[-1]}" if blocks else "no 'blocks.N' modules"
        raise EncoderInputError(
            f"layer: Evo 2 layers are module names such as 'blocks.28.mlp.l3' (MLP output) or 'blocks.26' "
            f"(block output); {self.config.model_name} has {span}, got {layer!r}")

    @property
    def hidden_size(self) -> int:
        """Width of the hooked module's output, measured once on a 5-base input."""
        if self._hidden_size is None:
            batch = self.tokenize([_PROBE]).to(self.device)
            with torch.inference_mode():
                self._hidden_size = int(self.forward_hidden(batch).shape[-1])
        return self._hidden_size

    @property
    def max_tokens(self) -> int | None:
        """`max_seqlen` of the model config (vortex: a dict with attribute access) when it has one."""
        config = getattr(self.model.model, "config", None)
        value = config.get("max_seqlen") if isinstance(config, dict) else getattr(config, "max_seqlen", None)
        return int(value) if value else None

    def tokenize(self, sequences: list[str]) -> TokenBatch:
        """UTF-8 bytes of the (uppercase ACGTN) sequences, right-padded with the pad id."""
        rows = [np.frombuffer(seq.encode("ascii"), dtype=np.uint8).astype(np.int64) for seq in sequences]
        return pad_token_rows(rows, [(0, len(seq)) for seq in sequences], self.pad_id, "right")

    def forward_hidden(self, batch: TokenBatch) -> torch.Tensor:
        """Output [B, T, H] of the hooked module (tuple outputs: first element)."""
        layer = self.config.layer
        _, states = self.model(batch.input_ids.to(torch.int32), return_embeddings=True, layer_names=[layer])
        hidden = states[layer]
        return hidden[0] if isinstance(hidden, tuple | list) else hidden
