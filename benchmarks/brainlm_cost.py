"""Calibration: BrainLM pretraining-step and embedding rates on this machine, for `brainmm.pipeline.cost`.

For each shape (architecture x window x patch at 424 parcels) one fresh random-init `BrainLMForPretraining` runs a
warm-up and `--steps` timed training steps (AdamW, `loss_only=True`, as `brainmm pretrain`) and `--steps` timed
CLS-embedding batches (as `brainmm embed`). Printed per shape: seconds per step and per window (wall and this
process's CPU), and the rate in CPU seconds per unit of work that the cost model uses (`cost.pretrain_units` / `cost.embed_units`: parameter x token
products), whose spread across shapes says how far the one-constant model can be trusted.

    python benchmarks/brainlm_cost.py [--steps 2] [--batch 2] [--threads 2] [--shapes demo200,demo490,5m200,5m490]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brainmm.pipeline.cost import embed_units, pretrain_units  # noqa: E402

DEMO = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, decoder_hidden_size=64,
            decoder_num_hidden_layers=1, decoder_num_attention_heads=4, decoder_intermediate_size=128)
FIVE_M = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
              decoder_hidden_size=256, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
              decoder_intermediate_size=1024)
SHAPES = {  # name: (arch, window, patch)
    "demo200": (DEMO, 200, 10), "demo490": (DEMO, 490, 10), "5m200": (FIVE_M, 200, 20), "5m490": (FIVE_M, 490, 49),
}
PARCELS = 424


def measure(name: str, steps: int, batch: int) -> dict:
    """Time training steps and embedding batches of one shape."""
    from encoders.brainlm import BrainLMConfig, BrainLMForPretraining

    arch, window, patch = SHAPES[name]
    config = BrainLMConfig(**arch, num_brain_voxels=PARCELS, num_timepoints_per_voxel=window,
                           timepoint_patching_size=patch, mask_ratio=0.2, conv_kernel_size=65)
    torch.manual_seed(0)
    model = BrainLMForPretraining(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    signal, xyz = torch.randn(batch, PARCELS, window), torch.randn(batch, PARCELS, 3) * 50
    train, train_cpu = [], []
    for i in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        model(signal_vectors=signal, xyz_vectors=xyz, loss_only=True).loss.backward()
        opt.step()
        if i:
            train.append(time.perf_counter() - t0)
            train_cpu.append(time.process_time() - c0)
    model.eval()
    embed, embed_cpu = [], []
    with torch.inference_mode():
        for i in range(steps + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            model.vit.encode(signal, xyz, pooling="cls")
            if i:
                embed.append(time.perf_counter() - t0)
                embed_cpu.append(time.process_time() - c0)
    step, enc = statistics.median(train), statistics.median(embed) / batch
    step_cpu, enc_cpu = statistics.median(train_cpu), statistics.median(embed_cpu) / batch
    return {"shape": name, "window": window, "patch": patch, "hidden": arch["hidden_size"],
            "tokens": PARCELS * window // patch, "s_per_step": step, "batch": batch, "s_per_window": enc,
            "cpu_s_per_step": step_cpu, "cpu_s_per_window": enc_cpu,
            "pretrain_rate": step_cpu / pretrain_units(config.to_dict(), batch),
            "embed_rate": enc_cpu / embed_units(config.to_dict()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    print(f"CPU {cpu}; torch {torch.__version__}, {args.threads} threads; batch {args.batch}; {PARCELS} parcels")
    rows = [measure(s, args.steps, args.batch) for s in args.shapes.split(",")]
    print(f"{'shape':9s} {'window':>6s} {'patch':>5s} {'tokens':>6s} {'s/step':>8s} {'CPU s/step':>10s} "
          f"{'s/window':>9s} {'CPU s/window':>12s} {'pretrain rate':>14s} {'embed rate':>11s}")
    for r in rows:
        print(f"{r['shape']:9s} {r['window']:6d} {r['patch']:5d} {r['tokens']:6d} {r['s_per_step']:8.2f} "
              f"{r['cpu_s_per_step']:10.2f} {r['s_per_window']:9.3f} {r['cpu_s_per_window']:12.3f} "
              f"{r['pretrain_rate']:14.3e} {r['embed_rate']:11.3e}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
