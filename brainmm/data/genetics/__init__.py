"""Genetics inputs: personal haplotype sequences (VCF + FASTA + regions), genotype matrices (VCF / PLINK),
precomputed per-subject tables, the content-addressed DNA-embedding cache and the embedding stage.

    from brainmm.data.genetics import GeneticsEmbedConfig, run_embed, GenotypeMatrixConfig, run_matrix
"""

from brainmm.data.genetics.cache import EmbeddingCache
from brainmm.data.genetics.config import (
    EncoderSection,
    GeneticsEmbedConfig,
    GenotypeMatrixConfig,
    SequenceInputs,
)
from brainmm.data.genetics.embed import make_plan, run_embed, subject_vectors
from brainmm.data.genetics.haplotypes import SequencePlan, apply_variants, build_plan
from brainmm.data.genetics.matrix import read_plink_dosages, read_variant_table, read_vcf_dosages, run_matrix
from brainmm.data.genetics.precomputed import read_precomputed
from brainmm.data.genetics.reference import Reference
from brainmm.data.genetics.regions import Region, read_regions
from brainmm.data.genetics.variants import VariantSource

__all__ = [
    "EmbeddingCache",
    "EncoderSection",
    "GeneticsEmbedConfig",
    "GenotypeMatrixConfig",
    "Reference",
    "Region",
    "SequenceInputs",
    "SequencePlan",
    "VariantSource",
    "apply_variants",
    "build_plan",
    "make_plan",
    "read_plink_dosages",
    "read_precomputed",
    "read_regions",
    "read_variant_table",
    "read_vcf_dosages",
    "run_embed",
    "run_matrix",
    "subject_vectors",
]
