"""`brainmm brainlm inspect DIR` / `brainmm brainlm smoke [--checkpoint DIR]`: look at and try BrainLM checkpoints."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `brainlm` command group."""
    p = sub.add_parser("brainlm", help="BrainLM checkpoints: inspect a folder, embed a random batch")
    group = p.add_subparsers(dest="brainlm_command", metavar="ACTION")
    p.set_defaults(func=lambda args: p.print_help() or 2)
    i = group.add_parser("inspect", help="architecture, parameter count and key check of a checkpoint folder")
    i.add_argument("checkpoint", metavar="DIR", help="folder with config.json and model.safetensors / pytorch_model.bin")
    i.set_defaults(func=_inspect)
    s = group.add_parser("smoke", help="embed a random batch with a checkpoint (default: a tiny random model)")
    s.add_argument("--checkpoint", metavar="DIR", default=None, help="checkpoint folder (default: tiny random BrainLM)")
    s.add_argument("--batch", type=int, default=2, help="recordings in the random batch (default 2)")
    s.add_argument("--pooling", default="cls", choices=("cls", "mean", "time_then_voxel"),
                   help="how tokens become one vector (time_then_voxel: Nystromformer BrainLM only)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random model and batch")
    s.set_defaults(func=_smoke)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars say nothing useful here


def _inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from encoders.brainlm.checkpoint import check_checkpoint_folder, checkpoint_keys
    from encoders.brainlm.loading import MODEL_CLASSES, checkpoint_model_type

    _quiet_transformers()
    folder = Path(args.checkpoint)
    model_type = checkpoint_model_type(folder)
    weights = check_checkpoint_folder(folder, model_type)
    model, info = MODEL_CLASSES[model_type].from_pretrained(folder, output_loading_info=True,
                                                            ignore_mismatched_sizes=True)
    cfg = model.config
    print(f"checkpoint: {folder} ({weights.name}, {len(checkpoint_keys(weights))} tensors)")
    if model_type == "brainlm_mae":
        patches = cfg.num_timepoints_per_voxel // cfg.timepoint_patching_size
        print(f"architecture: BrainLM MAE (Nystromformer, exact softmax attention + conv {cfg.conv_kernel_size}), "
              f"class {type(model).__name__}")
        print(f"encoder: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads, "
              f"intermediate {cfg.intermediate_size}; decoder: hidden {cfg.decoder_hidden_size}, "
              f"{cfg.decoder_num_hidden_layers} layers, {cfg.decoder_num_attention_heads} heads, "
              f"intermediate {cfg.decoder_intermediate_size}")
        print(f"input: {cfg.num_brain_voxels} parcels x {cfg.num_timepoints_per_voxel} timepoints, patch "
              f"{cfg.timepoint_patching_size} -> {cfg.num_brain_voxels * patches} tokens + CLS; mask_ratio "
              f"{cfg.mask_ratio}; loss {cfg.loss_fn}{', tanh decoder' if cfg.use_tanh_decoder else ''}")
    else:
        side = cfg.image_size
        print(f"architecture: BrainLM ViT-MAE (424 x 200 padded with -1 to {side} x {side}), class "
              f"{type(model).__name__}")
        print(f"encoder: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads, "
              f"intermediate {cfg.intermediate_size}; decoder: hidden {cfg.decoder_hidden_size}, "
              f"{cfg.decoder_num_hidden_layers} layers, {cfg.decoder_num_attention_heads} heads")
        print(f"input: [B, 424, 200] parcels sorted by Y; patch {cfg.patch_size} -> {(side // cfg.patch_size) ** 2} "
              f"tokens + CLS; mask_ratio {cfg.mask_ratio}")
    print(f"parameters: {_count(model):,} (encoder {_count(model.vit):,})")
    stored = checkpoint_keys(weights)
    regenerated = sorted(k for k in model.state_dict() if k.endswith("pos_embedding.pe") and k not in stored)
    ignored = sorted(k for k in stored if k.startswith("decoder.decoder_pred.") and model_type == "brainlm_mae")
    problems = [f"missing {k}" for k in sorted(info["missing_keys"])]
    problems += [f"unexpected {k}" for k in sorted(info["unexpected_keys"]) if k not in ignored]
    problems += [f"shape mismatch {k}: checkpoint {list(a)}, config {list(b)}" for k, a, b in
                 sorted(info["mismatched_keys"])]
    if problems:
        print(f"key check: {len(problems)} problem(s)")
        for line in problems:
            print(f"  {line}")
    else:
        print("key check: OK (no missing, unexpected or mismatched tensors)")
    if regenerated:
        print(f"  regenerated deterministic buffers: {', '.join(regenerated)}")
    if ignored:
        print(f"  ignored unused leftover of the original: {', '.join(ignored)}")
    return 1 if problems else 0


def _smoke(args: argparse.Namespace) -> int:
    import time

    import torch

    from brainmm.errors import BrainmmError

    if args.batch < 1:
        raise BrainmmError(f"--batch must be at least 1, got {args.batch}")
    torch.manual_seed(args.seed)
    if args.checkpoint is None:
        from encoders.brainlm import BrainLMForPretraining
        from encoders.brainlm.testing import tiny_brainlm_config

        model = BrainLMForPretraining(tiny_brainlm_config()).eval()
        source = "tiny random BrainLM (hidden 32, 12 parcels x 40 timepoints)"
    else:
        from encoders.brainlm.loading import load_brainlm

        _quiet_transformers()
        model = load_brainlm(args.checkpoint)
        source = args.checkpoint
    cfg = model.config
    g = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    with torch.no_grad():
        if cfg.model_type == "vit_mae":
            if args.pooling == "time_then_voxel":
                raise BrainmmError("--pooling time_then_voxel needs a Nystromformer BrainLM; use cls or mean")
            signal = torch.randn(args.batch, 424, 200, generator=g)
            embedding = model.encode(signal, pooling=args.pooling)
        else:
            signal = torch.randn(args.batch, cfg.num_brain_voxels, cfg.num_timepoints_per_voxel, generator=g)
            box = torch.tensor([[-70.0, -100.0, -50.0], [70.0, 70.0, 80.0]])
            xyz = box[0] + (box[1] - box[0]) * torch.rand(cfg.num_brain_voxels, 3, generator=g)
            embedding = model.encode(signal, xyz.expand(args.batch, -1, -1), pooling=args.pooling)
    seconds = time.perf_counter() - start
    print(f"model: {source}")
    print(f"input: random signal {list(signal.shape)}; pooling {args.pooling}")
    print(f"embedding shape: {list(embedding.shape)} ({seconds:.2f} s)")
    print("first values: " + " ".join(f"{v:+.4f}" for v in embedding[0, :6].tolist()))
    return 0
