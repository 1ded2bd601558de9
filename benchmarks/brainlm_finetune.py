"""Benchmark: peak memory and step time of fine-tuning a 111M-shape BrainLM ViT-MAE tower, per trainable mode.

vitmae_111M shape (ViT-B/16: hidden 768, 12 layers, 12 heads, intermediate 3072, patch 16, 424 x 200 padded to
432 x 432 = 729 patches + CLS), random weights, mean pooling, + a Linear(768, 512) head, AdamW, loss = MSE of the
head output to a random target (any loss costs the same here; batch 1 has no contrastive negatives). Modes:
frozen (tower without gradients), lora (rank 8 on q/k/v/o of every block), last2 (last 2 blocks + final
LayerNorm), full; each without and with gradient checkpointing (frozen: checkpointing has nothing to recompute).

Each (mode, checkpointing) runs in its own subprocess. Peak memory over the timed steps (after a warm-up step
that allocates the optimizer state): CPU = peak RSS (Linux `VmHWM`, reset with `/proc/self/clear_refs` so the
model build does not count; weights, optimizer state, gradients, activations); CUDA =
`torch.cuda.max_memory_allocated`. "above pre-step" = that peak minus the memory held just before the steps
(activations, gradients and temporaries). Step time = median of `--steps` steps after 1 warm-up.
Ratios are against `full` without checkpointing, measured in the same run.

    python benchmarks/brainlm_finetune.py [--steps 2] [--batch 1] [--threads 1] [--device cuda --batch 8,32 --bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
            decoder_intermediate_size=2048, patch_size=16, image_size=432, mask_ratio=0.75,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
MODES = ("frozen", "lora", "last2", "full")


def worker(mode: str, ckpt: bool, batch: int, steps: int, device: str, bf16: bool) -> dict:
    """One configuration: build, warm up, time `steps` steps; returns the measurements."""
    import torch
    from transformers import ViTMAEConfig

    from encoders.brainlm import BrainLMViTForPretraining
    from encoders.brainlm.lora import LoraSettings
    from encoders.brainlm.tower import BrainLMTower

    dev = torch.device(device)
    torch.manual_seed(0)
    config = ViTMAEConfig(**SIZE)
    config.train_mode = "auto_encode"
    coords = torch.round(torch.randn(424, 3) * 30)
    tower = BrainLMTower(BrainLMViTForPretraining(config), coords, pooling="mean")
    kwargs = {"lora": dict(trainable="lora", lora=LoraSettings(rank=8, alpha=16.0)),
              "last2": dict(trainable="last_n", last_n=2), "full": dict(trainable="full")}.get(mode, {})
    tower.set_trainable(**kwargs)
    tower.gradient_checkpointing(ckpt)
    head = torch.nn.Linear(tower.out_dim, 512)
    model = torch.nn.ModuleDict({"tower": tower, "head": head}).to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(batch, 424, 200, device=dev)
    target = torch.randn(batch, 512, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = (head(tower(x)).float() - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocates the optimizer state)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev) / 2**20
    else:
        before = reset_peak_rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    out = {"mode": mode, "ckpt": ckpt, "batch": batch, "step_s": statistics.median(times),
           "trainable_params": sum(p.numel() for p in params)}
    out["peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_rss()
    out["above_before_mb"] = out["peak_mb"] - before
    return out


def _status(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def reset_peak_rss() -> float:
    """Reset the process's peak RSS (Linux: clear_refs 5) and return the current RSS in MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status("VmRSS")
    except OSError:  # no /proc: the peak then includes the model build
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss() -> float:
    """Peak RSS in MB since `reset_peak_rss` (since the start where it cannot be reset)."""
    try:
        return _status("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(mode: str, ckpt: bool, batch: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, str(int(ckpt)), str(batch), "--steps", str(args.steps),
           "--device", args.device] + (["--bf16"] if args.bf16 else [])
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        if "out of memory" in done.stderr.lower():
            return {"mode": mode, "ckpt": ckpt, "batch": batch, "oom": True}
        raise SystemExit(f"worker {mode} ckpt={ckpt} batch={batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration (after 1 warm-up)")
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes (CPU: 1)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per worker (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    ap.add_argument("--worker", nargs=3, metavar=("MODE", "CKPT", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        mode, ckpt, batch = args.worker
        print(json.dumps(worker(mode, bool(int(ckpt)), int(batch), args.steps, args.device, args.bf16)))
        return
    unit = "peak device MB" if args.device.startswith("cuda") else "peak RSS MB"
    print(f"# device {args.device}, bf16 {args.bf16}, steps {args.steps}, threads {args.threads or 'default'}")
    for batch in (int(b) for b in args.batch.split(",")):
        rows = [run_one(m, c, batch, args) for m in args.modes.split(",") for c in (False, True)]
        ref = next((r for r in rows if r["mode"] == "full" and not r["ckpt"] and not r.get("oom")), None)
        print(f"\n## batch {batch}  (ratios vs full without checkpointing)")
        print(f"| mode | checkpointing | trainable params | step s | {unit} | above pre-step MB | step ratio | "
              "memory ratio |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            if r.get("oom"):
                print(f"| {r['mode']} | {'on' if r['ckpt'] else 'off'} | | out of memory | | | | |")
                continue
            ratio_t = f"{r['step_s'] / ref['step_s']:.2f}" if ref else ""
            ratio_m = f"{r['peak_mb'] / ref['peak_mb']:.2f}" if ref else ""
            print(f"| {r['mode']} | {'on' if r['ckpt'] else 'off'} | {r['trainable_params'] / 1e6:.2f} M | "
                  f"{r['step_s']:.2f} | {r['peak_mb']:.0f} | {r['above_before_mb']:.0f} | "
                  f"{ratio_t} | {ratio_m} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
