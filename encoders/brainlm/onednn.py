"""fp32 CPU matrix products through oneDNN: a linear layer and exact softmax attention, both with autograd.

On CPU, torch's fp32 `F.linear`, `matmul` and SDPA run their products in MKL sgemm. The fastest path depends on the
CPU (benchmarks/brainlm_step.md, `--kernel-check`), so each op is chosen per CPU (`cpu_kernels(op)`):
- linear: oneDNN's inner product (`torch.ops.mkldnn._linear_pointwise`, the op inductor emits) except on Intel
  with AVX-512, where MKL runs its AVX-512 code (oneDNN 1.5-1.9x faster on AMD with AVX2, 1.13x on AMD Zen 4
  with AVX-512; 0.85x on Intel);
- attention: the oneDNN blocks below on CPUs without AVX-512, SDPA's fused flash kernel where torch runs AVX-512
  (there the blocks lose: their elementwise passes over each [256, L] score block leave the L2, while the flash
  kernel works on cache-resident tiles; SDPA 1.2x faster on Zen 4, 7x on Intel; 0.6x on AMD with AVX2).
`linear` and `attention` use oneDNN for float32 CPU tensors outside autocast where their op picks it and fall back
to `F.linear` / `scaled_dot_product_attention` otherwise (under bf16 autocast those run oneDNN's bf16 kernels,
AMX where the CPU has it, with fp32 softmax statistics inside SDPA).
Attention never stores an L x L matrix: the forward keeps the log-sum-exp of each query row and the backward
recomputes the probabilities one block of keys at a time (the FlashAttention recipe, with blocks of a few
hundred rows so that each product is a large GEMM).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

KERNELS: str | None = None  # "onednn" or "torch" forces both ops (benchmarks, tests); None: chosen per CPU and op
OPS = ("linear", "attention")
BLOCK = 256  # query / key rows per block: [BLOCK, L] scores stay in the L2/L3 cache
MIN_HEAD_DIM = 64  # below this the per-head products are too small to beat SDPA's fused kernel (16: 0.7-0.9x)


@functools.cache
def _onednn_available() -> bool:
    """Whether torch was built with oneDNN's fp32 linear op and it computes a product correctly."""
    try:
        one = torch.ones(1, 1)
        return bool(torch.ops.mkldnn._linear_pointwise(one, one, None, "none", [], "").item() == 1.0)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@functools.cache
def _cpu_default(op: str) -> str:
    """linear: `torch` on Intel with AVX-512 (MKL's AVX-512 sgemm), else `onednn`; attention: `torch` (SDPA)
    wherever the CPU has AVX-512, else `onednn`."""
    from encoders.precision import cpu_capabilities, cpu_vendor

    avx512 = bool(cpu_capabilities().get("avx512_f"))
    if op == "linear":
        return "torch" if avx512 and cpu_vendor() == "GenuineIntel" else "onednn"
    return "torch" if avx512 else "onednn"


def cpu_kernels(op: str) -> str:
    """Which fp32 CPU kernel BrainLM's `op` (`linear` or `attention`) uses: `onednn` (this module) or `torch`."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return KERNELS or _cpu_default(op)


def use_onednn(x: torch.Tensor, op: str) -> bool:
    """True for float32 CPU tensors outside CPU autocast where oneDNN is `op`'s faster path (`cpu_kernels`) and
    oneDNN's linear op is available."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and cpu_kernels(op) == "onednn" and _onednn_available())


def _nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a [N, C] @ b[O, C].T (+ bias) with oneDNN; `b` dense or the transpose of a dense matrix (other strides
    fall to a reference kernel, hundreds of times slower)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _Linear(torch.autograd.Function):
    """y = x W^T + b; forward and input gradient in oneDNN, weight gradient in one GEMM over all rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return _nt(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0]).contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _nt(g, weight.t()).view(*grad.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            dw = _nt(g.t(), rows.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`; through oneDNN for float32 CPU tensors (see the module docstring)."""
    if use_onednn(x, "linear") and weight.dtype == torch.float32:
        # a dense weight: oneDNN falls to a reference kernel, hundreds of times slower, on other strides
        return _Linear.apply(x, weight.contiguous(), bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state-dict keys) whose forward is `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class _Attention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v for q `[B, Lq, heads, d]`, k, v `[B, L, heads, d]` (any strides) -> like q."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, length, heads, dim = q.shape
        scale = 1.0 / math.sqrt(dim)
        out = q.new_empty(batch, length, heads, dim)
        lse = q.new_empty(batch, heads, length)
        for b in range(batch):
            for h in range(heads):
                qs, kh = (q[b, :, h] * scale).contiguous(), k[b, :, h].contiguous()
                vt = v[b, :, h].t().contiguous()  # oneDNN's fast kernels want dense operands
                for s in range(0, length, BLOCK):
                    scores = _nt(qs[s:s + BLOCK], kh)  # [rows, L]
                    top = scores.amax(1, keepdim=True)
                    probs = scores.sub_(top).exp_()
                    total = probs.sum(1, keepdim=True)
                    out[b, s:s + BLOCK, h] = _nt(probs, vt).div_(total)
                    lse[b, h, s:s + BLOCK] = (top + total.log()).squeeze(1)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        batch, keys, heads, dim = k.shape
        scale = 1.0 / math.sqrt(dim)
        dq, dk, dv = torch.empty_like(out), k.new_empty(k.shape), v.new_empty(v.shape)
        for b in range(batch):
            for h in range(heads):
                qs, kh, vh = (q[b, :, h] * scale).contiguous(), k[b, :, h].contiguous(), v[b, :, h].contiguous()
                go = grad[b, :, h].contiguous()
                delta = (go * out[b, :, h]).sum(1)  # rowsum(dO * O) = rowsum(P * dP)
                row_lse = lse[b, h]
                dqs = torch.zeros_like(qs)
                # one block of keys at a time, scores transposed ([keys, queries]) so every product is x @ W^T
                for s in range(0, keys, BLOCK):
                    probs_t = _nt(kh[s:s + BLOCK], qs).sub_(row_lse).exp_()  # P^T block
                    dv[b, s:s + BLOCK, h] = _nt(probs_t, go.t())
                    dscores_t = _nt(vh[s:s + BLOCK], go).sub_(delta).mul_(probs_t)  # dS^T = P^T * (dP^T - delta)
                    dk[b, s:s + BLOCK, h] = _nt(dscores_t, qs.t())
                    dqs.addmm_(dscores_t.t(), kh[s:s + BLOCK])
                dq[b, :, h] = dqs.mul_(scale)
        return dq, dk, dv


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact softmax attention, q `[B, Lq, heads, d]`, k/v `[B, L, heads, d]` -> `[B, Lq, heads, d]`; oneDNN blocks
    on float32 CPU where `cpu_kernels("attention")` picks them and the head size is >= `MIN_HEAD_DIM`, SDPA
    otherwise."""
    if q.shape[-1] >= MIN_HEAD_DIM and use_onednn(q, "attention"):
        return _Attention.apply(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
