"""Typed configs of the genetics stage (`brainmm genetics embed` and `brainmm genetics matrix`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from brainmm.config import ConfigError


@dataclass
class SequenceInputs:
    """Where personal sequences come from: VCF/BCF + reference FASTA + regions, samples matched to a cohort.

    `bgen` (with `sample`, default beside it) replaces `vcf` with a phased BGEN: each haplotype carries its most
    probable allele. `cohort` is a table with `subject_id` (and `sample_column` holding the VCF sample ids; None: the VCF
    sample ids are the subject ids). `contig_aliases` maps a FASTA/regions contig name to the VCF's name
    (e.g. {"20": "chr20"}).
    """

    vcf: str = ""
    bgen: str = ""
    sample: str | None = None
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
        missing = [name for name, value in (("inputs.vcf", self.inputs.vcf or self.inputs.bgen),
                                            ("inputs.fasta", self.inputs.fasta),
                                            ("inputs.regions", self.inputs.regions),
                                            ("encoder.path", self.encoder.path)) if not value]
        if missing:
            raise ConfigError(f"config field(s) {', '.join(missing)}: required (set them in the YAML or with "
                              "the matching flags)")


SOURCE_FIELDS = ("vcf", "bed", "pgen", "bgen")


@dataclass
class GenotypeSourceConfig:
    """Where genotypes come from and which variants and samples are used (shared by matrix and pca).

    One of `vcf`, `bed` (PLINK 1, .bim/.fam beside it), `pgen` (PLINK 2, .pvar/.psam beside it) or `bgen`
    (`sample`: the Oxford .sample file, default beside it; `bgen_ref`: which BGEN allele is REF, "first" as in UK
    Biobank, "last" for plink2's default ALT-first export; a .pvar/.bim of the same name beside the BGEN is
    checked against it). `variants`: an ID list (contig:pos:ref:alt or
    rsid; a `.variants.tsv` works), `regions`: a BED file, `min_info`: INFO-score threshold (VCF/.pvar INFO
    field INFO, R2 or DR2). `hard_call_threshold`: dosages further than this from 0, 1 or 2 become missing,
    the others are rounded (as plink2 --hard-call-threshold); None keeps dosages. `block_size`: variants read
    at a time (None: about 16 MiB of float32 dosages, 4 Mi / samples, within 16..4096).
    """

    vcf: str | None = None
    bed: str | None = None
    pgen: str | None = None
    bgen: str | None = None
    sample: str | None = None
    bgen_ref: Literal["first", "last"] = "first"
    cohort: str | None = None
    sample_column: str | None = None
    drop_unmatched_samples: bool = False
    variants: str | None = None
    regions: str | None = None
    min_info: float | None = None
    hard_call_threshold: float | None = None
    min_maf: float = 0.01
    max_missing: float = 0.1
    block_size: int | None = None

    def validate(self) -> None:
        """Value ranges."""
        if not 0.0 <= self.min_maf <= 0.5:
            raise ConfigError(f"config field 'min_maf': expected 0..0.5, got {self.min_maf}")
        if not 0.0 <= self.max_missing <= 1.0:
            raise ConfigError(f"config field 'max_missing': expected 0..1, got {self.max_missing}")
        if self.hard_call_threshold is not None and not 0.0 <= self.hard_call_threshold <= 0.5:
            raise ConfigError(f"config field 'hard_call_threshold': expected 0..0.5, got {self.hard_call_threshold}")
        if self.block_size is not None and self.block_size < 1:
            raise ConfigError(f"config field 'block_size': expected >= 1, got {self.block_size}")

    def block_for(self, n_samples: int) -> int:
        """Variants per block: `block_size`, or about 16 MiB of dosages for `n_samples`."""
        if self.block_size is not None:
            return self.block_size
        return int(min(4096, max(16, (4 << 20) // max(1, n_samples))))

    @property
    def source_path(self) -> str:
        """The one genotype path given."""
        return next(str(getattr(self, f)) for f in SOURCE_FIELDS if getattr(self, f))

    def require_source(self) -> None:
        """Exactly one genotype source."""
        given = [f for f in SOURCE_FIELDS if getattr(self, f)]
        if len(given) != 1:
            raise ConfigError("config fields 'vcf' / 'bed' / 'pgen' / 'bgen': give exactly one genotype source "
                              f"(--vcf, --bed, --pgen or --bgen; got {given or 'none'})")
        if self.sample and not self.bgen:
            raise ConfigError("config field 'sample': only for a BGEN source (--bgen)")
        if self.bgen_ref != "first" and not self.bgen:
            raise ConfigError("config field 'bgen_ref': only for a BGEN source (--bgen)")


@dataclass
class GenotypeMatrixConfig(GenotypeSourceConfig):
    """`brainmm genetics matrix`: SNP dosages -> subject x variant table.

    Missing calls are imputed (`impute`: per-variant mode or mean) and variants filtered (`min_maf`,
    `max_missing`) with statistics fitted on the training split of `split` only. `pgs_weights`: optional
    table (variant_id, effect_allele, one column per score) for polygenic scores, written as a second table.
    """

    split: str = ""
    impute: Literal["mode", "mean"] = "mode"
    pgs_weights: str | None = None
    out: str = "genetics/genotypes"

    def require_inputs(self) -> None:
        """Exactly one genotype source and a split table."""
        self.require_source()
        if not self.split:
            raise ConfigError("config field 'split': required (the split table; statistics are fitted on train)")


@dataclass
class GeneticPcaConfig(GenotypeSourceConfig):
    """`brainmm genetics pca`: genetic principal components (plink2 --pca standardisation) per subject.

    Fitted on the training subjects of `split` (others projected); without a split every sample fits.
    `ld_prune_r2`: greedy LD pruning against the last `ld_window` kept variants of the same contig (None: off).
    """

    split: str | None = None
    n_pcs: int = 10
    ld_prune_r2: float | None = None
    ld_window: int = 200
    max_exact_samples: int = 5000
    seed: int = 0
    out: str = "genetics/genetic_pcs"

    def validate(self) -> None:
        """Value ranges."""
        super().validate()
        if self.n_pcs < 1:
            raise ConfigError(f"config field 'n_pcs': expected >= 1, got {self.n_pcs}")
        if self.ld_prune_r2 is not None and not 0.0 < self.ld_prune_r2 < 1.0:
            raise ConfigError(f"config field 'ld_prune_r2': expected 0..1 (exclusive), got {self.ld_prune_r2}")
        if self.ld_window < 2:
            raise ConfigError(f"config field 'ld_window': expected >= 2, got {self.ld_window}")
