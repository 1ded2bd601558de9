"""BrainLM (Nystromformer masked autoencoder): `BrainLMModel` (encoder) and `BrainLMForPretraining` (+ decoder, loss).

Numerically the original `brainlm_mae/modeling_brainlm.py` (same state-dict keys, masking, loss), with these
fixes: `decoder_hidden_size` may differ from `hidden_size`; `mask_ratio=0` gives the loss over all tokens instead
of NaN; `ids_restore` is returned; `return_dict=False` returns a tuple; gradient checkpointing covers encoder
and decoder. The unused `decoder.decoder_pred` leftover of the original is not built (ignored when loading).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from encoders.brainlm.checkpoint import CheckedFromPretrainedMixin
from encoders.brainlm.checks import check_brainlm_inputs, check_noise
from encoders.brainlm.configuration import PE_MAX_LEN, BrainLMConfig
from encoders.brainlm.layers import BrainLMLayer, BrainLMPositionalEncoding, sinusoidal_table
from encoders.brainlm.onednn import Linear
from encoders.brainlm.pooling import check_pooling, pool_latent


@dataclass
class BrainLMModelOutput(ModelOutput):
    """Masked encoder output.

    last_hidden_state: `[B, 1 + kept, H]` after the final LayerNorm; row 0 = CLS, then the kept tokens in the
        shuffled order `argsort(noise)[:, :kept]` (as in the original).
    mask: `[B, L]`, 1 = masked, in natural token order (t = v * P + p).
    ids_restore: `[B, L]`, `argsort(argsort(noise))`.
    hidden_states: input of each layer and output of the last one, before the final LayerNorm.
    """

    last_hidden_state: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class BrainLMPretrainingOutput(ModelOutput):
    """Pretraining output.

    loss: masked reconstruction loss (mse or mae over the masked tokens' timepoints; over all tokens when
        nothing is masked). logits: reconstruction `[B, V, P, ps]` of every token (None with `loss_only`). mask:
        `[B, V, P]`, 1 = masked.
    ids_restore: `[B, L]`. latent: encoder output `[B, 1 + kept, H]` (see `BrainLMModelOutput`).
    hidden_states: encoder hidden states when requested.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep `int(L * (1 - mask_ratio))` tokens with the smallest noise; returns (kept, mask [B, L], ids_restore)."""
    batch, length, dim = tokens.shape
    len_keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch, length, device=tokens.device)
    ids_shuffle = torch.argsort(noise.to(tokens.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = (ids_restore >= len_keep).to(tokens.dtype)  # == the original's unshuffled ones/zeros mask
    return kept, mask, ids_restore


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, loss_fn: str, any_masked: bool = True
) -> torch.Tensor:
    """Masked mse/mae: sum(err * m) / sum(m) over every timepoint of the masked tokens; all tokens if none is masked.

    pred/target `[B, V, P, ps]`, mask `[B, V, P]` (1 = masked). The batch-global mean of the original;
    `any_masked=False` (mask_ratio 0, or pred/target holding only the masked tokens) gives the mean over every
    given token instead of the original's 0/0 = NaN.
    """
    diff = pred - target
    err = diff.square() if loss_fn == "mse" else diff.abs()
    if not any_masked:
        return err.mean()
    return (err * mask.unsqueeze(-1)).sum() / (mask.sum() * pred.shape[-1])


class BrainLMEmbeddings(nn.Module):
    """Token embedding: Linear(patch) + Linear(xyz) + sinusoidal time-patch encoding; the CLS token gets neither."""

    def __init__(self, config: BrainLMConfig):
        super().__init__()
        self.patch_size = config.timepoint_patching_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.signal_embedding_projection = nn.Linear(config.timepoint_patching_size, config.hidden_size)
        self.xyz_embedding_projection = nn.Linear(3, config.hidden_size)
        self.pos_embedding = BrainLMPositionalEncoding(config.hidden_size, PE_MAX_LEN)

    def forward(self, signal: torch.Tensor, xyz: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """signal [B, V, T], xyz [B, V, 3] -> tokens [B, V * P, H], token t = v * P + p."""
        batch, voxels, timepoints = signal.shape
        patches = timepoints // self.patch_size
        x = self.signal_embedding_projection(signal.reshape(batch, voxels, patches, self.patch_size))
        x = x + self.xyz_embedding_projection(xyz).unsqueeze(2)
        x = self.pos_embedding(x, deterministic)
        return x.flatten(1, 2)

    def prepend_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, H] -> [B, 1 + N, H] with the CLS token first."""
        return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)


class BrainLMEncoder(nn.Module):
    """A stack of `BrainLMLayer`s (no attention mask)."""

    def __init__(self, config: BrainLMConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            BrainLMLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size,
                         config.conv_kernel_size, config.hidden_act, config.layer_norm_eps, config.hidden_dropout_prob)
            for _ in range(config.num_hidden_layers)
        )

    def forward(
        self, hidden_states: torch.Tensor, output_hidden_states: bool = False, deterministic: bool = False,
        last_rows: int | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Run all layers; optionally collect (input, output of each layer). `last_rows=n`: the last layer computes
        only its first n output rows (exact; the other rows' outputs are not needed, e.g. for a CLS embedding)."""
        states = (hidden_states,) if output_hidden_states else None
        for i, layer in enumerate(self.layer):
            queries = last_rows if i == len(self.layer) - 1 else None
            hidden_states = layer(hidden_states, deterministic=deterministic, queries=queries)
            if output_hidden_states:
                states += (hidden_states,)
        return hidden_states, states


class BrainLMDecoder(nn.Module):
    """MAE decoder: embed latents, insert mask tokens, unshuffle, add xyz + time encodings, layers, patch head."""

    def __init__(self, config: BrainLMConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.decoder_embed = Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder_layers = nn.ModuleList(
            BrainLMLayer(width, config.decoder_num_attention_heads, config.decoder_intermediate_size,
                         config.conv_kernel_size, config.hidden_act, config.layer_norm_eps, config.hidden_dropout_prob)
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.decoder_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        # The original sizes these two with hidden_size (so it only ran with decoder width == hidden size);
        # the decoder width is used here, which is the same thing for every existing checkpoint.
        self.decoder_xyz_projection = nn.Linear(3, width)
        self.pos_embedding = BrainLMPositionalEncoding(width, PE_MAX_LEN)
        self.decoder_pred1 = Linear(width, width // 2)
        self.decoder_pred2 = nn.Linear(width // 2, config.timepoint_patching_size)
        self.use_tanh = config.use_tanh_decoder

    def forward(
        self, latent: torch.Tensor, xyz: torch.Tensor, ids_restore: torch.Tensor, patches: int,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latent [B, 1 + kept, H], xyz [B, V, 3], ids_restore [B, L] -> reconstruction [B, V, P, ps]; with `rows`
        (token indices `[B, n]`) the last layer computes only those tokens and the result is `[B, n, ps]`."""
        batch, voxels = xyz.shape[:2]
        z = self.decoder_embed(latent)
        width = z.shape[-1]
        length = ids_restore.shape[1]
        tokens = torch.cat([z[:, 1:], self.mask_token.expand(batch, length - z.shape[1] + 1, width)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, width))
        tokens = tokens.view(batch, voxels, patches, width) + self.decoder_xyz_projection(xyz).unsqueeze(2)
        tokens = self.pos_embedding(tokens)
        h = torch.cat([z[:, :1], tokens.flatten(1, 2)], dim=1)
        last = len(self.decoder_layers) - 1
        for i, layer in enumerate(self.decoder_layers):
            h = layer(h, queries=rows + 1 if rows is not None and i == last else None)  # + 1: the CLS row
        h = self.decoder_norm(h if rows is not None else h[:, 1:])  # the CLS row is never used by the patch head
        y = self.decoder_pred2(F.leaky_relu(self.decoder_pred1(h), 0.1))
        if self.use_tanh:
            y = torch.tanh(y)
        # float32 logits (and loss) under bf16 autocast too; float64 stays float64
        y = y.to(torch.promote_types(y.dtype, torch.float32))
        return y if rows is not None else y.view(batch, voxels, patches, -1)


class BrainLMPreTrainedModel(CheckedFromPretrainedMixin, PreTrainedModel):
    """Shared loading, saving and weight initialisation (the original rule, reference section 2.8)."""

    config_class = BrainLMConfig
    base_model_prefix = "vit"
    main_input_name = "signal_vectors"
    supports_gradient_checkpointing = True
    checkpoint_model_type = "brainlm_mae"
    checkpoint_hint = " (a ViT-MAE BrainLM checkpoint, model_type 'vit_mae', loads with BrainLMViTForPretraining)"
    # deterministic sinusoidal tables: regenerated when a checkpoint lacks them
    _keys_to_ignore_on_load_missing = [r"pos_embedding\.pe$"]
    # the original's unused ViT-MAE leftover Linear(decoder width, 768)
    _keys_to_ignore_on_load_unexpected = [r"decoder\.decoder_pred\."]

    def _init_weights(self, module: nn.Module) -> None:
        """Encoder: N(0, initializer_range) Linear/Conv weights, zero biases; decoder: xavier-uniform Linear weights,
        PyTorch-default conv weights; LayerNorm 1/0; CLS and mask tokens N(0, initializer_range)."""
        std = self.config.initializer_range
        if isinstance(module, BrainLMPositionalEncoding):
            init.copy_(module.pe, sinusoidal_table(*module.pe.shape, device=module.pe.device))
        elif isinstance(module, BrainLMDecoder):  # runs after its children, so this overrides their defaults
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    init.xavier_uniform_(sub.weight)
                    init.zeros_(sub.bias)
                elif isinstance(sub, nn.Conv2d):
                    init.kaiming_uniform_(sub.weight, a=math.sqrt(5))
            init.normal_(module.mask_token, std=std)
        elif isinstance(module, BrainLMEmbeddings):
            init.normal_(module.cls_token, std=std)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def _check_inputs(self, signal_vectors: object, xyz_vectors: object) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        like = next(self.parameters())
        return check_brainlm_inputs(signal_vectors, xyz_vectors, cfg.num_brain_voxels, cfg.timepoint_patching_size,
                                    PE_MAX_LEN, like)


class BrainLMModel(BrainLMPreTrainedModel):
    """The BrainLM encoder. `forward` masks like the original `model.vit`; `encode` embeds whole recordings."""

    # the decoder of a full pretraining checkpoint is simply not used by the encoder
    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: BrainLMConfig):
        super().__init__(config)
        self.embeddings = BrainLMEmbeddings(config)
        self.encoder = BrainLMEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def masked_encode(
        self, signal: torch.Tensor, xyz: torch.Tensor, noise: torch.Tensor | None, output_hidden_states: bool
    ) -> BrainLMModelOutput:
        """Encode checked inputs with random masking (`config.mask_ratio`, read at call time)."""
        tokens = self.embeddings(signal, xyz)
        check_noise(noise, tokens.shape[0], tokens.shape[1])
        kept, mask, ids_restore = random_masking(tokens, self.config.mask_ratio, noise)
        hidden, states = self.encoder(self.embeddings.prepend_cls(kept), output_hidden_states)
        return BrainLMModelOutput(last_hidden_state=self.layernorm(hidden), mask=mask, ids_restore=ids_restore,
                                  hidden_states=states)

    def forward(
        self,
        signal_vectors: torch.Tensor,
        xyz_vectors: torch.Tensor,
        noise: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> BrainLMModelOutput | tuple:
        """signal [B, V, T], xyz [B, V, 3] (MNI mm), optional noise [B, V * T/ps] -> masked encoder output."""
        signal, xyz = self._check_inputs(signal_vectors, xyz_vectors)
        out = self.masked_encode(signal, xyz, noise, output_hidden_states)
        return out if return_dict else out.to_tuple()

    def encode(
        self,
        signal_vectors: torch.Tensor,
        xyz_vectors: torch.Tensor,
        pooling: str = "cls",
        return_tokens: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embed whole recordings: every token, natural order, no masking, no dropout -> `[B, H]`.

        Deterministic (no RNG use) and independent of `config.mask_ratio`. The vectors are taken after the final
        LayerNorm. `pooling`: `cls` = the CLS token; `mean` = mean over all V * P parcel-patch tokens (CLS
        excluded); `time_then_voxel` = tokens as `[B, V, P, H]`, mean over the P time patches, then over the V
        parcels. With `return_tokens=True` also returns the token grid `[B, V, P, H]`. Gradients flow when enabled.
        For `cls` without tokens the last layer computes the CLS row alone (the same vector, less work).
        """
        check_pooling(pooling)
        signal, xyz = self._check_inputs(signal_vectors, xyz_vectors)
        batch, voxels, timepoints = signal.shape
        patches = timepoints // self.config.timepoint_patching_size
        tokens = self.embeddings(signal, xyz, deterministic=True)
        cls_only = pooling == "cls" and not return_tokens  # then the last layer computes the CLS row alone
        hidden, _ = self.encoder(self.embeddings.prepend_cls(tokens), deterministic=True,
                                 last_rows=1 if cls_only else None)
        latent = self.layernorm(hidden)
        pooled = pool_latent(latent, pooling, (voxels, patches))
        if return_tokens:
            return pooled, latent[:, 1:].reshape(batch, voxels, patches, -1)
        return pooled


class BrainLMForPretraining(BrainLMPreTrainedModel):
    """BrainLM masked autoencoder: `BrainLMModel` (as `vit`) + `BrainLMDecoder` + masked mse/mae loss."""

    def __init__(self, config: BrainLMConfig):
        super().__init__(config)
        self.vit = BrainLMModel(config)
        self.decoder = BrainLMDecoder(config)
        self.post_init()
        # post_init merged the encoder's "ignore any decoder.*" rule; here only the original's leftover is ignored
        self._keys_to_ignore_on_load_unexpected = set(BrainLMPreTrainedModel._keys_to_ignore_on_load_unexpected)

    def forward(
        self,
        signal_vectors: torch.Tensor,
        xyz_vectors: torch.Tensor,
        noise: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        loss_only: bool = False,
    ) -> BrainLMPretrainingOutput | tuple:
        """signal [B, V, T], xyz [B, V, 3] (MNI mm), optional noise [B, V * T/ps] (small = kept).

        Keeps `int(L * (1 - config.mask_ratio))` tokens, reconstructs all of them, returns loss, logits
        `[B, V, P, ps]`, mask `[B, V, P]`, ids_restore `[B, L]`, latent `[B, 1 + kept, H]` (and hidden states).
        `loss_only=True` (a training step): the decoder's last layer computes only the masked tokens, which are all
        the loss reads; the same loss (up to summation order) and gradients, no logits.
        """
        signal, xyz = self._check_inputs(signal_vectors, xyz_vectors)
        batch, voxels, timepoints = signal.shape
        patch_size = self.config.timepoint_patching_size
        patches = timepoints // patch_size
        enc = self.vit.masked_encode(signal, xyz, noise, output_hidden_states)
        mask = enc.mask.view(batch, voxels, patches)
        kept = enc.last_hidden_state.shape[1] - 1
        any_masked = kept < voxels * patches  # from shapes: no device sync
        if loss_only and any_masked:
            rows = torch.sort(torch.argsort(enc.ids_restore, dim=1)[:, kept:], dim=1).values  # the masked tokens
            pred = self.decoder(enc.last_hidden_state, xyz, enc.ids_restore, patches, rows)
            target = torch.gather(signal.view(batch, -1, patch_size), 1, rows.unsqueeze(-1).expand(-1, -1, patch_size))
            logits, loss = None, reconstruction_loss(pred, target, None, self.config.loss_fn, any_masked=False)
        else:
            logits = self.decoder(enc.last_hidden_state, xyz, enc.ids_restore, patches)
            target = signal.view(batch, voxels, patches, patch_size)
            loss = reconstruction_loss(logits, target, mask, self.config.loss_fn, any_masked)
        out = BrainLMPretrainingOutput(loss=loss, logits=logits, mask=mask, ids_restore=enc.ids_restore,
                                       latent=enc.last_hidden_state, hidden_states=enc.hidden_states)
        return out if return_dict else out.to_tuple()

    def encode(
        self,
        signal_vectors: torch.Tensor,
        xyz_vectors: torch.Tensor,
        pooling: str = "cls",
        return_tokens: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The encoder's `BrainLMModel.encode` (the decoder is not run); see there for the pooling modes."""
        return self.vit.encode(signal_vectors, xyz_vectors, pooling=pooling, return_tokens=return_tokens)
