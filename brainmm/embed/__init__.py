"""Brain embeddings from a frozen BrainLM (either architecture), cached on disk and streamed at cohort scale.

    from brainmm.embed import EmbedConfig, run_brain_embed
    result = run_brain_embed(EmbedConfig(model="runs/pretrain/model", dataset="data/fmri", pooling="cls"))
    EmbeddingTable.load(result.recordings)   # one row per recording, meta: subject_id, split, provenance
"""

from brainmm.embed.cache import StreamingTable, cache_key, dataset_hash
from brainmm.embed.config import EmbedConfig
from brainmm.embed.extract import EmbedResult, default_cache_dir, run_brain_embed
from brainmm.embed.model import FrozenBrainLM, load_brainlm_encoder, load_frozen_brainlm, model_hash

__all__ = [
    "EmbedConfig",
    "EmbedResult",
    "FrozenBrainLM",
    "StreamingTable",
    "cache_key",
    "dataset_hash",
    "default_cache_dir",
    "load_brainlm_encoder",
    "load_frozen_brainlm",
    "model_hash",
    "run_brain_embed",
]
