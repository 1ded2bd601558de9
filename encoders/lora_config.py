"""LoRA hyper-parameters of a BrainLM tower, importable without torch (configs are read before any model loads)."""

from __future__ import annotations

from dataclasses import dataclass, field

from encoders.errors import EncoderInputError


@dataclass
class LoraSettings:
    """LoRA hyper-parameters: rank r, alpha (update scale alpha / r), input dropout, target module names.

    `target_modules` are names within an encoder block, matched as peft does (a module whose name equals the target
    or ends with "." + target); empty = the architecture's attention projections (`default_targets`).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Raise `EncoderInputError` naming the first bad field."""
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise EncoderInputError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise EncoderInputError(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise EncoderInputError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not all(isinstance(t, str) and t for t in self.target_modules):
            raise EncoderInputError(f"lora.target_modules must be a list of module names, got {self.target_modules!r}")
