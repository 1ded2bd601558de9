"""Benchmark: `BrainLMForPretraining` vs an eager reference built from transformers' `NystromformerLayer`.

old_13M size (424 parcels x 200 timepoints, patch 20, hidden 512, intermediate 1024, 4 encoder + 2 decoder
layers, 4 heads, conv 65, mask 0.2, batch 2), random weights shared by both models. The reference follows the
original forward exactly (gather/repeat masking, eager `NystromformerLayer` with hidden_act "gelu", eps 1e-12,
dropout 0, and the same decoder); its embedding path is the original recipe `model.vit(..., noise=arange(L))` with
mask_ratio 0 (encoder only, natural order), against our `encode()` (CLS pooling, whose last layer computes the CLS
row alone; mean pooling, which needs every row, is timed too).

Each (variant, task) runs in its own subprocess, so its peak memory is that process's `ru_maxrss`; the rounds
alternate the variants (the machine is shared) and medians are reported. Also printed: the largest output
difference between the two models (same weights, same noise, eval mode) and the gradient agreement (the
conv-kernel gradients are listed apart: the reference's come from oneDNN's fp32 grouped Conv2d, whose weight
gradient is wrong for kernel 65 in torch 2.13; ours match float64).

`--precision bf16` times brainmm's model in fp32 against the same model under bf16 autocast (embedding and
training step; `encoders.precision`) instead of against the reference, and prints the CLS cosine between the two.
`--loss-curve N` trains a reduced shape (stated in the output) for N steps in fp32 and in bf16 from the same
weights and batches and prints how far apart the two loss curves are. `--kernels onednn|torch` forces the fp32 CPU
kernels (default: chosen per CPU, `encoders.brainlm.onednn.cpu_kernels`).

    python benchmarks/brainlm_step.py [--rounds 3] [--steps 2] [--embed-batches 3] [--threads N] [--device cuda] [--bf16]
    python benchmarks/brainlm_step.py --precision bf16 [--rounds 1]
    python benchmarks/brainlm_step.py --loss-curve 100
    python benchmarks/brainlm_step.py --kernel-check [--rounds 3]
    python benchmarks/brainlm_step.py --interleaved 2     # ours vs reference alternated step by step
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

SIZE = dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
            decoder_hidden_size=512, decoder_intermediate_size=1024, decoder_num_hidden_layers=2,
            decoder_num_attention_heads=4, num_brain_voxels=424, num_timepoints_per_voxel=200,
            timepoint_patching_size=20, mask_ratio=0.2, conv_kernel_size=65, num_landmarks=64,
            segment_means_seq_len=64, hidden_dropout_prob=0.0)
BATCH = 2
DEVICE = torch.device("cpu")  # --device
BF16 = False  # --bf16: bf16 autocast for both models (GPU)
KERNELS = None  # --kernels: force oneDNN or torch's fp32 CPU kernels


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def autocast(variant: str = ""):
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=BF16 or variant == "ours_bf16")


def machine() -> str:
    """CPU model, ISA flags, torch's CPU capability and the kernel paths the model takes (fp32 and bf16)."""
    from encoders.brainlm import onednn
    from encoders.precision import cpu_isa, cpu_model, cpu_vendor, resolve_precision

    fp32 = ("oneDNN fp32 inner products" if onednn.cpu_kernels("linear") == "onednn" else "MKL sgemm linears") + (
        " + oneDNN blockwise attention" if onednn.cpu_kernels("attention") == "onednn" else " + SDPA flash attention")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")  # e.g. AVX512_CORE_BF16: an AVX512_BF16 CPU without AMX
    return (f"CPU {cpu_model()} ({cpu_vendor()}); ISA {cpu_isa()}; torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}; fp32 path: {fp32}; bf16 path: autocast -> oneDNN bf16 "
            f"matmul + SDPA flash bf16 (fp32 softmax statistics); precision auto here = "
            f"{resolve_precision('auto', 'cpu')}" + (f"; oneDNN capped at ONEDNN_MAX_CPU_ISA={cap}" if cap else ""))


class EagerReference(nn.Module):
    """The original BrainLMForPretraining forward, layers = transformers' eager NystromformerLayer."""

    def __init__(self, cfg):
        super().__init__()
        from transformers import NystromformerConfig
        from transformers.models.nystromformer.modeling_nystromformer import NystromformerLayer

        from encoders.brainlm.layers import BrainLMPositionalEncoding

        def layer_cfg(width, heads, inter):
            return NystromformerConfig(hidden_size=width, num_attention_heads=heads, intermediate_size=inter,
                                       hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
                                       attention_probs_dropout_prob=0.0, conv_kernel_size=cfg.conv_kernel_size,
                                       num_landmarks=64, segment_means_seq_len=64)

        h, d = cfg.hidden_size, cfg.decoder_hidden_size
        self.cfg = cfg
        self.vit = nn.Module()
        self.vit.embeddings = nn.Module()
        emb = self.vit.embeddings
        emb.cls_token = nn.Parameter(torch.zeros(1, 1, h))
        emb.signal_embedding_projection = nn.Linear(cfg.timepoint_patching_size, h)
        emb.xyz_embedding_projection = nn.Linear(3, h)
        emb.pos_embedding = BrainLMPositionalEncoding(h)
        self.vit.encoder = nn.Module()
        enc_cfg = layer_cfg(h, cfg.num_attention_heads, cfg.intermediate_size)
        self.vit.encoder.layer = nn.ModuleList(NystromformerLayer(enc_cfg) for _ in range(cfg.num_hidden_layers))
        self.vit.layernorm = nn.LayerNorm(h, eps=1e-12)
        dec = self.decoder = nn.Module()
        dec.decoder_embed = nn.Linear(h, d)
        dec.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        dec_cfg = layer_cfg(d, cfg.decoder_num_attention_heads, cfg.decoder_intermediate_size)
        dec.decoder_layers = nn.ModuleList(NystromformerLayer(dec_cfg) for _ in range(cfg.decoder_num_hidden_layers))
        dec.decoder_norm = nn.LayerNorm(d, eps=1e-12)
        dec.decoder_xyz_projection = nn.Linear(3, d)
        dec.pos_embedding = BrainLMPositionalEncoding(d)
        dec.decoder_pred1 = nn.Linear(d, d // 2)
        dec.decoder_pred2 = nn.Linear(d // 2, cfg.timepoint_patching_size)

    def encoder(self, signal, xyz, noise, mask_ratio):
        """Original BrainLMEmbeddings + random_masking + encoder + layernorm."""
        emb = self.vit.embeddings
        b, v, t = signal.shape
        ps = self.cfg.timepoint_patching_size
        p = t // ps
        x = emb.signal_embedding_projection(signal.reshape(b, v, p, ps))
        x = x + emb.xyz_embedding_projection(xyz).unsqueeze(2)
        x = emb.pos_embedding(x).flatten(1, 2)
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, dim))
        mask = torch.ones([n, length], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat([emb.cls_token.expand(n, -1, -1), x], dim=1)
        for layer in self.vit.encoder.layer:
            x = layer(x)[0]
        return self.vit.layernorm(x), mask, ids_restore

    def forward(self, signal, xyz, noise):
        """Original pretraining forward: masked encoder, decoder, masked MSE."""
        cfg = self.cfg
        dec = self.decoder
        latent, mask, ids_restore = self.encoder(signal, xyz, noise, cfg.mask_ratio)
        b, v, t = signal.shape
        ps = cfg.timepoint_patching_size
        p = t // ps
        x = dec.decoder_embed(latent)
        mask_tokens = dec.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x_ = x_.reshape(b, v, p, x.shape[2])
        x_ = x_ + dec.decoder_xyz_projection(xyz).unsqueeze(2)
        x_ = dec.pos_embedding(x_)
        x = torch.cat([x[:, :1, :], x_.flatten(1, 2)], dim=1)
        for layer in dec.decoder_layers:
            x = layer(x)[0]
        x = dec.decoder_norm(x)
        pred = dec.decoder_pred2(nn.functional.leaky_relu(dec.decoder_pred1(x), 0.1))[:, 1:].reshape(b, v, p, ps)
        target = signal.reshape(b, v, p, ps)
        m = mask.reshape(b, v, p).unsqueeze(-1).repeat(1, 1, 1, ps)
        loss = ((pred - target) ** 2 * m).sum() / m.sum()
        return loss, pred, latent

    def embed(self, signal, xyz):
        """Original recipe for a deterministic embedding: mask_ratio 0, noise = arange(L); CLS token."""
        length = signal.shape[1] * (signal.shape[2] // self.cfg.timepoint_patching_size)
        noise = torch.arange(length, dtype=torch.float32, device=signal.device).expand(signal.shape[0], -1)
        return self.encoder(signal, xyz, noise, 0.0)[0][:, 0]


def build(variant: str):
    """Both models with the same seeded weights (ours initialises; the reference copies its state dict)."""
    from encoders.brainlm import BrainLMConfig, BrainLMForPretraining

    torch.manual_seed(0)
    cfg = BrainLMConfig(**SIZE)
    ours = BrainLMForPretraining(cfg)
    if variant in ("ours", "ours_bf16"):
        return ours.to(DEVICE), cfg
    ref = EagerReference(cfg)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref.to(DEVICE), cfg


def inputs(cfg, seed: int = 1):
    """A random batch: signal [B, 424, 200], xyz [B, 424, 3] (mm), noise [B, L]."""
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(BATCH, cfg.num_brain_voxels, cfg.num_timepoints_per_voxel, generator=g)
    xyz = (torch.rand(cfg.num_brain_voxels, 3, generator=g) * 140 - 70).expand(BATCH, -1, -1).contiguous()
    noise = torch.rand(BATCH, cfg.num_brain_voxels * (cfg.num_timepoints_per_voxel // cfg.timepoint_patching_size), generator=g)
    signal, xyz, noise = signal.to(DEVICE), xyz.to(DEVICE), noise.to(DEVICE)
    return signal, xyz, noise


def worker(variant: str, task: str, steps: int) -> dict:
    """Time `steps` training steps (forward+backward) or embedding batches after one warm-up."""
    model, cfg = build(variant)
    signal, xyz, noise = inputs(cfg)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if DEVICE.type == "cuda":  # on a GPU, peak means the allocator's peak of device memory
        rss_before = torch.cuda.memory_allocated() / 1024
        torch.cuda.reset_peak_memory_stats()
    times = []
    if task == "train":
        model.train()
        for i in range(steps + 1):
            sync()
            t0 = time.perf_counter()
            with autocast(variant):
                if variant != "reference":
                    loss = model(signal, xyz, noise=noise, loss_only=True).loss
                else:
                    loss = model(signal, xyz, noise)[0]
            loss.backward()
            model.zero_grad(set_to_none=True)
            sync()
            if i:
                times.append(time.perf_counter() - t0)
    else:
        model.eval()
        with torch.no_grad(), autocast(variant):
            for i in range(steps + 1):
                sync()
                t0 = time.perf_counter()
                if variant == "reference":
                    model.embed(signal, xyz)
                else:  # cls: the last layer computes the CLS row alone; mean: every row of every layer
                    model.encode(signal, xyz, pooling="mean" if task == "embed_mean" else "cls")
                sync()
                if i:
                    times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if DEVICE.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1024
    return {"times": times, "peak_mb": peak / 1024, "before_mb": rss_before / 1024}


def agreement() -> dict:
    """Largest differences between the two models: loss/logits/latent, embedding, gradients (eval mode)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # plain fp32 on a GPU too
    ours, cfg = build("ours")
    ref, _ = build("reference")
    ours.eval()
    ref.eval()
    signal, xyz, noise = inputs(cfg)
    out = ours(signal, xyz, noise=noise)
    step = ours(signal, xyz, noise=noise, loss_only=True)  # the training step's path: its gradients are compared
    loss, pred, latent = ref(signal, xyz, noise)
    step.loss.backward()
    loss.backward()
    res = {
        "loss": max((out.loss - loss).abs().item(), (step.loss - loss).abs().item()),
        "logits": (out.logits - pred).abs().max().item(),
        "latent": (out.latent - latent).abs().max().item(),
    }
    with torch.no_grad():
        res["embedding_cls"] = (ours.encode(signal, xyz) - ref.embed(signal, xyz)).abs().max().item()
    # relative to each tensor's largest reference gradient, floored at 1e-3 of the model's largest gradient
    # (key biases get analytically zero gradients: softmax ignores a constant added to every key)
    ref_params = dict(ref.named_parameters())
    scale = max(q.grad.abs().max().item() for q in ref_params.values())
    worst, worst_conv = 0.0, 0.0
    for name, p in ours.named_parameters():
        q = ref_params[name]
        rel = (p.grad - q.grad).abs().max().item() / max(q.grad.abs().max().item(), 1e-3 * scale)
        if name.endswith("conv.weight"):
            worst_conv = max(worst_conv, rel)
        else:
            worst = max(worst, rel)
    res["grad_rel_non_conv"] = worst
    res["grad_rel_conv_weights"] = worst_conv
    return res


def bf16_agreement() -> dict:
    """CLS embedding and loss of our model under bf16 autocast against the same model in fp32 (eval mode)."""
    ours, cfg = build("ours")
    ours.eval()
    signal, xyz, noise = inputs(cfg)
    with torch.no_grad():
        e32, l32 = ours.encode(signal, xyz), ours(signal, xyz, noise=noise).loss
        with autocast("ours_bf16"):
            e16, l16 = ours.encode(signal, xyz), ours(signal, xyz, noise=noise).loss
    return {"cls_cosine_min": torch.nn.functional.cosine_similarity(e16, e32).min().item(),
            "loss_rel": abs(l16.item() - l32.item()) / l32.item(),
            "dtypes": f"{e16.dtype}/{l16.dtype}"}


def bf16_interleaved(pairs: int) -> dict:
    """fp32 and bf16 `encode` (CLS) alternated call by call in one process: on a shared machine both see the same
    load, so the median of the per-pair time ratios is the robust speed-up."""
    ours, cfg = build("ours")
    ours.eval()
    signal, xyz, _ = inputs(cfg)
    ratios, t32, t16 = [], [], []
    with torch.no_grad():
        for i in range(pairs + 1):
            sync()
            t0 = time.perf_counter()
            ours.encode(signal, xyz)
            sync()  # GPU calls are asynchronous: without this each time is the other call's wait
            t1 = time.perf_counter()
            with autocast("ours_bf16"):
                ours.encode(signal, xyz)
            sync()
            t2 = time.perf_counter()
            if i:  # the first pair warms up
                t32.append(t1 - t0)
                t16.append(t2 - t1)
                ratios.append((t1 - t0) / (t2 - t1))
    return {"fp32": t32, "bf16": t16, "ratios": ratios}


def interleaved(pairs: int) -> dict:
    """Ours and the reference alternated step by step (and embedding batch by batch) in one process: both see the
    same machine load, so the median of the per-pair ratios is the robust speed-up on a shared machine."""
    ours, cfg = build("ours")
    ref, _ = build("reference")
    signal, xyz, noise = inputs(cfg)
    out: dict[str, list[float]] = {}

    def timed(key: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        out.setdefault(key, []).append(time.perf_counter() - t0)

    def step(model, variant):
        loss = model(signal, xyz, noise=noise, loss_only=True).loss if variant == "ours" else model(signal, xyz, noise)[0]
        loss.backward()
        model.zero_grad(set_to_none=True)

    ours.train()
    ref.train()
    for _ in range(pairs + 1):
        timed("train_ours", lambda: step(ours, "ours"))
        timed("train_reference", lambda: step(ref, "reference"))
    ours.eval()
    ref.eval()
    with torch.no_grad():
        for _ in range(pairs + 1):
            timed("embed_ours", lambda: ours.encode(signal, xyz))
            timed("embed_reference", lambda: ref.embed(signal, xyz))
    return {k: v[1:] for k, v in out.items()}  # the first pair warms up


CURVE = dict(SIZE, num_timepoints_per_voxel=40, hidden_size=256, intermediate_size=512, decoder_hidden_size=256,
             decoder_intermediate_size=512, num_hidden_layers=2, decoder_num_hidden_layers=1, num_attention_heads=2,
             decoder_num_attention_heads=2)  # 424 x 40 (848 tokens), heads of 128 as in old_13M


def loss_curve(steps: int) -> None:
    """`steps` AdamW steps at a reduced shape in fp32 and in bf16 autocast from the same weights and batches."""
    from encoders.brainlm import BrainLMConfig, BrainLMForPretraining

    cfg = BrainLMConfig(**CURVE)
    print(f"loss curve: {steps} steps, 424 parcels x 40 timepoints (848 tokens), hidden 256, 2+1 layers, 2 heads, "
          f"batch {BATCH}, AdamW lr 3e-4, same weights/batches/masks in both runs", flush=True)
    curves, times = {}, {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = BrainLMForPretraining(cfg).to(DEVICE).train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
        g = torch.Generator().manual_seed(5)
        losses, t0 = [], time.perf_counter()
        for _ in range(steps):
            signal = torch.randn(BATCH, 424, 40, generator=g).to(DEVICE)
            xyz = (torch.rand(424, 3, generator=g) * 140 - 70).expand(BATCH, -1, -1).to(DEVICE)
            noise = torch.rand(BATCH, 424 * 2, generator=g).to(DEVICE)
            torch.manual_seed(len(losses))  # the same dropout masks in both runs
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
                loss = model(signal, xyz, noise=noise, loss_only=True).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        curves[prec], times[prec] = torch.tensor(losses, dtype=torch.float64), time.perf_counter() - t0
    a, b = curves["fp32"], curves["bf16"]
    rel = ((b - a).abs() / a).max().item()
    smooth = lambda c: c.unfold(0, 10, 1).mean(1) if len(c) >= 10 else c  # noqa: E731
    rel10 = ((smooth(b) - smooth(a)).abs() / smooth(a)).max().item()
    print(f"fp32 loss {a[0]:.4f} -> {a[-1]:.4f}, bf16 {b[0]:.4f} -> {b[-1]:.4f}; max relative difference per step "
          f"{rel * 100:.2f} %, of the 10-step moving average {rel10 * 100:.2f} %; time fp32 {times['fp32']:.1f} s, "
          f"bf16 {times['bf16']:.1f} s -> {times['fp32'] / times['bf16']:.2f}x")


def kernel_check(rounds: int) -> None:
    """oneDNN vs torch (MKL / SDPA) fp32 kernels on old_13M shapes, interleaved: what `cpu_kernels(op)` should pick."""
    import torch.nn.functional as F

    from encoders.brainlm import onednn

    torch.manual_seed(0)
    x = torch.randn(BATCH * 4241, 512, requires_grad=True)
    w, b = torch.randn(1536, 512, requires_grad=True), torch.randn(1536, requires_grad=True)
    q, k, v = (torch.randn(BATCH, 4241, 4, 128, requires_grad=True) for _ in range(3))

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    cases = {"linear fwd+bwd [B*4241, 512] x [512, 1536]": (onednn._Linear.apply, F.linear, (x, w, b)),
             "attention fwd+bwd [B, 4241, 4 heads, 128]": (onednn._Attention.apply, sdpa, (q, k, v))}
    for name, (ours, theirs, args) in cases.items():
        times: dict[str, list[float]] = {"oneDNN": [], "torch": []}
        for _ in range(rounds):
            for label, fn in (("oneDNN", ours), ("torch", theirs)):
                t0 = time.perf_counter()
                fn(*args).sum().backward()
                times[label].append(time.perf_counter() - t0)
        a, t = min(times["oneDNN"]), min(times["torch"])
        print(f"{name}: oneDNN {fmt(a)}, torch {fmt(t)} -> torch/oneDNN time {t / a:.2f} "
              f"({'torch' if t < a else 'oneDNN'} faster)", flush=True)


def ceiling(rounds: int) -> None:
    """How close the fp32 CLS embedding's products already run to the CPU's sgemm rate: a large MKL sgemm, SDPA
    (the attention of a full layer: 4 L^2 d flops per head) and the eager reference's attention (two bmm and a
    materialised softmax), forward, at the old_13M shape, best of `rounds`."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    q, k, v = (torch.randn(BATCH, 4, 4241, 128) for _ in range(3))
    attention_flops = BATCH * 4 * 4 * 4241 ** 2 * 128

    def eager():
        return torch.softmax(q @ k.transpose(-1, -2) / 128 ** 0.5, -1) @ v

    cases = {"sgemm 4096^3": (lambda: a @ b, 2 * 4096 ** 3),
             f"SDPA [{BATCH}, 4 heads, 4241, 128]": (lambda: F.scaled_dot_product_attention(q, k, v), attention_flops),
             "eager attention (reference), same": (eager, attention_flops)}
    with torch.no_grad():
        rates = {}
        for name, (fn, flops) in cases.items():
            fn()
            best = min(_timed(fn) for _ in range(rounds))
            rates[name] = flops / best / 1e9
            print(f"{name}: {fmt(best)}, {rates[name]:.0f} GFLOP/s", flush=True)
    sgemm, sdpa, eager_rate = rates.values()
    print(f"SDPA runs at {sdpa / sgemm:.2f} of the sgemm rate (a perfect attention kernel: {sgemm / sdpa:.2f}x "
          f"faster at most); the reference's attention at {eager_rate / sgemm:.2f}")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fmt(seconds: float) -> str:
    """Seconds as '1.23 s', or '12.3 ms' below one second (GPU steps)."""
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def run_worker(variant: str, task: str, steps: int, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, task, str(steps), "--device", str(DEVICE)]
    cmd += (["--bf16"] if BF16 else []) + ["--batch", str(BATCH)] + (["--kernels", KERNELS] if KERNELS else [])
    if threads:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"worker {variant} {task} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    global DEVICE, BF16, BATCH, KERNELS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per (variant, task)")
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per round (after 1 warm-up)")
    ap.add_argument("--embed-batches", type=int, default=3, help="timed embedding batches per round")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda; on cuda, peak = device memory")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for both models (timing only)")
    ap.add_argument("--batch", type=int, default=BATCH, help="recordings per step / embedding batch")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: time our model under bf16 autocast against our fp32 model (not the reference)")
    ap.add_argument("--loss-curve", type=int, default=0, metavar="STEPS", help="fp32 vs bf16 loss curve only")
    ap.add_argument("--kernels", choices=("onednn", "torch"), default=None, help="force the fp32 CPU kernels")
    ap.add_argument("--kernel-check", action="store_true", help="time oneDNN vs torch fp32 kernels only")
    ap.add_argument("--ceiling", action="store_true", help="SDPA's and the reference's rate vs a large sgemm only")
    ap.add_argument("--interleaved", type=int, default=0, metavar="PAIRS",
                    help="ours and the reference alternated in one process (shared machines); timing only")
    ap.add_argument("--worker", nargs=3, metavar=("VARIANT", "TASK", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    DEVICE, BF16, BATCH, KERNELS = torch.device(args.device), args.bf16, args.batch, args.kernels
    if KERNELS:
        from encoders.brainlm import onednn

        onednn.KERNELS = KERNELS
    if args.worker:
        variant, task, steps = args.worker
        jobs = {"agreement": agreement, "bf16_agreement": bf16_agreement}
        if task in ("bf16_interleaved", "interleaved"):
            print(json.dumps((bf16_interleaved if task == "bf16_interleaved" else interleaved)(int(steps))))
            return
        print(json.dumps(jobs[task]() if task in jobs else worker(variant, task, int(steps))))
        return
    if args.kernel_check:
        print(machine(), flush=True)
        kernel_check(args.rounds)
        return
    if args.ceiling:
        print(machine(), flush=True)
        ceiling(args.rounds)
        return
    if args.loss_curve:
        print(machine(), flush=True)
        loss_curve(args.loss_curve)
        return

    gpu = f", {torch.cuda.get_device_name()}" if DEVICE.type == "cuda" else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs{gpu}; "
          f"{'bf16 autocast' if BF16 else 'ours fp32 vs ours bf16' if args.precision == 'bf16' else 'fp32'}; "
          f"batch {BATCH}, "
          f"old_13M size; rounds {args.rounds}", flush=True)
    if DEVICE.type == "cpu":
        print(machine(), flush=True)
    bf16_mode = args.precision == "bf16"
    if bf16_mode and not args.skip_agreement:
        agree = run_worker("ours", "bf16_agreement", 0, args.threads)
        print(f"bf16 vs fp32 (ours, same weights): CLS cosine min {agree['cls_cosine_min']:.6f}, loss relative "
              f"difference {agree['loss_rel']:.2e}, output dtypes {agree['dtypes']}", flush=True)
    if bf16_mode:
        inter = run_worker("ours", "bf16_interleaved", max(args.embed_batches, 2), args.threads)
        print("embedding (CLS), fp32 and bf16 calls alternated in one process: fp32 " +
              " ".join(fmt(t) for t in inter["fp32"]) + ", bf16 " + " ".join(fmt(t) for t in inter["bf16"]) +
              f" -> median per-pair speed-up {statistics.median(inter['ratios']):.2f}x", flush=True)
    elif args.interleaved:
        res = run_worker("both", "interleaved", args.interleaved, args.threads)
        for task in ("train", "embed"):
            o, r = res[f"{task}_ours"], res[f"{task}_reference"]
            ratio = statistics.median(b / a for a, b in zip(o, r))
            print(f"{task} (alternated in one process): ours " + " ".join(fmt(t) for t in o) + ", reference " +
                  " ".join(fmt(t) for t in r) + f" -> median per-pair speed-up {ratio:.2f}x", flush=True)
        return
    elif not args.skip_agreement:  # in a subprocess too: ru_maxrss is inherited by the workers started after it
        agree = run_worker("both", "agreement", 0, args.threads)
        print("max |ours - reference| (eval, same weights and noise): " +
              ", ".join(f"{k} {v:.2e}" for k, v in agree.items()), flush=True)
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for task, steps in (("train", args.steps), ("embed", args.embed_batches), ("embed_mean", args.embed_batches)):
            variants = ("ours", "ours_bf16" if bf16_mode else "reference")
            if task == "embed_mean":
                variants = variants if bf16_mode else ("ours",)
            for variant in (variants if r % 2 == 0 else variants[::-1]):
                res = run_worker(variant, task, steps, args.threads)
                results.setdefault((variant, task), []).append(res)
                print(f"round {r + 1} {task:5s} {variant:9s}: " + " ".join(fmt(t) for t in res["times"]) +
                      f"  peak {res['peak_mb']:.0f} MB (before first step {res['before_mb']:.0f} MB)", flush=True)

    def med(variant, task, key):
        if key == "time":
            return statistics.median(t for res in results[(variant, task)] for t in res["times"])
        return statistics.median(res[key] for res in results[(variant, task)])

    if not results:  # --rounds 0: the agreement (and, with --precision bf16, the interleaved timing) only
        return
    mem = "peak GPU memory" if DEVICE.type == "cuda" else "peak RSS"
    print("\nmedians")
    if bf16_mode:
        for task, unit in (("train", "/step"), ("embed", "/batch"), ("embed_mean", "/batch")):
            f32, b16 = med("ours", task, "time"), med("ours_bf16", task, "time")
            print(f"{task}: ours fp32 {fmt(f32)}{unit}, ours bf16 {fmt(b16)}{unit} -> bf16 speed-up {f32 / b16:.2f}x; "
                  f"{mem} fp32 {med('ours', task, 'peak_mb'):.0f} MB, bf16 {med('ours_bf16', task, 'peak_mb'):.0f} MB")
        return
    for task, unit in (("train", "/step"), ("embed", "/batch")):
        o, ref = med("ours", task, "time"), med("reference", task, "time")
        po, pr = med("ours", task, "peak_mb"), med("reference", task, "peak_mb")
        bo, br = med("ours", task, "before_mb"), med("reference", task, "before_mb")
        print(f"{task}: ours {fmt(o)}{unit}, reference {fmt(ref)}{unit} -> speed-up {ref / o:.2f}x; "
              f"{mem} ours {po:.0f} MB, reference {pr:.0f} MB -> ratio {po / pr:.2f} "
              f"(above the pre-step level: {po - bo:.0f} vs {pr - br:.0f} MB -> {(po - bo) / (pr - br):.2f})")
        if task == "embed":
            print(f"embedding throughput (cls): ours {BATCH / o:.2f} recordings/s, reference {BATCH / ref:.2f} "
                  f"recordings/s -> {ref / o:.2f}x")
            m = med("ours", "embed_mean", "time")
            print(f"embedding with mean pooling (every row of the last layer): ours {fmt(m)}/batch, "
                  f"{BATCH / m:.2f} recordings/s -> {ref / m:.2f}x the reference")


if __name__ == "__main__":
    main()
