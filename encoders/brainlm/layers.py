"""BrainLM building blocks: the sinusoidal time encoding and the Nystromformer block as exact softmax attention.

With `num_landmarks == segment_means_seq_len` (every released checkpoint) transformers' `NystromformerLayer`
is exact softmax attention plus a depthwise convolution of V along the sequence, in a post-LN BERT block.
`BrainLMLayer` computes exactly that without storing an L x L matrix (`onednn.attention`: oneDNN blocks on CPU,
`scaled_dot_product_attention` elsewhere) and the convolution as banded matrix products (`sequence_conv`), under
the original parameter names (`attention.self.query`, ..., `output.LayerNorm`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from encoders.brainlm.onednn import Linear, attention, linear

PE_DROPOUT = 0.1  # hard-coded in the original PositionalEncoding (not read from the config)


def sinusoidal_table(length: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The original float32 table: row p = [sin(p w_0), cos(p w_0), sin(p w_1), ...], w_i = 10000^(-2i/dim)."""
    div_term = torch.exp(torch.arange(0, dim, 2, device=device) * (-math.log(10000.0) / dim))
    position = torch.arange(length, device=device).unsqueeze(1)
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table


class BrainLMPositionalEncoding(nn.Module):
    """Adds row p of a fixed sinusoidal table to every token of time patch p (all parcels share it), then dropout."""

    def __init__(self, dim: int, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(PE_DROPOUT)
        self.register_buffer("pe", sinusoidal_table(max_len, dim))  # persistent, as in the original state dict

    def forward(self, x: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """x: [B, V, P, dim] -> x + pe[:P] (dropout 0.1 in training unless `deterministic`)."""
        x = x + self.pe[: x.shape[2]]
        return x if deterministic else self.dropout(x)


def sequence_conv(values: torch.Tensor, weight: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Per-head 1-D convolution along the sequence, zero padded ("same"), as matrix products.

    values `[B, L, heads, dh]`, weight `[heads, K]` (K odd) -> `[B, L, heads, dh]`; equal to the original
    `Conv2d(heads, heads, (K, 1), padding=(K // 2, 0), groups=heads)` on `[B, heads, L, dh]`. Blocks of `S` output
    rows are a banded Toeplitz matrix `[S, S + K - 1]` times a window of the input, so the work runs in batched
    GEMMs (several times faster on CPU than a depthwise convolution with K = 65, and the weight gradient is
    exact; oneDNN's fp32 grouped Conv2d weight gradient is wrong for K = 65 in torch 2.13).
    """
    batch, length, heads, head_dim = values.shape
    kernel = weight.shape[1]
    half = kernel // 2
    rows = max(block, 2 * half)
    blocks = -(-length // rows)
    padded = F.pad(values, (0, 0, 0, 0, half, blocks * rows - length + half))
    windows = padded.unfold(1, rows + 2 * half, rows)  # [B, blocks, heads, dh, S + K - 1]
    offset = torch.arange(rows + 2 * half, device=values.device) - torch.arange(rows, device=values.device)[:, None]
    offset = torch.where((offset >= 0) & (offset < kernel), offset, kernel)  # index `kernel` = a zero tap
    band = torch.cat([weight, weight.new_zeros(heads, 1)], dim=1)[:, offset]  # [heads, S, S + K - 1]
    out = torch.einsum("hrc,bnhdc->bnrhd", band, windows)
    return out.reshape(batch, blocks * rows, heads, head_dim)[:, :length]


Rows = int | torch.Tensor | None  # output rows to compute: all (None), the first n, or a [B, n] index tensor


def select_rows(x: torch.Tensor, rows: int | torch.Tensor) -> torch.Tensor:
    """x `[B, L, ...]` -> `[B, n, ...]`: the first `rows` rows, or the rows indexed by a `[B, n]` tensor."""
    if isinstance(rows, int):
        return x[:, :rows]
    return torch.gather(x, 1, rows.view(*rows.shape, *(1,) * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))


class BrainLMSelfAttention(nn.Module):
    """Exact softmax attention + per-head convolution of V along the sequence (Nystromformer with K odd)."""

    def __init__(self, hidden_size: int, num_heads: int, conv_kernel_size: int | None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.conv = None
        if conv_kernel_size is not None:
            # Kept as the original Conv2d(kernel (K, 1)) so the key and shape ([heads, 1, K, 1]) stay the same;
            # forward applies its weights with `sequence_conv`.
            self.conv = nn.Conv2d(num_heads, num_heads, kernel_size=(conv_kernel_size, 1),
                                  padding=(conv_kernel_size // 2, 0), groups=num_heads, bias=False)

    def forward(self, hidden_states: torch.Tensor, queries: Rows = None) -> torch.Tensor:
        """[B, L, H] -> context [B, L, H] (before the output projection); with `queries` only those rows attend (to
        all L tokens): `n` = the first n rows, a `[B, n]` index tensor = those rows; the context is `[B, n, H]`,
        equal to those rows of the full one."""
        batch, length, hidden = hidden_states.shape
        heads, dim = self.num_heads, self.head_dim
        if queries is None:
            weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
            bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            qkv = linear(hidden_states, weight, bias).view(batch, length, 3, heads, dim)
            q, k, v = qkv.unbind(2)  # each [B, L, heads, dh]
        else:
            picked = select_rows(hidden_states, queries)
            q = linear(picked, self.query.weight, self.query.bias).view(batch, -1, heads, dim)
            weight = torch.cat([self.key.weight, self.value.weight])
            bias = torch.cat([self.key.bias, self.value.bias])
            k, v = linear(hidden_states, weight, bias).view(batch, length, 2, heads, dim).unbind(2)
        # softmax(q k^T / sqrt(dh)) v == the original q/dh^(1/4), k/dh^(1/4) scaling
        context = attention(q, k, v)
        rows = context.shape[1]
        if self.conv is not None:
            kernel = self.conv.weight.view(heads, -1)
            if isinstance(queries, torch.Tensor):
                context = context + select_rows(sequence_conv(v, kernel), queries)
            else:
                reach = min(length, rows + kernel.shape[1] // 2)  # output row i reads rows i +- K // 2
                context = context + sequence_conv(v[:, :reach], kernel)[:, :rows]
        return context.reshape(batch, rows, hidden)


class BrainLMSelfOutput(nn.Module):
    """Holds `attention.output.{dense, LayerNorm}`."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.dense = Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)


class BrainLMAttention(nn.Module):
    """Holds `attention.self` and `attention.output`."""

    def __init__(self, hidden_size: int, num_heads: int, conv_kernel_size: int | None, eps: float):
        super().__init__()
        self.self = BrainLMSelfAttention(hidden_size, num_heads, conv_kernel_size)
        self.output = BrainLMSelfOutput(hidden_size, eps)


class BrainLMIntermediate(nn.Module):
    """Holds `intermediate.dense`."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.dense = Linear(hidden_size, intermediate_size)


class BrainLMOutput(nn.Module):
    """Holds `output.{dense, LayerNorm}`."""

    def __init__(self, hidden_size: int, intermediate_size: int, eps: float):
        super().__init__()
        self.dense = Linear(intermediate_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)


class BrainLMLayer(GradientCheckpointingLayer):
    """Post-LN block: a = LN(Wo ctx + h); y = LN(W2 act(W1 a) + a); hidden dropout before each residual add."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, conv_kernel_size: int | None,
                 hidden_act: str, eps: float, dropout: float):
        super().__init__()
        self.attention = BrainLMAttention(hidden_size, num_heads, conv_kernel_size, eps)
        self.intermediate = BrainLMIntermediate(hidden_size, intermediate_size)
        self.output = BrainLMOutput(hidden_size, intermediate_size, eps)
        self.act = ACT2FN[hidden_act]
        self.dropout = dropout

    def forward(self, hidden_states: torch.Tensor, deterministic: bool = False, queries: Rows = None
                ) -> torch.Tensor:
        """[B, L, H] -> [B, L, H]; `deterministic` switches hidden dropout off even in training mode.

        `queries` (the first n rows, or a `[B, n]` index tensor) computes only those output rows (`[B, n, H]`,
        exactly those of the full output; every token still serves as key and value): the last layer of a CLS
        embedding needs one row, the decoder's last layer of a training step only the masked tokens.
        """
        drop = self.training and not deterministic and self.dropout > 0
        attn = self.attention
        x = attn.output.dense(attn.self(hidden_states, queries))
        if drop:
            x = F.dropout(x, self.dropout, training=True)
        a = attn.output.LayerNorm(x + (hidden_states if queries is None else select_rows(hidden_states, queries)))
        y = self.output.dense(self.act(self.intermediate.dense(a)))
        if drop:
            y = F.dropout(y, self.dropout, training=True)
        return self.output.LayerNorm(y + a)
