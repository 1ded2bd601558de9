"""BrainLM ViT-MAE (vitmae_111M / vitmae_650M): transformers' `ViTMAEForPreTraining` on a -1-padded parcel x time image.

A recording `[B, 424, 200]` (parcels sorted by Y, see `preprocessing.vit_preprocess`) is repeated on 3 channels and
padded with -1 to 432 x 432 (patch 16) or 434 x 434 (patch 14), exactly as the original
`modeling_vit_mae_with_padding.py`. Reconstructions come back cropped and averaged over the channels; the loss is
the original per-pixel masked MSE over the 424 x 200 data region (not ViT-MAE's loss over padded patches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers import initialization as init
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.vit_mae.modeling_vit_mae import (
    ViTMAEDecoder,
    ViTMAEEmbeddings,
    build_2d_sinusoidal_position_embedding,
)
from transformers.utils import ModelOutput

from encoders.brainlm.checkpoint import CheckedFromPretrainedMixin
from encoders.brainlm.checks import check_finite, check_noise, check_tensor
from encoders.brainlm.pooling import check_pooling
from encoders.errors import EncoderInputError

NUM_PARCELS = 424
NUM_TIMEPOINTS = 200
PADDED_SIZE = {16: 432, 14: 434}  # hard-coded by patch size in the original
TRAIN_MODE = "auto_encode"


def padding(patch_size: int) -> tuple[int, int, int]:
    """(padded side S, rows of -1 above the data, columns of -1 left of the data) for `patch_size`."""
    side = PADDED_SIZE[patch_size]
    return side, (side - NUM_PARCELS) // 2, (side - NUM_TIMEPOINTS) // 2


def data_patches(patch_size: int) -> torch.Tensor:
    """Boolean `[G * G]`: which patches (row-major) hold at least one data pixel (351 of 729 / 465 of 961)."""
    side, top, left = padding(patch_size)
    starts = torch.arange(0, side, patch_size)
    rows = (starts + patch_size > top) & (starts < top + NUM_PARCELS)
    cols = (starts + patch_size > left) & (starts < left + NUM_TIMEPOINTS)
    return (rows[:, None] & cols[None, :]).flatten()


def sincos_table(grid: int, dim: int) -> torch.Tensor:
    """The original MAE 2-D sin-cos table `[1, 1 + grid^2, dim]` (column block first, zero CLS row)."""
    table = build_2d_sinusoidal_position_embedding(grid, grid, dim, cls_token=True)
    half = dim // 2
    return torch.cat([table[:, half:], table[:, :half]], dim=-1).unsqueeze(0)


@dataclass
class BrainLMViTPretrainingOutput(ModelOutput):
    """loss: masked per-pixel MSE over the 424 x 200 region (all pixels if nothing is masked).

    logits: reconstruction `[B, 424, 200]`. mask: pixel mask `[B, 424, 200]` (1 = masked). token_mask: `[B, L]`
    over the patch grid (row-major). ids_restore: `[B, L]`. latent: `[B, 1 + kept, H]` after the final LayerNorm,
    kept patches in shuffled order. hidden_states: encoder states (embeddings, then each layer) when requested.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    ids_restore: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class BrainLMViTForPretraining(CheckedFromPretrainedMixin, ViTMAEForPreTraining):
    """transformers' `ViTMAEForPreTraining` with BrainLM's padding, loss and a deterministic `encode`.

    Loads original checkpoint folders (`model_type` "vit_mae"; 4.28-era key names are renamed on load).
    """

    main_input_name = "signal_vectors"
    checkpoint_model_type = "vit_mae"
    checkpoint_hint = " (a Nystromformer BrainLM checkpoint, model_type 'brainlm_mae', loads with BrainLMForPretraining)"

    def __init__(self, config: ViTMAEConfig):
        patch = config.patch_size
        if isinstance(patch, bool) or not isinstance(patch, int) or patch not in PADDED_SIZE:
            raise EncoderInputError(f"ViT-MAE BrainLM config: patch_size must be 16 or 14 (padded to 432 / 434), "
                                    f"got {patch!r}")
        if getattr(config, "train_mode", TRAIN_MODE) != TRAIN_MODE:
            raise EncoderInputError(f"ViT-MAE BrainLM config: only train_mode {TRAIN_MODE!r} is supported, got "
                                    f"{config.train_mode!r}")
        if config.num_channels != 3:
            raise EncoderInputError(f"ViT-MAE BrainLM config: num_channels must be 3, got {config.num_channels!r}")
        config.image_size = PADDED_SIZE[patch]  # the padded image is the only geometry these models see
        config.train_mode = TRAIN_MODE
        super().__init__(config)
        if self.vit.embeddings.cls_token.device.type != "meta":  # a fresh model (from_pretrained loads instead)
            self._init_embeddings(self.vit.embeddings)

    def _init_embeddings(self, module: ViTMAEEmbeddings) -> None:
        """Original MAE init of the encoder embeddings: sin-cos table, xavier patch projection, N(0, std) CLS.

        transformers 5 skips this for a freshly built model (its sub-model init returns early), leaving zeros.
        """
        grid = PADDED_SIZE[self.config.patch_size] // self.config.patch_size
        init.copy_(module.position_embeddings, sincos_table(grid, module.position_embeddings.shape[-1]))
        weight = module.patch_embeddings.projection.weight
        init.xavier_uniform_(weight.view(weight.shape[0], -1))
        init.normal_(module.cls_token, std=self.config.initializer_range)

    def _init_weights(self, module: torch.nn.Module) -> None:
        """ViT-MAE init, plus the decoder sin-cos table and mask token that transformers 5 leaves at zero."""
        super()._init_weights(module)
        grid = PADDED_SIZE[self.config.patch_size] // self.config.patch_size
        std = self.config.initializer_range
        if isinstance(module, ViTMAEEmbeddings):
            self._init_embeddings(module)
        elif isinstance(module, ViTMAEDecoder):
            init.copy_(module.decoder_pos_embed, sincos_table(grid, module.decoder_pos_embed.shape[-1]))
            init.normal_(module.mask_token, std=std)

    def _check_signal(self, signal_vectors: object) -> torch.Tensor:
        signal = check_tensor("signal_vectors", signal_vectors, 3)
        if tuple(signal.shape[1:]) != (NUM_PARCELS, NUM_TIMEPOINTS):
            raise EncoderInputError(f"signal_vectors must be [B, {NUM_PARCELS}, {NUM_TIMEPOINTS}] (parcels sorted by "
                                    f"Y, see vit_preprocess), got {tuple(signal.shape)}")
        like = self.vit.embeddings.cls_token
        signal = signal.to(device=like.device, dtype=like.dtype)
        check_finite("signal_vectors", signal)
        return signal

    def to_pixels(self, signal: torch.Tensor) -> torch.Tensor:
        """`[B, 424, 200]` -> the padded 3-channel image `[B, 3, S, S]` (-1 outside the data)."""
        side, top, left = padding(self.config.patch_size)
        pixels = signal.new_full((signal.shape[0], 3, side, side), -1.0)
        pixels[:, :, top:top + NUM_PARCELS, left:left + NUM_TIMEPOINTS] = signal.unsqueeze(1)
        return pixels

    def from_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Decoder patches `[B, G * G, p * p * 3]` -> cropped, channel-averaged `[B, 424, 200]`."""
        patch = self.config.patch_size
        side, top, left = padding(patch)
        grid = side // patch
        image = patches.view(patches.shape[0], grid, grid, patch, patch, 3).mean(dim=-1)
        image = image.permute(0, 1, 3, 2, 4).reshape(patches.shape[0], side, side)
        return image[:, top:top + NUM_PARCELS, left:left + NUM_TIMEPOINTS]

    def pixel_mask(self, token_mask: torch.Tensor) -> torch.Tensor:
        """Token mask `[B, G * G]` -> pixel mask `[B, 424, 200]` (1 = masked)."""
        patch = self.config.patch_size
        side, top, left = padding(patch)
        grid = side // patch
        image = token_mask.view(-1, grid, 1, grid, 1).expand(-1, grid, patch, grid, patch).reshape(-1, side, side)
        return image[:, top:top + NUM_PARCELS, left:left + NUM_TIMEPOINTS]

    def forward(
        self,
        signal_vectors: torch.Tensor,
        noise: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> BrainLMViTPretrainingOutput | tuple:
        """signal `[B, 424, 200]`, optional noise `[B, G * G]` (argsort order = keep order; honoured)."""
        signal = self._check_signal(signal_vectors)
        grid = PADDED_SIZE[self.config.patch_size] // self.config.patch_size
        check_noise(noise, signal.shape[0], grid * grid)
        enc = self.vit(self.to_pixels(signal), noise=noise, output_hidden_states=output_hidden_states)
        logits = self.decoder(enc.last_hidden_state, enc.ids_restore).logits
        logits = self.from_patches(logits.to(torch.promote_types(logits.dtype, torch.float32)))  # fp32 under bf16
        mask = self.pixel_mask(enc.mask)
        err = (logits - signal).square()
        nothing_masked = enc.last_hidden_state.shape[1] - 1 == grid * grid  # from shapes: no device sync
        loss = err.mean() if nothing_masked else (err * mask).sum() / mask.sum()
        out = BrainLMViTPretrainingOutput(loss=loss, logits=logits, mask=mask, token_mask=enc.mask,
                                          ids_restore=enc.ids_restore, latent=enc.last_hidden_state,
                                          hidden_states=enc.hidden_states if output_hidden_states else None)
        return out if return_dict else out.to_tuple()

    def encode(
        self, signal_vectors: torch.Tensor, pooling: str = "cls", return_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embed whole recordings `[B, 424, 200]` -> `[B, H]`: every patch, natural order, no masking.

        Deterministic and independent of `config.mask_ratio`; vectors after the final LayerNorm. `cls` = the CLS
        token; `mean` = mean over the patches that hold data (351 of 729 for patch 16, 465 of 961 for patch 14;
        patches that are all -1 padding are excluded). `return_tokens=True` also returns all patch tokens
        `[B, G * G, H]` (row-major grid). Dropout follows the module mode (0 in the released configs).
        """
        check_pooling(pooling, ("cls", "mean"))
        signal = self._check_signal(signal_vectors)
        emb = self.vit.embeddings
        tokens = emb.patch_embeddings(self.to_pixels(signal)) + emb.position_embeddings[:, 1:]
        cls = (emb.cls_token + emb.position_embeddings[:, :1]).expand(tokens.shape[0], -1, -1)
        hidden = torch.cat([cls, tokens], dim=1)
        for layer in self.vit.layers:
            hidden = layer(hidden, None)
        hidden = self.vit.layernorm(hidden)
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = hidden[:, 1:][:, data_patches(self.config.patch_size).to(hidden.device)].mean(dim=1)
        return (pooled, hidden[:, 1:]) if return_tokens else pooled


# transformers applies the 4.28 -> 5 key renames only to its own classes unless a mapping is registered by name
register_checkpoint_conversion_mapping(
    BrainLMViTForPretraining.__name__, get_checkpoint_conversion_mapping("ViTMAEForPreTraining"), overwrite=True
)
