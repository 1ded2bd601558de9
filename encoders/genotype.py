"""ContIG-style MLP encoder for genotype matrices (SNP dosages, optionally polygenic scores) -> [B, D]."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from encoders.errors import EncoderInputError

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
_NORMS = ("batchnorm", "layernorm", "none")


class GenotypeEncoderConfig(PreTrainedConfig):
    """Configuration of `GenotypeEncoder`: input widths, hidden widths, output width, activation, norm, dropout."""

    model_type = "brainmm_genotype_mlp"

    def __init__(
        self,
        n_snps: int = 1000,
        n_scores: int = 0,
        hidden_sizes: list[int] | tuple[int, ...] = (1024,),
        output_size: int = 512,
        activation: str = "relu",
        norm: str = "batchnorm",
        dropout: float = 0.1,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.n_snps = int(n_snps)
        self.n_scores = int(n_scores)
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        self.output_size = int(output_size)
        self.activation = activation
        self.norm = norm
        self.dropout = float(dropout)
        self.initializer_range = float(initializer_range)
        super().__init__(**kwargs)
        self.validate_fields()

    def validate_fields(self) -> None:
        """Raise EncoderInputError naming the first invalid field."""
        if self.n_snps < 1:
            raise EncoderInputError(f"GenotypeEncoderConfig.n_snps must be >= 1, got {self.n_snps}")
        if self.n_scores < 0:
            raise EncoderInputError(f"GenotypeEncoderConfig.n_scores must be >= 0, got {self.n_scores}")
        if any(h < 1 for h in self.hidden_sizes):
            raise EncoderInputError(f"GenotypeEncoderConfig.hidden_sizes must be positive, got {self.hidden_sizes}")
        if self.output_size < 1:
            raise EncoderInputError(f"GenotypeEncoderConfig.output_size must be >= 1, got {self.output_size}")
        if self.activation not in _ACTIVATIONS:
            raise EncoderInputError(
                f"GenotypeEncoderConfig.activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.norm not in _NORMS:
            raise EncoderInputError(f"GenotypeEncoderConfig.norm must be one of {list(_NORMS)}, got {self.norm!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise EncoderInputError(f"GenotypeEncoderConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def input_size(self) -> int:
        """Width of the concatenated input (SNPs then scores)."""
        return self.n_snps + self.n_scores


class GenotypeEncoder(PreTrainedModel):
    """MLP tower: [dosages ‖ scores] -> standardise -> (Linear -> act -> norm -> dropout) x depth -> Linear.

    `forward` returns [B, output_size] and is trainable; `encode` is the batched no-grad variant. Input
    standardisation (`input_mean`, `input_std` buffers, identity until `fit_input_scaling`) is saved with the weights.
    """

    config_class = GenotypeEncoderConfig
    base_model_prefix = "genotype"
    main_input_name = "dosages"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a saved folder; its weight files are checked first (a pickle is refused naming the global it needs)."""
        from pathlib import Path

        from encoders.weights import check_weight_files

        if Path(pretrained_model_name_or_path).is_dir():
            check_weight_files(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def __init__(self, config: GenotypeEncoderConfig):
        super().__init__(config)
        self.register_buffer("input_mean", torch.zeros(config.input_size))
        self.register_buffer("input_std", torch.ones(config.input_size))
        layers: list[nn.Module] = []
        width = config.input_size
        for hidden in config.hidden_sizes:
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[config.activation]()]
            if config.norm == "batchnorm":
                layers.append(nn.BatchNorm1d(hidden))
            elif config.norm == "layernorm":
                layers.append(nn.LayerNorm(hidden))
            layers.append(nn.Dropout(config.dropout))
            width = hidden
        layers.append(nn.Linear(width, config.output_size))
        self.mlp = nn.Sequential(*layers)
        self.post_init()

    @property
    def output_size(self) -> int:
        """Width of the returned embedding."""
        return self.config.output_size

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            from transformers import initialization as init

            init.zeros_(self.input_mean)
            init.ones_(self.input_std)

    @torch.no_grad()
    def fit_input_scaling(self, dosages: torch.Tensor, scores: torch.Tensor | None = None) -> None:
        """Set the per-column mean/std from TRAINING-split inputs (monomorphic columns keep std 1)."""
        x = self._check_inputs(dosages, scores).double()
        if x.shape[0] < 2:
            raise EncoderInputError("fit_input_scaling needs at least 2 training rows in 'dosages'")
        std = x.std(dim=0)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        self.input_mean.copy_(x.mean(dim=0).to(self.input_mean.dtype))
        self.input_std.copy_(std.to(self.input_std.dtype))

    def _check_inputs(self, dosages: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
        """Validate shapes/values and return the concatenated float input [B, n_snps + n_scores]."""
        cfg = self.config
        if not isinstance(dosages, torch.Tensor) or dosages.ndim != 2 or dosages.shape[1] != cfg.n_snps:
            shape = list(dosages.shape) if isinstance(dosages, torch.Tensor) else type(dosages).__name__
            raise EncoderInputError(
                f"GenotypeEncoder: 'dosages' must be a tensor of shape [batch, n_snps={cfg.n_snps}], got {shape}"
            )
        x = dosages.to(dtype=self.input_mean.dtype, device=self.input_mean.device)
        if torch.isnan(x).any():
            raise EncoderInputError(
                "GenotypeEncoder: 'dosages' contain NaN; impute missing calls first "
                "(e.g. per-SNP mode or mean computed on the training split)"
            )
        if x.numel() and (x.min() < 0 or x.max() > 2):
            raise EncoderInputError(
                f"GenotypeEncoder: 'dosages' must lie in [0, 2] (alt-allele dosage), got range "
                f"[{x.min().item():g}, {x.max().item():g}]"
            )
        if cfg.n_scores == 0:
            if scores is not None:
                raise EncoderInputError("GenotypeEncoder: 'scores' given but the config has n_scores=0")
            return x
        if (
            not isinstance(scores, torch.Tensor)
            or scores.ndim != 2
            or scores.shape != (x.shape[0], cfg.n_scores)
        ):
            shape = list(scores.shape) if isinstance(scores, torch.Tensor) else scores
            raise EncoderInputError(
                f"GenotypeEncoder: 'scores' must be a tensor of shape [batch={x.shape[0]}, n_scores={cfg.n_scores}], "
                f"got {shape}"
            )
        s = scores.to(dtype=x.dtype, device=x.device)
        if not torch.isfinite(s).all():
            raise EncoderInputError("GenotypeEncoder: 'scores' contain NaN or inf")
        return torch.cat([x, s], dim=1)

    def forward(self, dosages: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
        """Embed dosages [B, n_snps] in [0, 2] (and scores [B, n_scores]) into [B, output_size]."""
        x = self._check_inputs(dosages, scores)
        if self.training and self.config.norm == "batchnorm" and x.shape[0] < 2:
            raise EncoderInputError("GenotypeEncoder: batch norm in training mode needs a batch of >= 2 rows")
        return self.forward_unchecked(x)

    def forward_unchecked(self, inputs: torch.Tensor) -> torch.Tensor:
        """Scale and embed already-checked inputs [B, input_size] (traceable by torch.export: no data checks)."""
        return self.mlp((inputs - self.input_mean) / self.input_std)

    @torch.no_grad()
    def encode(
        self, dosages: torch.Tensor, scores: torch.Tensor | None = None, batch_size: int = 1024
    ) -> torch.Tensor:
        """No-grad embedding of many rows in batches (call `.eval()` first for inference statistics)."""
        if batch_size < 1:
            raise EncoderInputError(f"GenotypeEncoder.encode: batch_size must be >= 1, got {batch_size}")
        self._check_inputs(dosages, scores)
        chunks = [
            self(dosages[i : i + batch_size], None if scores is None else scores[i : i + batch_size])
            for i in range(0, dosages.shape[0], batch_size)
        ]
        if not chunks:
            return torch.empty(0, self.output_size, dtype=self.input_mean.dtype, device=self.input_mean.device)
        return torch.cat(chunks)
