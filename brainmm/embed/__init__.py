"""Brain embeddings from a frozen BrainLM (either architecture), cached on disk and streamed at cohort scale.

    from brainmm.embed import EmbedConfig, run_brain_embed
    result = run_brain_embed(EmbedConfig(model="runs/pretrain/model", dataset="data/fmri", pooling="cls"))
    EmbeddingTable.load(result.recordings)   # one row per recording, meta: subject_id, split, provenance
"""

from brainmm.lazy import lazy_exports

# public name -> defining module, imported on first use (the config loads without torch)
_EXPORTS = {
    "StreamingTable": "brainmm.embed.cache",
    "cache_key": "brainmm.embed.cache",
    "dataset_hash": "brainmm.embed.cache",
    "EmbedConfig": "brainmm.embed.config",
    "EmbedResult": "brainmm.embed.extract",
    "default_cache_dir": "brainmm.embed.extract",
    "run_brain_embed": "brainmm.embed.extract",
    "FrozenBrainLM": "brainmm.embed.model",
    "load_brainlm_encoder": "brainmm.embed.model",
    "load_frozen_brainlm": "brainmm.embed.model",
    "model_hash": "brainmm.embed.model",
}

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
__getattr__ = lazy_exports(__name__, _EXPORTS)
