"""Benchmark: one alignment epoch reading cached brain embeddings vs re-encoding every step through a frozen BrainLM.

Both variants train the same projector step (brain head Linear(H, 512), genetics head Linear(G, 512), symmetric
CLIP loss, AdamW) on the same batches of N recordings. `cached` reads the EmbeddingTable written by `brainmm embed`
(the table load counts toward the epoch); `re-encode` reads one random 200-TR window per recording from the
on-disk fMRI dataset every step and runs the frozen BrainLM encoder (inference mode, CLS pooling) before the head
step. Re-encoding one window per step is a lower bound of its cost (the cached vectors average all tiled windows
of a recording). Random-init weights of the chosen shape; synthetic recordings of 424 parcels x 220 TRs.

    python benchmarks/frozen_cache.py [--shape old_13M|small] [--recordings 16] [--batch-size 8]
                                      [--cached-repeats 20] [--threads N]

`old_13M`: hidden 512, 4 encoder layers, 4 heads, intermediate 1024, 424 parcels x 200 TRs, patch 20 (4240 tokens),
the shape of the released 13M checkpoint. `small`: hidden 128, 2 layers, patch 40 (for quick runs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

SHAPES = {
    "old_13M": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                    decoder_hidden_size=512, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                    decoder_intermediate_size=1024, timepoint_patching_size=20, conv_kernel_size=65),
    "small": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                  decoder_hidden_size=128, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
                  decoder_intermediate_size=256, timepoint_patching_size=40, conv_kernel_size=65),
}
PARCELS, WINDOW, LENGTH, GENETICS_DIM, SHARED_DIM = 424, 200, 220, 64, 512


def make_inputs(root: Path, n: int, shape: str) -> tuple[Path, Path]:
    """An ingested synthetic dataset of n recordings and a random-init BrainLM checkpoint of `shape`."""
    import pandas as pd

    from brainmm.data.fmri import IngestConfig, ingest
    from encoders.brainlm import BrainLMConfig, BrainLMForPretraining

    rng = np.random.default_rng(0)
    src = root / "src"
    src.mkdir()
    for i in range(n):
        np.save(src / f"r{i}.npy", rng.normal(size=(LENGTH, PARCELS)).astype(np.float32))
    pd.DataFrame({"subject_id": [f"s{i:04d}" for i in range(n)], "path": [f"r{i}.npy" for i in range(n)]}).to_csv(
        src / "cohort.csv", index=False)
    pd.DataFrame(rng.uniform(-60, 60, (PARCELS, 3)), columns=list("xyz")).to_csv(src / "coords.tsv", sep="\t",
                                                                                 index=False)
    dataset = ingest(src / "cohort.csv", root / "dataset", IngestConfig(
        coords=src / "coords.tsv", num_timepoints=WINDOW, tr=0.72, split_fractions=(1.0, 0.0, 0.0)))
    torch.manual_seed(0)
    config = BrainLMConfig(**SHAPES[shape], num_brain_voxels=PARCELS, num_timepoints_per_voxel=WINDOW)
    BrainLMForPretraining(config).save_pretrained(root / "model")
    return dataset, root / "model"


class Heads(nn.Module):
    """The trainable part of an alignment step: two linear projectors and a CLIP temperature."""

    def __init__(self, brain_dim: int) -> None:
        super().__init__()
        self.brain = nn.Linear(brain_dim, SHARED_DIM)
        self.genetics = nn.Linear(GENETICS_DIM, SHARED_DIM)
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

    def loss(self, brain: torch.Tensor, genetics: torch.Tensor) -> torch.Tensor:
        a = nn.functional.normalize(self.brain(brain), dim=-1)
        b = nn.functional.normalize(self.genetics(genetics), dim=-1)
        logits = self.logit_scale.exp() * a @ b.T
        target = torch.arange(len(a))
        return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))


def head_step(heads: Heads, opt: torch.optim.Optimizer, brain: torch.Tensor, genetics: torch.Tensor) -> float:
    """One optimizer step of the heads."""
    opt.zero_grad(set_to_none=True)
    loss = heads.loss(brain, genetics)
    loss.backward()
    opt.step()
    return float(loss.detach())


def batches(n: int, batch_size: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def cached_epoch(table_stem: Path, genetics: torch.Tensor, batch_size: int, epoch: int) -> float:
    """Seconds for one epoch that reads the cached table."""
    from brainmm.embeddings import EmbeddingTable

    start = time.perf_counter()
    brain = torch.from_numpy(EmbeddingTable.load(table_stem).vectors)
    torch.manual_seed(0)
    heads = Heads(brain.shape[1])
    opt = torch.optim.AdamW(heads.parameters(), lr=1e-3)
    for idx in batches(len(brain), batch_size, epoch):
        head_step(heads, opt, brain[idx], genetics[idx])
    return time.perf_counter() - start


def reencode_epoch(model: nn.Module, windows, genetics: torch.Tensor, batch_size: int, epoch: int) -> float:
    """Seconds for one epoch that re-encodes a window of every recording through the frozen model each step."""
    start = time.perf_counter()
    windows.set_epoch(epoch)
    torch.manual_seed(0)
    heads = Heads(model.config.hidden_size)
    opt = torch.optim.AdamW(heads.parameters(), lr=1e-3)
    for idx in batches(len(windows), batch_size, epoch):
        items = [windows[i] for i in idx]
        with torch.inference_mode():
            brain = model.encode(torch.stack([it["signal_vectors"] for it in items]),
                                 torch.stack([it["xyz_vectors"] for it in items]), pooling="cls")
        head_step(heads, opt, brain.clone(), genetics[idx])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="old_13M")
    parser.add_argument("--recordings", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cached-repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import os

    os.environ.setdefault("BRAINMM_QUIET", "1")
    from brainmm.data.fmri import FmriDataset
    from brainmm.embed import EmbedConfig, run_brain_embed
    from encoders.brainlm import BrainLMModel

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset, model_dir = make_inputs(root, args.recordings, args.shape)
        t0 = time.perf_counter()
        result = run_brain_embed(EmbedConfig(model=str(model_dir), dataset=str(dataset), device="cpu",
                                       batch_size=args.batch_size, cache_dir=str(root / "cache"),
                                       out=str(root / "brain")))
        embed_seconds = time.perf_counter() - t0
        genetics = torch.randn(args.recordings, GENETICS_DIM, generator=torch.Generator().manual_seed(1))
        model = BrainLMModel.from_pretrained(model_dir).eval()
        windows = FmriDataset.load(dataset).windows("train", WINDOW, mode="random", seed=0)
        cached = [cached_epoch(result.recordings, genetics, args.batch_size, e) for e in range(args.cached_repeats)]
        reencode = reencode_epoch(model, windows, genetics, args.batch_size, 0)
    n_params = sum(p.numel() for p in model.parameters())
    steps = args.recordings // args.batch_size
    c = statistics.median(cached)
    print(f"BrainLM shape {args.shape} (encoder {n_params / 1e6:.2f} M parameters, {PARCELS} parcels x {WINDOW} TRs, "
          f"patch {SHAPES[args.shape]['timepoint_patching_size']}), {args.recordings} recordings, batch "
          f"{args.batch_size} ({steps} steps per epoch), torch threads {torch.get_num_threads()}")
    print(f"one-off cache build (brainmm embed, 2 tiled windows per recording): {embed_seconds:.2f} s")
    print(f"epoch reading cached embeddings: {c * 1e3:.2f} ms (median of {args.cached_repeats})")
    print(f"epoch re-encoding every step:    {reencode * 1e3:.0f} ms")
    print(f"speed-up of the cache: {reencode / c:.0f}x (goal >= 50x)")


if __name__ == "__main__":
    main()
