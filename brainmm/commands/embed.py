"""`brainmm embed`: brain embeddings of every recording from a frozen BrainLM, cached (several processes: torchrun)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `embed` command."""
    p = sub.add_parser("embed", help="frozen BrainLM -> recording and subject embedding tables (cached on disk)")
    p.add_argument("--config", default=None, help="YAML config (EmbedConfig; see configs/embed_*.yaml)")
    p.add_argument("--allow-split-mismatch", action="store_true",
                   help="embed even when val/test subjects were in the model's pretraining train split")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. pooling=mean")
    p.set_defaults(func=_embed)


def _embed(args: argparse.Namespace) -> int:
    from brainmm.config import load_config
    from brainmm.embed import EmbedConfig

    overrides = [*args.overrides, *(["allow_split_mismatch=true"] if args.allow_split_mismatch else [])]
    cfg = load_config(EmbedConfig, args.config, overrides)  # checked before torch loads
    from brainmm.embed import run_brain_embed

    result = run_brain_embed(cfg)
    if result is not None:  # rank 0
        state = "cached" if result.cache_hit else "computed"
        print(f"{result.recordings} ({result.num_recordings} recordings, {state})")
        print(f"{result.subjects} ({result.num_subjects} subjects)")
    return 0
