"""LoRA on the attention projections of a BrainLM encoder, through `peft`.

The ViT-MAE blocks call their projections (`q_proj`, `k_proj`, `v_proj`, `o_proj`) as modules, so peft's own
`lora.Linear` wraps them. The Nystromformer blocks do not: `BrainLMSelfAttention` reads `query/key/value.weight`
and `.bias` directly to run q, k and v as one fused product (and only the CLS row of q in the last layer), so a
`lora.Linear` there would never run its forward and the adapter would be silently inert. Those three are adapted
through peft's custom-module support with `WeightLoraLinear`, whose `weight` is `W + scale * B A` (the same
update, applied to the weight instead of the input path); input dropout cannot be expressed that way, so
`dropout` must be 0 for them. `attention.output.dense` and the feed-forward projections are called as modules and
get peft's `lora.Linear`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from encoders.errors import EncoderInputError
from encoders.lora_config import LoraSettings

# "the attention projections" of each architecture (names within one encoder block); the ViT-MAE names changed
# within transformers 5 (q_proj/k_proj/v_proj/o_proj now, attention.attention.query/... before): the first set
# present in the blocks is used
DEFAULT_TARGETS = {
    "brainlm_mae": [["query", "key", "value", "attention.output.dense"]],
    "vit_mae": [["q_proj", "k_proj", "v_proj", "o_proj"],
                ["attention.attention.query", "attention.attention.key", "attention.attention.value",
                 "attention.output.dense"]],
}
FUSED = ("attention.self.query", "attention.self.key", "attention.self.value")  # read as weights (Nystromformer)


def require_peft() -> None:
    """EncoderInputError naming the extra to install when peft cannot be imported."""
    try:
        import peft  # noqa: F401
    except ImportError as err:
        raise EncoderInputError(f"trainable 'lora' needs the peft package, which cannot be imported ({err}); install "
                                "the finetune extra: pip install 'brainmm[finetune]' (or pip install 'peft>=0.21')") \
            from None


@functools.cache
def _weight_lora_class() -> type[nn.Module]:
    require_peft()
    from peft.tuners.lora.layer import Linear as LoraLinear

    class WeightLoraLinear(LoraLinear):
        """peft LoRA layer whose `weight` carries the update (`W + scale * B A`) for parents that read the weight."""

        @property
        def weight(self) -> torch.Tensor:
            weight = self.get_base_layer().weight
            if self.disable_adapters or self.merged:
                return weight
            for name in self.active_adapters:
                if name in self.lora_A:
                    delta = self.lora_B[name].weight @ self.lora_A[name].weight
                    weight = weight + delta.to(weight.dtype) * self.scaling[name]
            return weight

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            return F.linear(x, self.weight, self.bias)

    return WeightLoraLinear


class FusedProjection(nn.Linear):
    """Marker class: an `nn.Linear` whose parent reads `.weight` instead of calling it (dispatches `WeightLoraLinear`)."""


def default_targets(block: nn.Module, model_type: str) -> list[str]:
    """The attention projections of `block` (the first name set of `DEFAULT_TARGETS` that it has)."""
    names = {n for n, _ in block.named_modules()}
    for candidate in DEFAULT_TARGETS[model_type]:
        if all(any(n == t or n.endswith("." + t) for n in names) for t in candidate):
            return candidate
    return DEFAULT_TARGETS[model_type][0]  # lora_targets then names what is missing


def lora_targets(blocks: Sequence[nn.Module], block_names: Sequence[str], targets: Sequence[str]) -> list[str]:
    """Full module names (relative to the model) of the Linear layers in `blocks` matched by `targets`.

    Raises `EncoderInputError` for a target that matches no Linear module of the blocks, listing the names.
    """
    inner = [(n, m) for n, m in blocks[0].named_modules() if n]
    available = sorted(n for n, m in inner if isinstance(m, nn.Linear))
    chosen: list[str] = []
    for target in targets:
        hits = [n for n in available if n == target or n.endswith("." + target)]
        if not hits:
            other = [n for n, m in inner if n == target or n.endswith("." + target)]
            what = f"matches {other[0]!r}, which is not a Linear layer" if other else "matches no module"
            raise EncoderInputError(f"lora.target_modules: {target!r} {what} of the encoder blocks; the Linear "
                                    f"modules of a block are {available} (a target matches a name equal to it or "
                                    "ending with '.<target>')")
        chosen += [n for n in hits if n not in chosen]
    return [f"{prefix}.{n}" for prefix in block_names for n in chosen]


def inject_lora(model: nn.Module, blocks: Sequence[nn.Module], block_names: Sequence[str], model_type: str,
                settings: LoraSettings) -> list[str]:
    """Add LoRA adapters (peft, adapter "default") to `model`'s blocks in place; returns the adapted module names.

    Only the adapters require grad afterwards; everything else of `model` is frozen.
    """
    require_peft()
    from peft import LoraConfig, inject_adapter_in_model

    settings.check()
    targets = settings.target_modules or default_targets(blocks[0], model_type)
    names = lora_targets(blocks, block_names, targets)
    fused = [n for n in names if n.endswith(FUSED)] if model_type == "brainlm_mae" else []
    if fused and settings.dropout:
        raise EncoderInputError(
            f"lora.dropout must be 0 when adapting the Nystromformer projections query/key/value (got "
            f"{settings.dropout}): their weights are read directly, so the update is added to the weight and an input "
            "dropout cannot be applied; use dropout 0 or target only attention.output.dense / the feed-forward layers")
    modules = dict(model.named_modules())
    for name in fused:
        modules[name].__class__ = FusedProjection  # same state, marks it for the weight-carrying LoRA layer
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=names, bias="none")
    config._register_custom_module({FusedProjection: _weight_lora_class()})
    model.requires_grad_(False)
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    return names
