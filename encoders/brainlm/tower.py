"""`BrainLMTower`: a fine-tunable BrainLM encoder (either architecture) that embeds fMRI windows for alignment.

Input: windows `[B, V, T]` in the dataset's natural parcel order; the tower holds the parcel coordinates `[V, 3]`.
The Nystromformer (`brainlm_mae`) gets them as `xyz_vectors`; the ViT-MAE (`vit_mae`) uses their Y column to
reorder the parcels (as `vit_preprocess`: stable sort by Y, then / `scale`) and pads the image as its checkpoint
expects (`BrainLMViTForPretraining.to_pixels`). Output: the pooled embedding of `encode()` (no masking).

Trainable modes: `frozen` (no gradients, eval mode), `last_n` (the last N blocks + the final LayerNorm),
`full` (every parameter except the fixed sin-cos tables), `lora` (peft LoRA adapters only, `encoders.brainlm.lora`).
Whatever holds no trainable parameter (embeddings, frozen blocks) stays in eval mode when the tower trains.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from encoders.brainlm.lora import LoraSettings, inject_lora
from encoders.brainlm.modeling import BrainLMForPretraining, BrainLMModel
from encoders.brainlm.pooling import check_pooling
from encoders.brainlm.preprocessing import VIT_SCALE, sort_parcels_by_y
from encoders.brainlm.vit import NUM_PARCELS, NUM_TIMEPOINTS, BrainLMViTForPretraining
from encoders.errors import EncoderInputError

TRAINABLE = ("frozen", "last_n", "full", "lora")
POOLINGS = {"brainlm_mae": ("cls", "mean", "time_then_voxel"), "vit_mae": ("cls", "mean")}
FIXED = {"brainlm_mae": (), "vit_mae": ("vit.embeddings.position_embeddings",)}  # MAE's fixed 2-D sin-cos table


def dropout_seed(seed: int, rank: int) -> int:
    """Seed of torch's generator on torchrun rank `rank`: every rank draws its own dropout masks."""
    return int(seed) * 1_000_003 + int(rank)


class BrainLMTower(nn.Module):
    """A BrainLM encoder + parcel coordinates: windows `[B, V, T]` (natural parcel order) -> `[B, H]`.

    `model`: `BrainLMForPretraining` / `BrainLMModel` (the decoder is not kept) or `BrainLMViTForPretraining` (its
    decoder is removed). `scale`: the ViT input divisor (`VIT_SCALE`, None = none). Starts frozen; call
    `set_trainable` once.
    """

    def __init__(self, model: PreTrainedModel, coords: np.ndarray | torch.Tensor, pooling: str = "cls",
                 scale: float | None = VIT_SCALE) -> None:
        super().__init__()
        if isinstance(model, BrainLMForPretraining):
            model = model.vit
        if isinstance(model, BrainLMViTForPretraining):
            model.decoder = None  # the tower never reconstructs
            self.model_type, parcels = "vit_mae", NUM_PARCELS
        elif isinstance(model, BrainLMModel):
            self.model_type, parcels = "brainlm_mae", model.config.num_brain_voxels
        else:
            raise EncoderInputError(f"BrainLMTower: expected a BrainLM model, got {type(model).__name__}")
        self.pooling = check_pooling(pooling, POOLINGS[self.model_type])
        coords = torch.as_tensor(np.asarray(coords, dtype=np.float64) if not isinstance(coords, torch.Tensor)
                                 else coords)
        if coords.shape != (parcels, 3) or not torch.isfinite(coords).all():
            raise EncoderInputError(f"BrainLMTower coords: expected finite parcel coordinates [{parcels}, 3] (MNI mm, "
                                    f"the dataset's parcel order), got shape {tuple(coords.shape)}")
        if scale is not None and not (np.isfinite(scale) and scale > 0):
            raise EncoderInputError(f"BrainLMTower scale: expected a positive number or None, got {scale!r}")
        self.encoder = model
        self.scale = scale
        self.register_buffer("coords", coords.to(model.dtype), persistent=False)
        # the ViT's parcel order: vit_preprocess's stable sort by Y, computed once (no host sync per step)
        self.register_buffer("order", sort_parcels_by_y(coords[:, 1]), persistent=False)
        self.trainable, self.last_n, self.lora = "frozen", 0, None
        self.base = None  # set by finetune.load_tower: the checkpoint folder and its weights hash
        self.encoder.requires_grad_(False)
        self.eval()

    # ---------------------------------------------------------------------------------------------- structure

    @property
    def out_dim(self) -> int:
        """Embedding width (the encoder's hidden size)."""
        return int(self.encoder.config.hidden_size)

    @property
    def backbone(self) -> nn.Module:
        """The module holding embeddings, blocks and the final LayerNorm."""
        return self.encoder.vit if self.model_type == "vit_mae" else self.encoder

    def block_names(self) -> list[str]:
        """Module names of the blocks, relative to `encoder`."""
        prefix = "vit.layers" if self.model_type == "vit_mae" else "encoder.layer"
        return [f"{prefix}.{i}" for i in range(len(self.blocks()))]

    def blocks(self) -> list[nn.Module]:
        """The encoder blocks, input side first."""
        return list(self.backbone.layers if self.model_type == "vit_mae" else self.backbone.encoder.layer)

    def final_modules(self) -> list[nn.Module]:
        """The final LayerNorm (trains with any last-N setting)."""
        return [self.backbone.layernorm]

    def units(self) -> list[nn.Module]:
        """Embeddings, each block, final LayerNorm: the granularity of the eval-mode rule."""
        return [self.backbone.embeddings, *self.blocks(), *self.final_modules()]

    # ----------------------------------------------------------------------------------------------- training

    def set_trainable(self, trainable: str = "frozen", last_n: int = 0, lora: LoraSettings | None = None) -> list[str]:
        """Choose what trains (see the module docstring); returns the names of the trainable parameters."""
        if trainable not in TRAINABLE:
            raise EncoderInputError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
        if self.lora is not None:
            raise EncoderInputError("set_trainable: LoRA adapters are already injected; build a new tower to change mode")
        depth = len(self.blocks())
        if trainable == "last_n" and not (isinstance(last_n, int) and 1 <= last_n <= depth):
            raise EncoderInputError(f"last_n: trainable 'last_n' needs 1 <= last_n <= {depth} (the encoder has {depth} "
                                    f"blocks), got {last_n!r}")
        if trainable != "last_n" and last_n:
            raise EncoderInputError(f"last_n: only used with trainable 'last_n' (got trainable {trainable!r}, "
                                    f"last_n {last_n!r})")
        if trainable != "lora" and lora is not None:
            raise EncoderInputError(f"lora: LoRA settings need trainable 'lora', got trainable {trainable!r}")
        self.encoder.requires_grad_(False)
        if trainable == "full":
            for name, param in self.encoder.named_parameters():
                param.requires_grad_(name not in FIXED[self.model_type])
        elif trainable == "last_n":
            for module in [*self.blocks()[depth - last_n:], *self.final_modules()]:
                module.requires_grad_(True)
        elif trainable == "lora":
            lora = lora or LoraSettings()
            inject_lora(self.encoder, self.blocks(), self.block_names(), self.model_type, lora)
        self.trainable, self.last_n, self.lora = trainable, last_n, lora
        self.train(self.training)
        return self.trainable_names()

    def trainable_names(self) -> list[str]:
        """Names (relative to the tower) of the parameters that require grad."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def settings(self) -> dict[str, Any]:
        """JSON-able description: architecture, pooling, scale, trainable mode, last_n, LoRA settings."""
        return {"model_type": self.model_type, "pooling": self.pooling, "scale": self.scale,
                "trainable": self.trainable, "last_n": self.last_n,
                "lora": asdict(self.lora) if self.lora is not None else None}

    def gradient_checkpointing(self, enable: bool = True) -> None:
        """Recompute each training block in the backward pass (non-reentrant: right with frozen inputs and DDP)."""
        model = self.encoder  # transformers 5 renamed gradient_* to activation_checkpointing_* (old names deprecated)
        if enable:
            enable_fn = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable_fn({"use_reentrant": False})
        else:
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()

    def train(self, mode: bool = True) -> BrainLMTower:
        """nn.Module.train, but units (embeddings, blocks, final LayerNorm) with nothing trainable stay in eval."""
        super().train(mode)
        for unit in self.units():
            if not any(p.requires_grad for p in unit.parameters()):
                unit.eval()
        return self

    # ------------------------------------------------------------------------------------------------ forward

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        """windows `[B, V, T]` (natural parcel order, normalised as the dataset) -> pooled `[B, H]`."""
        if not isinstance(signal, torch.Tensor) or signal.ndim != 3:
            raise EncoderInputError(f"BrainLMTower: expected windows [B, V, T], got "
                                    f"{tuple(signal.shape) if isinstance(signal, torch.Tensor) else type(signal)}")
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        with torch.set_grad_enabled(grad):
            if self.model_type == "brainlm_mae":
                xyz = self.coords.to(signal.dtype).expand(signal.shape[0], -1, -1)
                return self.encoder.encode(signal, xyz, pooling=self.pooling)
            if tuple(signal.shape[1:]) != (NUM_PARCELS, NUM_TIMEPOINTS):
                raise EncoderInputError(f"BrainLMTower (ViT-MAE): windows must be [B, {NUM_PARCELS}, {NUM_TIMEPOINTS}] "
                                        f"(424 parcels, 200 time points), got {tuple(signal.shape)}")
            x = signal.index_select(1, self.order)  # == vit_preprocess(signal, coords[:, 1], scale)
            return self.encoder.encode(x / self.scale if self.scale is not None else x, pooling=self.pooling)
