"""The dual encoder: a brain tower + head, one or more genetics towers + heads, and a learnable temperature.

Towers are plain `nn.Module`s returning [B, D] (identity when the inputs are cached embeddings). Heads map into the
shared space and their outputs are L2-normalised. The temperature is stored as a log-scale (open_clip): the loss
gets `exp(logit_scale)`, and the training loop calls `clamp_logit_scale()` after every optimiser step.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alignment.configs import CLIP_INIT_LOGIT_SCALE
from alignment.errors import AlignmentInputError
from alignment.heads import HeadConfig, ProjectionHead

MAX_LOGIT_SCALE = math.log(100)

HEADS_FORMAT = "brainmm.align.heads/1"  # heads.json tag (files written since the first release)
HEADS_WEIGHTS, HEADS_CONFIG = "heads.safetensors", "heads.json"


@dataclass
class AlignmentOutput:
    """Normalised shared-space features and the (exponentiated) logit scale/bias for the loss."""

    brain: torch.Tensor
    genetics: dict[str, torch.Tensor]
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor | None = None


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def keep_frozen_in_eval(modules: Iterable[nn.Module]) -> None:
    """The one rule for frozen parts: a module whose parameters are all frozen stays in eval mode (no dropout, no
    batch-norm statistics updates), whatever mode its parent is put in."""
    for module in modules:
        if not _trainable(module):
            module.eval()


class DualEncoder(nn.Module):
    """Brain tower + head and one (tower + head) per genetics modality, aligned in one shared space."""

    def __init__(
        self,
        brain_dim: int,
        genetics_dims: Mapping[str, int],
        head: HeadConfig | None = None,
        *,
        brain_tower: nn.Module | None = None,
        genetics_towers: Mapping[str, nn.Module] | None = None,
        init_logit_scale: float = CLIP_INIT_LOGIT_SCALE,
        init_logit_bias: float | None = None,
    ) -> None:
        super().__init__()
        head = head or HeadConfig()
        if not genetics_dims:
            raise AlignmentInputError("genetics_dims: expected at least one genetics modality, got none")
        unknown = sorted(set(genetics_towers or {}) - set(genetics_dims))
        if unknown:
            raise AlignmentInputError(
                f"genetics_towers: modalities {unknown} have no entry in genetics_dims ({sorted(genetics_dims)})"
            )
        self.brain_tower = brain_tower if brain_tower is not None else nn.Identity()
        self.brain_head = ProjectionHead(brain_dim, head)
        towers = dict(genetics_towers or {})
        self.genetics_towers = nn.ModuleDict(
            {m: towers[m] if towers.get(m) is not None else nn.Identity() for m in genetics_dims}
        )
        self.genetics_heads = nn.ModuleDict({m: ProjectionHead(d, head) for m, d in genetics_dims.items()})
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.tensor(float(init_logit_bias)))

    @property
    def modalities(self) -> list[str]:
        """Names of the genetics modalities, in order."""
        return list(self.genetics_heads)

    @property
    def embed_dim(self) -> int:
        """Dimension of the shared space."""
        return self.brain_head.out_dim

    def _encode(self, tower: nn.Module, head: ProjectionHead, x: torch.Tensor, what: str, normalize: bool):
        if _trainable(tower):
            h = tower(x)
        else:
            with torch.no_grad():
                h = tower(x)
        if not isinstance(h, torch.Tensor) or h.ndim != 2:
            shape = list(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise AlignmentInputError(f"{what} tower: expected a [B, D] tensor, got {shape}")
        if h.shape[1] != head.in_dim:
            raise AlignmentInputError(
                f"{what}: the tower outputs {h.shape[1]}-D features but its head expects in_dim={head.in_dim}"
            )
        z = head(h)
        return F.normalize(z, dim=-1) if normalize else z

    def encode_brain(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Brain inputs [B, ...] -> shared-space features [B, embed_dim]."""
        return self._encode(self.brain_tower, self.brain_head, x, "brain", normalize)

    def encode_genetics(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Genetics inputs of one modality -> shared-space features [B, embed_dim]."""
        if modality not in self.genetics_heads:
            raise AlignmentInputError(f"genetics modality {modality!r}: unknown; expected one of {self.modalities}")
        return self._encode(
            self.genetics_towers[modality], self.genetics_heads[modality], x, f"genetics '{modality}'", normalize
        )

    def forward(self, brain: torch.Tensor, genetics: Mapping[str, torch.Tensor]) -> AlignmentOutput:
        """Encode a batch; `genetics` maps modality -> inputs (rows of absent subjects are placeholders)."""
        return AlignmentOutput(
            brain=self.encode_brain(brain),
            genetics={m: self.encode_genetics(m, x) for m, x in genetics.items()},
            logit_scale=self.logit_scale.exp(),
            logit_bias=self.logit_bias,
        )

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp the log-scale to [0, ln 100] (call after every optimiser step, as open_clip does)."""
        self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def train(self, mode: bool = True) -> DualEncoder:
        """Like nn.Module.train, but fully frozen towers stay in eval mode (no dropout/batch-norm updates)."""
        super().train(mode)
        keep_frozen_in_eval([self.brain_tower, *self.genetics_towers.values()])
        return self

    def heads_config(self) -> dict[str, Any]:
        """JSON-able description of the heads and temperature (towers are not part of it)."""
        return {
            "brain": self.brain_head.to_config(),
            "genetics": {m: h.to_config() for m, h in self.genetics_heads.items()},
            "logit_bias": self.logit_bias is not None,
        }

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of heads, standardisers and temperature (everything except the towers)."""
        return {
            k: v.detach().contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith(("brain_tower.", "genetics_towers."))
        }

    @classmethod
    def from_heads_config(cls, cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None) -> DualEncoder:
        """Rebuild a model with identity towers from `heads_config()` (and load `heads_state_dict()` weights)."""
        try:
            brain = ProjectionHead.from_config(cfg["brain"])
            genetics = {m: ProjectionHead.from_config(c) for m, c in cfg["genetics"].items()}
        except KeyError as err:
            raise AlignmentInputError(f"heads config: missing key {err}; expected 'brain' and 'genetics'") from None
        model = cls(
            brain.in_dim,
            {m: h.in_dim for m, h in genetics.items()},
            init_logit_bias=0.0 if cfg.get("logit_bias") else None,
        )
        model.brain_head = brain
        model.genetics_heads = nn.ModuleDict(genetics)
        if state is not None:
            missing, unexpected = model.load_state_dict(dict(state), strict=False)
            missing = [k for k in missing if not k.startswith(("brain_tower.", "genetics_towers."))]
            if missing or unexpected:
                raise AlignmentInputError(f"heads weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model


    def save_pretrained(self, folder: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the heads to `folder`: `heads.safetensors` (weights, standardisers, temperature) and `heads.json`
        (format tag, `heads_config()`, then `extra` keys); each file is written to a temp file, then renamed."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.cpu() for k, v in self.heads_state_dict().items()}
        _write_atomic(folder / HEADS_WEIGHTS, lambda tmp: save_file(weights, str(tmp)))
        record = {"format": HEADS_FORMAT, **self.heads_config(), **dict(extra or {})}
        _write_atomic(folder / HEADS_CONFIG, lambda tmp: tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"))
        return folder / HEADS_WEIGHTS

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> DualEncoder:
        """The heads written by `save_pretrained` (identity towers), in eval mode."""
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (HEADS_CONFIG, HEADS_WEIGHTS):
            if not (folder / name).is_file():
                raise AlignmentInputError(f"heads {folder / name}: not found (expected {HEADS_CONFIG} and "
                                          f"{HEADS_WEIGHTS} in {folder})")
        cfg = json.loads((folder / HEADS_CONFIG).read_text())
        if cfg.get("format", HEADS_FORMAT) != HEADS_FORMAT:
            raise AlignmentInputError(f"heads {folder / HEADS_CONFIG}: format {cfg['format']!r}, expected {HEADS_FORMAT!r}")
        return cls.from_heads_config(cfg, load_file(str(folder / HEADS_WEIGHTS))).eval()


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp)` on a temp sibling of `path`, then rename it into place (no half-written file)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

BlockSpec = str | Callable[[nn.Module], Sequence[nn.Module]]


def find_blocks(tower: nn.Module, blocks: BlockSpec) -> list[nn.Module]:
    """The tower's repeated blocks, in order: from a callable, or modules whose name fully matches a regex."""
    if callable(blocks):
        found = list(blocks(tower))
    else:
        pattern = re.compile(blocks)
        found = [m for name, m in tower.named_modules() if name and pattern.fullmatch(name)]
        if not found:
            names = [n for n, _ in tower.named_modules() if n][:8]
            raise AlignmentInputError(
                f"blocks pattern {blocks!r}: matches no module of the tower; module names look like {names}"
            )
    return found


def set_tower_trainable(tower: nn.Module, last_n: int | None, blocks: BlockSpec | None = None) -> list[str]:
    """Freeze a tower (`last_n=0`), fine-tune it fully (`last_n=None`) or unfreeze only its last N blocks.

    `blocks` finds the blocks: a callable `tower -> [block, ...]` or a module-name regex such as
    r"encoder\\.layer\\.\\d+". Returns the names of the parameters left trainable.
    """
    if last_n is None:
        tower.requires_grad_(True)
    else:
        if not isinstance(last_n, int) or last_n < 0:
            raise AlignmentInputError(f"last_n: expected a non-negative integer or None, got {last_n!r}")
        tower.requires_grad_(False)
        if last_n > 0:
            if blocks is None:
                raise AlignmentInputError("last_n > 0 needs `blocks` (a callable or a module-name pattern)")
            found = find_blocks(tower, blocks)
            if last_n > len(found):
                raise AlignmentInputError(f"last_n={last_n}: the tower has only {len(found)} blocks")
            for block in found[len(found) - last_n :]:
                block.requires_grad_(True)
    return [n for n, p in tower.named_parameters() if p.requires_grad]
