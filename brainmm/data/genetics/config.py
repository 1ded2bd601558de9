"""Typed configs of the genetics stage (`brainmm genetics embed` and `brainmm genetics matrix`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from brainmm.config import ConfigError


@dataclass
class SequenceInputs:
    """Where personal sequences come from: VCF/BCF + reference FASTA + regions, samples matched to a cohort.

    `cohort` is a table with `subject_id` (and `sample_column` holding the VCF sample ids; None: the VCF
    sample ids are the subject ids). `contig_aliases` maps a FASTA/regions contig name to the VCF's name
    (e.g. {"20": "chr20"}).
    """

    vcf: str = ""
    fasta: str = ""
    regions: str = ""
    cohort: str | None = None
    sample_column: str | None = None
    drop_unmatched_samples: bool = False
    contig_aliases: dict[str, str] = field(default_factory=dict)


@dataclass
class EncoderSection:
    """Which DNA encoder (encoders.dna registry): family, local model folder and embedding options.

    `options` holds family-specific fields (e.g. GENERator `remainder`, `variant`).
    """

    family: str = "generator"
    path: str = ""
    layer: int | str = -1
    pooling: str | None = None
    rc: str | None = None
    window: int | None = None
    overlap: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 8
    trust_remote_code: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `encoders.dna.create_dna_encoder(family, **kwargs)`."""
        kwargs = {"path": self.path, "layer": self.layer, "pooling": self.pooling, "rc": self.rc,
                  "window": self.window, "overlap": self.overlap, "dtype": self.dtype, "device": self.device,
                  "batch_size": self.batch_size, "trust_remote_code": self.trust_remote_code}
        kwargs.update(self.options)
        return kwargs


@dataclass
class GeneticsEmbedConfig:
    """`brainmm genetics embed`: haplotypes (or variant windows) -> DNA encoder -> subject embedding table.

    mode: "haplotypes" embeds each person's two haplotypes per region (needs phase wherever a person has
    two or more heterozygous calls in a region); "variant_deltas" embeds one window per ALT allele and sums
    dosage-weighted deltas (works with unphased genotypes). `subtract_reference` subtracts the reference
    window's embedding per region; `combine_regions` concatenates regions (in file order) or averages them.
    `cache_dir` None: `<data dir>/dna-embeddings`. `out`: the table stem (writes .safetensors + .json +
    .config.yaml beside it).
    """

    inputs: SequenceInputs = field(default_factory=SequenceInputs)
    encoder: EncoderSection = field(default_factory=EncoderSection)
    mode: Literal["haplotypes", "variant_deltas"] = "haplotypes"
    subtract_reference: bool = True
    combine_regions: Literal["concat", "mean"] = "concat"
    cache_dir: str | None = None
    chunk_size: int = 256
    out: str = "genetics/dna_embeddings"

    def validate(self) -> None:
        """Value checks (required paths are checked when the stage runs, so partial files stay valid)."""
        if self.chunk_size < 1:
            raise ConfigError(f"config field 'chunk_size': expected >= 1, got {self.chunk_size}")

    def require_inputs(self) -> None:
        """Raise naming each required field that is empty."""
        missing = [name for name, value in (("inputs.vcf", self.inputs.vcf), ("inputs.fasta", self.inputs.fasta),
                                            ("inputs.regions", self.inputs.regions),
                                            ("encoder.path", self.encoder.path)) if not value]
        if missing:
            raise ConfigError(f"config field(s) {', '.join(missing)}: required (set them in the YAML or with "
                              "the matching flags)")


@dataclass
class GenotypeMatrixConfig:
    """`brainmm genetics matrix`: SNP dosages from a VCF or PLINK 1 .bed -> subject x variant table.

    Missing calls are imputed (`impute`: per-variant mode or mean) and variants filtered (`min_maf`,
    `max_missing`) with statistics fitted on the training split of `split` only. `pgs_weights`: optional
    table (variant_id, effect_allele, one column per score) for polygenic scores, written as a second table.
    """

    vcf: str | None = None
    bed: str | None = None
    split: str = ""
    cohort: str | None = None
    sample_column: str | None = None
    drop_unmatched_samples: bool = False
    min_maf: float = 0.01
    max_missing: float = 0.1
    impute: Literal["mode", "mean"] = "mode"
    pgs_weights: str | None = None
    out: str = "genetics/genotypes"

    def validate(self) -> None:
        """Value ranges."""
        if not 0.0 <= self.min_maf <= 0.5:
            raise ConfigError(f"config field 'min_maf': expected 0..0.5, got {self.min_maf}")
        if not 0.0 <= self.max_missing <= 1.0:
            raise ConfigError(f"config field 'max_missing': expected 0..1, got {self.max_missing}")

    def require_inputs(self) -> None:
        """Exactly one genotype source and a split table."""
        if (self.vcf is None) == (self.bed is None):
            raise ConfigError("config fields 'vcf' / 'bed': give exactly one genotype source (--vcf or --bed)")
        if not self.split:
            raise ConfigError("config field 'split': required (the split table; statistics are fitted on train)")
