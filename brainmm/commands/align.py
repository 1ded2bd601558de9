"""`brainmm align --config configs/align_clip.yaml [KEY=VALUE ...] [--resume]`: train the projector heads."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `align` command."""
    p = sub.add_parser(
        "align",
        help="align brain and genetics embedding tables in a shared space (train projector heads)",
        description="Train projector heads on a brain embedding table and one or more genetics embedding tables "
        "with a contrastive loss; writes heads, metrics, a model card and shared-space embeddings of every split.",
    )
    p.add_argument("--config", required=True, help="YAML config (see configs/align_*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=0.0001")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.set_defaults(func=_align)


def _align(args: argparse.Namespace) -> int:
    from brainmm.align import AlignConfig
    from brainmm.config import load_config

    cfg = load_config(AlignConfig, args.config, args.overrides)  # checked before torch loads
    cfg.check_paths()
    from brainmm.align import run_align

    result = run_align(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # one line per job under torchrun
        val = result.metrics["val"]
        print(f"{result.run_dir} (val mean R@1 {val.get('score', float('nan')):.3f}, used for model selection; mlflow run {result.run_id})")
    return 0
