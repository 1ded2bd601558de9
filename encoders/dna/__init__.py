"""DNA foundation-model encoders behind one interface.

    from encoders.dna import create_dna_encoder
    enc = create_dna_encoder("generator", path="/models/GENERator-v2-eukaryote-1.2b-base", layer=-1)
    vectors = enc.embed(["ACGT..."])       # [N, enc.dim] float32 on CPU
    enc.cache_key()                        # stable id for embedding caches

Families live in one module each and register with `@register_dna_encoder("name")`.
"""

from encoders.dna.base import DNAEncoder, DNAEncoderConfig, TokenBatch, pad_token_rows, pool_hidden
from encoders.dna.registry import (
    create_dna_encoder,
    get_dna_encoder_class,
    list_dna_encoders,
    register_dna_encoder,
)
from encoders.dna.sequences import normalize_sequences, reverse_complement, tile_windows

__all__ = [
    "DNAEncoder",
    "DNAEncoderConfig",
    "TokenBatch",
    "create_dna_encoder",
    "get_dna_encoder_class",
    "list_dna_encoders",
    "normalize_sequences",
    "pad_token_rows",
    "pool_hidden",
    "register_dna_encoder",
    "reverse_complement",
    "tile_windows",
]
