"""`brainmm pretrain`: BrainLM masked-autoencoder pretraining (several GPUs: `torchrun ... -m brainmm.cli pretrain`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `pretrain` command."""
    p = sub.add_parser("pretrain", help="pretrain a BrainLM masked autoencoder on an fMRI dataset (MLflow, --resume)")
    p.add_argument("--config", default=None, help="YAML config (PretrainConfig; see configs/pretrain_*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=500")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in output_dir from its newest checkpoint (same MLflow run)")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    from brainmm.config import load_config
    from brainmm.train.pretrain_config import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.overrides)  # checked before torch loads
    from brainmm.train.pretrain import run_pretrain

    result = run_pretrain(cfg, resume=args.resume)
    if result.finished and result.model_dir is not None:
        for split in ("val", "test"):
            m = result.metrics.get(split)
            if m:
                print(f"{split}: masked_mse {m['masked_mse']:.4f} (mean baseline {m['baseline_mean_mse']:.4f}, "
                      f"interpolation {m['baseline_interp_mse']:.4f}), r2 {m['r2']:.4f}, pearson_r {m['pearson_r']:.4f}")
        print(result.model_dir)
    return 0
