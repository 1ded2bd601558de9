"""Pure-torch port of Caduceus (kuleshov-group/caduceus): BiMamba blocks, RCPS (PS) and plain (Ph) variants.

The official code needs `mamba_ssm` (CUDA kernels, Triton fused add-norm). This port builds the Mamba mixers
from `transformers.models.mamba.modeling_mamba.MambaMixer` (reference scan on CPU; uses the mamba_ssm kernels
when that package is installed) and keeps the official module and parameter names, so a local snapshot of
`CaduceusForMaskedLM` loads into `Caduceus.from_pretrained` / `CaduceusForMaskedLM.from_pretrained`:

    caduceus.backbone.embeddings.word_embeddings[.embedding].weight   (+ `.complement_map` buffer, PS)
    caduceus.backbone.layers.{i}.mixer[.submodule].mamba_{fwd,rev}.{in_proj,conv1d,x_proj,dt_proj,out_proj,A_log,D}
    caduceus.backbone.layers.{i}.norm[.submodule].weight,  caduceus.backbone.norm_f[.submodule].weight
    lm_head[.lm_head].weight                                          (tied to the embedding)

`mamba_rev.in_proj` / `mamba_rev.out_proj` are tied to `mamba_fwd` (bidirectional_weight_tie); checkpoints saved
by `save_pretrained` store them once. With `fused_add_norm=True` (the shipped configs) the RCPS blocks follow the
fused Triton path, which reads the *second* channel half as the forward strand (channel halves of the residual
swap at every block); `fused_add_norm=False` follows `RCPSAddNormWrapper`. Both paths are RC-equivariant.
Numerical agreement with the official CUDA implementation has not been checked (no GPU here): see
docs/genotype-encoder.md.

Extension: `attention_mask` (absent in the official model) zeroes the mixer inputs at padding positions, so a
right-padded batch reproduces unpadded outputs for the real tokens. The character token ids and the default
`complement_map` live with the tokenizer in `encoders.dna.caduceus`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import MambaConfig, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithNoAttention, MaskedLMOutput
from transformers.models.mamba.modeling_mamba import MambaMixer

from encoders.errors import EncoderInputError


class CaduceusConfig(PreTrainedConfig):
    """Caduceus configuration (same fields and defaults as the official `CaduceusConfig`)."""

    model_type = "caduceus"

    def __init__(
        self,
        d_model: int = 2560,
        n_layer: int = 64,
        vocab_size: int = 50277,
        ssm_cfg: dict | None = None,
        rms_norm: bool = True,
        residual_in_fp32: bool = True,
        fused_add_norm: bool = True,
        pad_vocab_size_multiple: int = 8,
        norm_epsilon: float = 1e-5,
        initializer_cfg: dict | None = None,
        bidirectional: bool = True,
        bidirectional_strategy: str | None = "add",
        bidirectional_weight_tie: bool = True,
        rcps: bool = False,
        complement_map: dict | None = None,
        **kwargs,
    ):
        self.d_model = d_model
        self.n_layer = n_layer
        self.ssm_cfg = dict(ssm_cfg or {})
        self.rms_norm = rms_norm
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.pad_vocab_size_multiple = pad_vocab_size_multiple
        self.norm_epsilon = norm_epsilon
        self.initializer_cfg = initializer_cfg
        self.bidirectional = bidirectional
        self.bidirectional_strategy = bidirectional_strategy or "add"
        self.bidirectional_weight_tie = bidirectional_weight_tie
        self.rcps = rcps
        # The official model pads the vocabulary in __init__ and maps the extra ids to themselves.
        if vocab_size % pad_vocab_size_multiple:
            vocab_size += pad_vocab_size_multiple - vocab_size % pad_vocab_size_multiple
        self.vocab_size = vocab_size
        if complement_map is not None:  # JSON turns the int keys into strings
            complement_map = {int(k): int(v) for k, v in complement_map.items()}
            complement_map = {i: complement_map.get(i, i) for i in range(max(vocab_size, len(complement_map)))}
        self.complement_map = complement_map
        self.tie_word_embeddings = kwargs.pop("tie_word_embeddings", True)  # transformers 4.x default
        super().__init__(**kwargs)
        if self.bidirectional_strategy not in ("add", "ew_multiply"):
            raise EncoderInputError(f"CaduceusConfig.bidirectional_strategy must be 'add' or 'ew_multiply', got {bidirectional_strategy!r}")
        if rcps and complement_map is None:
            raise EncoderInputError("CaduceusConfig.complement_map: rcps=True needs complement_map (token id -> complement id)")

    @property
    def hidden_size(self) -> int:
        """Width of one strand's token state (the model outputs twice this with rcps=True)."""
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        """Number of Caduceus blocks."""
        return self.n_layer

    def mamba_config(self) -> MambaConfig:
        """The `MambaConfig` for one mixer, translated from `ssm_cfg` (mamba_ssm `Mamba` keyword names)."""
        ssm = self.ssm_cfg
        return MambaConfig(
            hidden_size=self.d_model,
            num_hidden_layers=self.n_layer,
            state_size=ssm.get("d_state", 16),
            conv_kernel=ssm.get("d_conv", 4),
            expand=ssm.get("expand", 2),
            time_step_rank=ssm.get("dt_rank", "auto"),
            time_step_min=ssm.get("dt_min", 0.001),
            time_step_max=ssm.get("dt_max", 0.1),
            time_step_floor=ssm.get("dt_init_floor", 1e-4),
            time_step_scale=ssm.get("dt_scale", 1.0),
            time_step_init_scheme=ssm.get("dt_init", "random"),
            use_conv_bias=ssm.get("conv_bias", True),
            use_bias=ssm.get("bias", False),
            hidden_act="silu",
            use_mambapy=False,
        )


def _rc(x: torch.Tensor) -> torch.Tensor:
    """Reverse complement of a [B, L, C] state: flip length and channels."""
    return x.flip(dims=(-2, -1))


def _flip_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask.flip(-1)


class BiMambaWrapper(nn.Module):
    """Forward Mamba + Mamba on the flipped sequence (flipped back), combined by `add` or `ew_multiply`."""

    def __init__(self, config: CaduceusConfig, layer_idx: int):
        super().__init__()
        mamba_config = config.mamba_config()
        self.strategy = config.bidirectional_strategy
        self.mamba_fwd = MambaMixer(mamba_config, layer_idx)
        self.mamba_rev = MambaMixer(mamba_config, layer_idx) if config.bidirectional else None
        if self.mamba_rev is not None and config.bidirectional_weight_tie:
            for name in ("in_proj", "out_proj"):
                getattr(self.mamba_rev, name).weight = getattr(self.mamba_fwd, name).weight
                getattr(self.mamba_rev, name).bias = getattr(self.mamba_fwd, name).bias

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, D] -> [B, L, D]; `mask` [B, L] zeroes padding positions inside both scans."""
        out = self.mamba_fwd(hidden, attention_mask=mask)
        if self.mamba_rev is None:
            return out
        rev = self.mamba_rev(hidden.flip(1), attention_mask=_flip_mask(mask)).flip(1)
        return out + rev if self.strategy == "add" else out * rev


class RCPSWrapper(nn.Module):
    """Runs `submodule` on the forward half and on the reverse complement of the second half."""

    def __init__(self, submodule: nn.Module):
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, 2D] -> [B, L, 2D], RC-equivariant."""
        d = x.shape[-1] // 2
        fwd = self.submodule(x[..., :d], mask)
        rev = self.submodule(_rc(x[..., d:]), _flip_mask(mask))
        return torch.cat([fwd, _rc(rev)], dim=-1)


class RCPSAddNormWrapper(nn.Module):
    """Holds the norm of the non-fused RCPS path (parameter names `norm.submodule.*`)."""

    def __init__(self, submodule: nn.Module):
        super().__init__()
        self.submodule = submodule

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped norm's weight."""
        return self.submodule.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the wrapped norm."""
        return self.submodule(x)


def _add_norm(norm: nn.Module, hidden: torch.Tensor, residual: torch.Tensor | None, fp32: bool):
    """Pre-norm residual step of mamba_ssm `Block`: returns (norm(hidden + residual), hidden + residual)."""
    residual = hidden if residual is None else hidden + residual
    normed = norm(residual.to(norm.weight.dtype))
    return normed, residual.float() if fp32 else residual


def _rcps_add_norm(norm: nn.Module, hidden: torch.Tensor, residual: torch.Tensor | None, fp32: bool,
                   swap: bool):
    """RC-equivariant add+norm on [fwd ‖ rc] channel halves.

    swap=False: `RCPSAddNormWrapper` (and the final norm of the fused path); swap=True: the fused block path
    of the official `RCPSMambaBlock`, which treats the second half as forward and so swaps the residual halves.
    """
    residual = hidden if residual is None else hidden + residual
    if fp32:
        residual = residual.float()
    d = residual.shape[-1] // 2
    fwd, rev = residual[..., :d], residual[..., d:]
    if swap:
        fwd, rev = rev, fwd
    dtype = norm.weight.dtype
    normed = torch.cat([norm(fwd.to(dtype)), _rc(norm(_rc(rev).to(dtype)))], dim=-1)
    return normed, torch.cat([fwd, rev], dim=-1)


def _make_norm(config: CaduceusConfig) -> nn.Module:
    if config.rms_norm:
        return nn.RMSNorm(config.d_model, eps=config.norm_epsilon)
    return nn.LayerNorm(config.d_model, eps=config.norm_epsilon)


class CaduceusBlock(nn.Module):
    """mamba_ssm `Block`: add residual -> norm -> BiMamba mixer (fused and non-fused are the same maths)."""

    def __init__(self, config: CaduceusConfig, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.mixer = BiMambaWrapper(config, layer_idx)
        self.norm = _make_norm(config)

    def forward(self, hidden, residual=None, mask=None):
        """Returns (mixer output, residual stream)."""
        normed, residual = _add_norm(self.norm, hidden, residual, self.residual_in_fp32)
        return self.mixer(normed, mask), residual


class RCPSMambaBlock(nn.Module):
    """RC-equivariant block on [fwd ‖ rc] states of width 2 * d_model."""

    def __init__(self, config: CaduceusConfig, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.fused_add_norm = config.fused_add_norm
        self.mixer = RCPSWrapper(BiMambaWrapper(config, layer_idx))
        norm = _make_norm(config)
        self.norm = norm if config.fused_add_norm else RCPSAddNormWrapper(norm)

    def forward(self, hidden, residual=None, mask=None):
        """Returns (mixer output, residual stream)."""
        normed, residual = _rcps_add_norm(self.norm, hidden, residual, self.residual_in_fp32,
                                          swap=self.fused_add_norm)
        return self.mixer(normed, mask), residual


class RCPSEmbedding(nn.Module):
    """Embeds ids and their reverse complement: [B, L] -> [B, L, 2 * d_model]."""

    def __init__(self, vocab_size: int, d_model: int, complement_map: dict[int, int]):
        super().__init__()
        self.register_buffer("complement_map", _complement_tensor(complement_map, vocab_size))
        self.embedding = nn.Embedding(vocab_size, d_model)

    @property
    def weight(self) -> torch.Tensor:
        """The embedding matrix [vocab, d_model]."""
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[fwd embedding ‖ RC of the embedded reverse complement]."""
        rc_ids = self.complement_map[input_ids.flip(-1)]
        return torch.cat([self.embedding(input_ids), _rc(self.embedding(rc_ids))], dim=-1)


def _complement_tensor(complement_map: dict[int, int], vocab_size: int) -> torch.Tensor:
    return torch.tensor([complement_map.get(i, i) for i in range(vocab_size)], dtype=torch.long)


class CaduceusEmbeddings(nn.Module):
    """Token embeddings (`word_embeddings`), RCPS or plain."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        if config.rcps:
            self.word_embeddings = RCPSEmbedding(config.vocab_size, config.d_model, config.complement_map)
        else:
            self.word_embeddings = nn.Embedding(config.vocab_size, config.d_model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] ids -> [B, L, D] states."""
        return self.word_embeddings(input_ids)


class CaduceusMixerModel(nn.Module):
    """Embeddings -> n_layer blocks -> final add+norm."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.rcps = config.rcps
        self.residual_in_fp32 = config.residual_in_fp32
        self.embeddings = CaduceusEmbeddings(config)
        block = RCPSMambaBlock if config.rcps else CaduceusBlock
        self.layers = nn.ModuleList([block(config, i) for i in range(config.n_layer)])
        norm_f = _make_norm(config)
        self.norm_f = norm_f if (config.fused_add_norm or not config.rcps) else RCPSAddNormWrapper(norm_f)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=False):
        """Returns (final states [B, L, D or 2D], list of per-layer inputs + final states)."""
        hidden = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.to(hidden.dtype)
        all_hidden = []
        residual = None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden, residual = layer(hidden, residual, mask)
        if self.rcps:
            hidden, _ = _rcps_add_norm(self.norm_f, hidden, residual, self.residual_in_fp32, swap=False)
        else:
            hidden, _ = _add_norm(self.norm_f, hidden, residual, self.residual_in_fp32)
        if output_hidden_states:
            all_hidden.append(hidden)
        return hidden, all_hidden


class CaduceusPreTrainedModel(PreTrainedModel):
    """Shared weight init and tied-parameter bookkeeping."""

    config_class = CaduceusConfig
    base_model_prefix = "caduceus"
    supports_gradient_checkpointing = False
    _no_split_modules = ["BiMambaWrapper"]
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)lm_head\."]

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """Explicit {tied parameter: source} map of this module (set in __init__ from the config)."""
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        return dict(self._tied_weights_keys or {})

    def _bimamba_ties(self, prefix: str) -> dict[str, str]:
        cfg = self.config
        if not (cfg.bidirectional and cfg.bidirectional_weight_tie):
            return {}
        inner = "mixer.submodule" if cfg.rcps else "mixer"
        kinds = ("weight", "bias") if cfg.ssm_cfg.get("bias", False) else ("weight",)
        return {
            f"{prefix}layers.{i}.{inner}.mamba_rev.{proj}.{kind}": f"{prefix}layers.{i}.{inner}.mamba_fwd.{proj}.{kind}"
            for i in range(cfg.n_layer) for proj in ("in_proj", "out_proj") for kind in kinds
        }

    def _init_weights(self, module: nn.Module) -> None:
        cfg = self.config.initializer_cfg or {}
        if isinstance(module, MambaMixer):
            module.init_mamba_weights()  # A_log, D, dt_proj (mamba_ssm scheme)
            for linear in (module.in_proj, module.x_proj, module.out_proj):
                init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
                if linear.bias is not None:
                    init.zeros_(linear.bias)
            init.kaiming_uniform_(module.conv1d.weight, a=math.sqrt(5))
            if module.conv1d.bias is not None:
                init.zeros_(module.conv1d.bias)
            weight = module.out_proj.weight
            if cfg.get("rescale_prenorm_residual", True) and not getattr(weight, "_is_hf_initialized", False):
                init.copy_(weight, weight / math.sqrt(cfg.get("n_residuals_per_layer", 1) * self.config.n_layer))
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=cfg.get("initializer_range", 0.02))
        elif isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (RCPSEmbedding, RCPSLMHead)):
            init.copy_(module.complement_map, _complement_tensor(self.config.complement_map, self.config.vocab_size))
        elif isinstance(module, nn.Linear):  # the LM head of the non-RCPS model
            init.normal_(module.weight, std=cfg.get("initializer_range", 0.02))


class Caduceus(CaduceusPreTrainedModel):
    """Caduceus backbone: ids [B, L] -> states [B, L, d_model] (Ph) or [B, L, 2 * d_model] (PS, [fwd ‖ rc])."""

    def __init__(self, config: CaduceusConfig):
        super().__init__(config)
        self.backbone = CaduceusMixerModel(config)
        self._tied_weights_keys = self._bimamba_ties("backbone.")
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding module."""
        return self.backbone.embeddings.word_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithNoAttention | tuple:
        """HF-style forward; `attention_mask` (port extension) marks real tokens (1) vs padding (0)."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        hidden, all_hidden = self.backbone(input_ids, attention_mask, inputs_embeds, output_hidden_states)
        all_hidden = tuple(all_hidden) if output_hidden_states else None
        if return_dict is False:
            return (hidden, all_hidden) if output_hidden_states else (hidden,)
        return BaseModelOutputWithNoAttention(last_hidden_state=hidden, hidden_states=all_hidden)


class RCPSLMHead(nn.Module):
    """MLM head on [fwd ‖ rc] states: forward logits + logits of the complement tokens on the rc half."""

    def __init__(self, true_dim: int, vocab_size: int, complement_map: dict[int, int]):
        super().__init__()
        self.register_buffer("complement_map", _complement_tensor(complement_map, vocab_size))
        self.lm_head = nn.Linear(true_dim, vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, 2D] -> logits [B, L, vocab]."""
        d = x.shape[-1] // 2
        weight = self.lm_head.weight
        fwd = nn.functional.linear(x[..., :d], weight)
        rev = nn.functional.linear(x[..., d:].flip(-1), weight[self.complement_map])
        return fwd + rev


class CaduceusForMaskedLM(CaduceusPreTrainedModel):
    """Caduceus + MLM head (the layout of the published checkpoints); returns logits only."""

    _keys_to_ignore_on_load_unexpected = None

    def __init__(self, config: CaduceusConfig):
        super().__init__(config)
        self.caduceus = Caduceus(config)
        if config.rcps:
            self.lm_head = RCPSLMHead(config.d_model, config.vocab_size, config.complement_map)
            tied = {"lm_head.lm_head.weight": "caduceus.backbone.embeddings.word_embeddings.embedding.weight"}
        else:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
            tied = {"lm_head.weight": "caduceus.backbone.embeddings.word_embeddings.weight"}
        # The official model ties the RCPS head unconditionally and the plain head per tie_word_embeddings.
        self._tied_weights_keys = tied if (config.rcps or config.tie_word_embeddings) else {}
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding module."""
        return self.caduceus.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=None,
                return_dict=None) -> MaskedLMOutput:
        """Logits [B, L, vocab] (and hidden states when asked)."""
        out = self.caduceus(input_ids, attention_mask, inputs_embeds, output_hidden_states, return_dict=True)
        logits = self.lm_head(out.last_hidden_state).float()
        return MaskedLMOutput(logits=logits, hidden_states=out.hidden_states)
