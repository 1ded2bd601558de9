"""Genetics inputs: personal haplotype sequences (VCF/BGEN + FASTA + regions), genotype matrices (VCF, PLINK 1/2,
BGEN), genetic PCs, precomputed per-subject tables, the content-addressed DNA-embedding cache and the embedding stage.

    from brainmm.data.genetics import GeneticsEmbedConfig, run_embed, GenotypeMatrixConfig, run_matrix

Names are imported on first use, so that reading genotypes does not load the DNA-embedding stack.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "EmbeddingCache": "cache",
    "EncoderSection": "config",
    "GeneticPcaConfig": "config",
    "GeneticsEmbedConfig": "config",
    "GenotypeMatrixConfig": "config",
    "SequenceInputs": "config",
    "make_plan": "embed",
    "run_embed": "embed",
    "subject_vectors": "embed",
    "SequencePlan": "haplotypes",
    "apply_variants": "haplotypes",
    "build_plan": "haplotypes",
    "read_plink_dosages": "matrix",
    "read_variant_table": "matrix",
    "read_vcf_dosages": "matrix",
    "run_matrix": "matrix",
    "fit_genetic_pcs": "pca",
    "project": "pca",
    "run_pca": "pca",
    "read_precomputed": "precomputed",
    "Reference": "reference",
    "Region": "regions",
    "read_regions": "regions",
    "open_source": "sources",
    "VariantSource": "variants",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'brainmm.data.genetics' has no attribute {name!r}")
    return getattr(import_module(f"brainmm.data.genetics.{_WHERE[name]}"), name)
