"""`BrainLMConfig`: the configuration of the Nystromformer BrainLM masked autoencoder (`model_type="brainlm_mae"`).

Field names and defaults are those of the original `brainlm_mae/configuration_brainlm.py`, so the original
`config.json` files load unchanged. Checks run at construction and raise `EncoderInputError`.
"""

from __future__ import annotations

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from encoders.errors import EncoderInputError

LOSS_FUNCTIONS = ("mse", "mae")
PE_MAX_LEN = 5000  # rows of the original sinusoidal table: at most 5000 time patches per parcel


class BrainLMConfig(PreTrainedConfig):
    """Configuration of BrainLM (Nystromformer MAE); defaults are the original `BrainLMConfig` defaults.

    Shapes: a recording is `[num_brain_voxels, T]`, cut into `T // timepoint_patching_size` patches per parcel;
    one token per (parcel, patch). `num_timepoints_per_voxel` is informational (any T divisible by the patch
    size is accepted). Unused fields (`image_size`, `patch_size`, `num_channels`, `qkv_bias`, `norm_pix_loss`,
    `attention_probs_dropout_prob`, `inv_coeff_init_option`) are kept so original files round-trip; the
    original never applies attention dropout either.
    """

    model_type = "brainlm_mae"

    hidden_size: int = 256
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    decoder_num_attention_heads: int = 8
    decoder_hidden_size: int = 256
    decoder_num_hidden_layers: int = 4
    decoder_intermediate_size: int = 1024
    num_brain_voxels: int = 424
    num_timepoints_per_voxel: int = 490
    mask_ratio: float = 0.5
    timepoint_patching_size: int = 49
    use_tanh_decoder: bool = False
    norm_pix_loss: bool = False
    loss_fn: str = "mse"
    segment_means_seq_len: int = 64
    num_landmarks: int = 64
    conv_kernel_size: int | None = 65
    inv_coeff_init_option: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise `EncoderInputError` naming the first field that BrainLM cannot run with."""
        for name in ("hidden_size", "num_attention_heads", "intermediate_size", "decoder_hidden_size",
                     "decoder_num_attention_heads", "decoder_intermediate_size", "num_brain_voxels",
                     "timepoint_patching_size", "num_hidden_layers", "decoder_num_hidden_layers"):
            value = getattr(self, name)
            least = 0 if name.endswith("num_hidden_layers") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                kind = "a non-negative" if least == 0 else "a positive"
                raise EncoderInputError(f"BrainLMConfig.{name} must be {kind} integer, got {value!r}")
        for width, heads in (("hidden_size", "num_attention_heads"),
                             ("decoder_hidden_size", "decoder_num_attention_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise EncoderInputError(
                    f"BrainLMConfig.{width}={getattr(self, width)} must be divisible by "
                    f"{heads}={getattr(self, heads)}"
                )
            if getattr(self, width) % 2:
                raise EncoderInputError(
                    f"BrainLMConfig.{width} must be even (sinusoidal time encoding), got {getattr(self, width)}"
                )
        if self.num_landmarks != self.segment_means_seq_len:
            raise EncoderInputError(
                f"BrainLMConfig: num_landmarks ({self.num_landmarks}) must equal segment_means_seq_len "
                f"({self.segment_means_seq_len}). Only that setting gives exact softmax attention, which every "
                "released BrainLM checkpoint uses; the original Nystrom approximation crashes on BrainLM sequence "
                "lengths and is not supported."
            )
        k = self.conv_kernel_size
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0):
            raise EncoderInputError(
                f"BrainLMConfig.conv_kernel_size must be a positive odd integer or null, got {k!r} "
                "(an even kernel changes the sequence length in the original code)"
            )
        if self.loss_fn not in LOSS_FUNCTIONS:
            raise EncoderInputError(f"BrainLMConfig.loss_fn must be one of {LOSS_FUNCTIONS}, got {self.loss_fn!r}")
        if not isinstance(self.mask_ratio, (int, float)) or not 0.0 <= self.mask_ratio < 1.0:
            raise EncoderInputError(f"BrainLMConfig.mask_ratio must be in [0, 1), got {self.mask_ratio!r}")
        if self.hidden_act not in ACT2FN:
            raise EncoderInputError(f"BrainLMConfig.hidden_act {self.hidden_act!r} is not a transformers activation")
        if not 0.0 <= self.hidden_dropout_prob < 1.0:
            raise EncoderInputError(
                f"BrainLMConfig.hidden_dropout_prob must be in [0, 1), got {self.hidden_dropout_prob!r}"
            )


__all__ = ["BrainLMConfig"]
