"""Pretraining evaluation: masked-reconstruction metrics with two baselines, and the reconstruction figure."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from brainmm.distributed import DistInfo, all_reduce_sum, shard_range
from brainmm.train.common import (
    eval_mode,
)
from brainmm.train.pretrain_config import PretrainEvalConfig
from encoders.precision import autocast

# ---------------------------------------------------------------------------------------------- metrics


def interpolate_masked(signal: torch.Tensor, masked: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of each parcel's masked timepoints between its nearest visible ones.

    signal, masked: [B, V, T] (masked True = hidden). Before the first / after the last visible sample the
    nearest visible value is held; a parcel with nothing visible gets `fallback` [V].
    """
    t = signal.shape[-1]
    idx = torch.arange(t, device=signal.device).expand_as(signal)
    visible = ~masked
    prev = torch.where(visible, idx, -1).cummax(dim=-1).values
    nxt = torch.where(visible, idx, t).flip(-1).cummin(dim=-1).values.flip(-1)
    has_prev, has_next = prev >= 0, nxt < t
    y_prev = signal.gather(-1, prev.clamp(min=0))
    y_next = signal.gather(-1, nxt.clamp(max=t - 1))
    span = (nxt - prev).clamp(min=1).to(signal.dtype)
    w = ((idx - prev).to(signal.dtype) / span).clamp(0, 1)
    both = y_prev + w * (y_next - y_prev)
    out = torch.where(has_prev & has_next, both, torch.where(has_prev, y_prev, y_next))
    none = ~(has_prev | has_next)
    return torch.where(none, fallback.to(signal.dtype)[None, :, None].expand_as(signal), out)


SUMS = ("n", "y", "y2", "p", "p2", "yp", "abs", "sq", "sq_mean", "sq_interp")


def masked_sums(signal: torch.Tensor, pred: torch.Tensor, masked: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """float64 sums over masked timepoints (order: SUMS) from which every metric follows; add them over batches."""
    y = signal[masked].double()
    p = pred[masked].double()
    base_mean = mean.to(signal.device)[None, :, None].expand_as(signal)[masked].double()
    base_interp = interpolate_masked(signal, masked, mean.to(signal.device))[masked].double()
    d = p - y
    return torch.stack([
        torch.tensor(float(y.numel()), dtype=torch.float64, device=y.device), y.sum(), y.square().sum(), p.sum(),
        p.square().sum(), (y * p).sum(), d.abs().sum(), d.square().sum(), (base_mean - y).square().sum(),
        (base_interp - y).square().sum(),
    ])


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """masked_mse/mae, r2 (unclipped) and r2_clipped, pearson_r, and the two baseline MSEs."""
    s = dict(zip(SUMS, sums.double().cpu().tolist()))
    n = max(s["n"], 1.0)
    ss_tot = s["y2"] - s["y"] ** 2 / n
    var_p = s["p2"] - s["p"] ** 2 / n
    cov = s["yp"] - s["y"] * s["p"] / n
    r2 = 1.0 - s["sq"] / ss_tot if ss_tot > 0 else float("nan")
    denom = math.sqrt(ss_tot * var_p) if ss_tot > 0 and var_p > 0 else 0.0
    return {
        "masked_mse": s["sq"] / n, "masked_mae": s["abs"] / n, "r2": r2,
        "r2_clipped": max(0.0, r2) if r2 == r2 else r2, "pearson_r": cov / denom if denom else float("nan"),
        "baseline_mean_mse": s["sq_mean"] / n, "baseline_interp_mse": s["sq_interp"] / n,
        "num_masked_values": s["n"],
    }


def eval_noise(seed: int, index: int, length: int) -> torch.Tensor:
    """The fixed masking noise of evaluation window `index` ([length]; the same in every run)."""
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63))
    return torch.rand(length, generator=gen)


@dataclass
class Example:
    """One evaluated window for the reconstruction figure."""

    recording_id: str
    start: int
    signal: np.ndarray  # [V, T]
    pred: np.ndarray
    masked: np.ndarray  # [V, T] bool


def _reconstruct(model: nn.Module, windows: Dataset, idx: list[int], cfg: PretrainEvalConfig, device: torch.device,
                 precision: str) -> tuple[list[dict], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows `idx` with their fixed noise through the model: (items, signal, prediction, masked), [B, V, T]."""
    mc = model.config
    length = mc.num_brain_voxels * (mc.num_timepoints_per_voxel // mc.timepoint_patching_size)
    items = [windows[i] for i in idx]
    signal = torch.stack([it["signal_vectors"] for it in items]).to(device)
    xyz = torch.stack([it["xyz_vectors"] for it in items]).to(device)
    noise = torch.stack([eval_noise(cfg.seed, i, length) for i in idx]).to(device)
    with autocast(precision, device):
        out = model(signal_vectors=signal, xyz_vectors=xyz, noise=noise)
    b, v, t = signal.shape
    pred = out.logits.float().reshape(b, v, t)
    masked = out.mask.bool().unsqueeze(-1).expand(-1, -1, -1, mc.timepoint_patching_size).reshape(b, v, t)
    return items, signal, pred, masked


@torch.no_grad()
def evaluate(model: nn.Module, windows: Dataset, mean: torch.Tensor, cfg: PretrainEvalConfig, info: DistInfo,
             precision: str) -> dict[str, float]:
    """Masked-reconstruction metrics and baselines over `windows` (sharded over ranks, sums all-reduced)."""
    mine = list(shard_range(len(windows), info.rank, info.world_size))
    sums = torch.zeros(len(SUMS), dtype=torch.float64, device=info.device)
    with eval_mode(model):
        for start in range(0, len(mine), cfg.batch_size):
            _, signal, pred, masked = _reconstruct(model, windows, mine[start : start + cfg.batch_size], cfg,
                                                   info.device, precision)
            sums += masked_sums(signal, pred, masked, mean)
    metrics = metrics_from_sums(all_reduce_sum(sums))
    metrics["num_windows"] = float(len(windows))
    return metrics


@torch.no_grad()
def example_window(model: nn.Module, windows: Dataset, cfg: PretrainEvalConfig, device: torch.device,
                   precision: str) -> Example:
    """Window 0 of `windows` reconstructed with its evaluation noise (for the figure)."""
    with eval_mode(model):
        items, signal, pred, masked = _reconstruct(model, windows, [0], cfg, device, precision)
    return Example(items[0]["recording_id"], int(items[0]["start"]), signal[0].cpu().numpy(), pred[0].cpu().numpy(),
                   masked[0].cpu().numpy())


def reconstruction_figure(example: Example, num_parcels: int, labels: list[str] | None = None, tr: float | None = None):
    """Matplotlib figure: a few parcels' true signal, masked spans shaded, and the prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [v for v in range(example.signal.shape[0]) if example.masked[v].any()][:num_parcels]
    rows = rows or list(range(min(num_parcels, example.signal.shape[0])))
    t = example.signal.shape[1]
    x = (np.arange(t) + example.start) * (tr or 1.0)
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.8 * len(rows)), sharex=True, squeeze=False)
    for ax, v in zip(axes[:, 0], rows):
        m = example.masked[v]
        edges = np.flatnonzero(np.diff(np.concatenate([[0], m.astype(int), [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            ax.axvspan(x[a], x[b - 1], color="0.85", lw=0)
        ax.plot(x, example.signal[v], color="k", lw=0.9, label="true")
        ax.plot(x, np.where(m, example.pred[v], np.nan), color="tab:red", lw=1.2, label="prediction (masked)")
        ax.plot(x, np.where(m, np.nan, example.pred[v]), color="tab:red", lw=0.6, alpha=0.4, ls="--",
                label="prediction (visible)")
        ax.set_ylabel(labels[v] if labels else f"parcel {v}", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="upper right", ncol=3)
    axes[0, 0].set_title(f"{example.recording_id} (window start {example.start}); grey = masked", fontsize=9)
    axes[-1, 0].set_xlabel("time (s)" if tr else "time point")
    fig.tight_layout()
    return fig
