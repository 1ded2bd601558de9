"""Benchmark: peak memory of `brainmm embed` on 1,000 and 10,000 synthetic recordings (flat memory = the goal).

Each size gets an on-disk fMRI dataset (ingested with `brainmm.data.fmri.ingest` from .npy files: V parcels x T
time points per recording, two recordings per subject) and is embedded by a tiny random-init BrainLM in its own
subprocess with a fresh cache, so the peak RSS (`ru_maxrss`) is that run's alone. Printed per size: wall time,
peak RSS, its growth over the footprint just before `run_brain_embed` (libraries imported), and the peak of the process's
anonymous (private, non-file) memory sampled every 5 ms. Peak RSS also counts the pages of the memory-mapped
Arrow file that were read (page cache, reclaimable, proportional to the data read); the anonymous peak is the
memory the process itself holds. Streaming means the anonymous peak does not grow with N.

    python benchmarks/embed_streaming.py [--sizes 1000 10000] [--parcels 16] [--timepoints 60] [--window 20]
                                         [--workdir DIR] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_dataset(root: Path, n: int, parcels: int, timepoints: int, window: int) -> Path:
    """Ingest n synthetic recordings (once; reused when present)."""
    import numpy as np
    import pandas as pd

    from brainmm.data.fmri import IngestConfig, ingest

    out = root / f"dataset-{n}"
    if (out / "manifest.json").is_file():
        return out
    src = root / f"src-{n}"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    rows = []
    for i in range(n):
        np.save(src / f"r{i}.npy", rng.normal(size=(timepoints, parcels)).astype(np.float32))
        rows.append({"subject_id": f"s{i // 2:06d}", "session": str(i % 2), "path": f"r{i}.npy"})
    pd.DataFrame(rows).to_csv(src / "cohort.csv", index=False)
    pd.DataFrame(rng.uniform(-60, 60, (parcels, 3)), columns=list("xyz")).to_csv(src / "coords.tsv", sep="\t",
                                                                                  index=False)
    return ingest(src / "cohort.csv", out, IngestConfig(coords=src / "coords.tsv", num_timepoints=window, tr=1.0))


def make_model(root: Path, parcels: int, window: int) -> Path:
    """A tiny random-init Nystromformer BrainLM checkpoint folder."""
    import torch

    from encoders.brainlm import BrainLMConfig, BrainLMForPretraining

    out = root / "model"
    if not (out / "config.json").is_file():
        torch.manual_seed(0)
        cfg = BrainLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
                            decoder_intermediate_size=64, num_brain_voxels=parcels, num_timepoints_per_voxel=window,
                            timepoint_patching_size=10, conv_kernel_size=None)
        BrainLMForPretraining(cfg).save_pretrained(out)
    return out


def _anon_mib() -> float:
    """Anonymous resident memory of this process (RssAnon in /proc/self/status), MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """Embed one dataset with a fresh cache; print JSON with time and memory figures (MiB)."""
    import threading

    import datasets  # noqa: F401 (everything run_brain_embed imports lazily, so the baseline includes the libraries)
    import transformers  # noqa: F401

    import brainmm.data.fmri.windows  # noqa: F401
    import encoders.brainlm  # noqa: F401
    from brainmm.embed import EmbedConfig, run_brain_embed

    root = Path(args.workdir)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        cfg = EmbedConfig(model=str(root / "model"), dataset=str(root / f"dataset-{args.worker}"), device="cpu",
                          batch_size=args.batch_size, cache_dir=str(Path(tmp) / "cache"), out=str(Path(tmp) / "brain"))
        import torch

        torch.zeros(1)  # torch fully initialised before the baseline
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        anon = {"before": _anon_mib(), "peak": 0.0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                anon["peak"] = max(anon["peak"], _anon_mib())
                done.wait(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        result = run_brain_embed(cfg)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": args.worker, "recordings": result.num_recordings, "seconds": seconds,
                      "baseline_mib": before, "peak_mib": peak, "growth_mib": peak - before,
                      "anon_before_mib": anon["before"], "anon_peak_mib": anon["peak"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--parcels", type=int, default=16)
    parser.add_argument("--timepoints", type=int, default=60)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", default=None, help="keeps datasets between runs (default: a temp folder)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args)
        return
    os.environ.setdefault("BRAINMM_QUIET", "1")
    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    root = Path(args.workdir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        t0 = time.perf_counter()
        make_dataset(root, n, args.parcels, args.timepoints, args.window)
        print(f"dataset of {n} recordings ready ({time.perf_counter() - t0:.1f} s)", flush=True)
    make_model(root, args.parcels, args.window)
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--worker", str(n), "--workdir", str(root), "--batch-size",
               str(args.batch_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "BRAINMM_QUIET": "1"})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nV={args.parcels} parcels, {args.timepoints} time points per recording, windows of {args.window} "
          f"({len(range(0, args.timepoints - args.window + 1, args.window))}+ per recording), batch {args.batch_size}")
    print(f"{'recordings':>10} {'seconds':>8} {'peak RSS MiB':>13} {'RSS growth':>11} {'anon before':>12} "
          f"{'anon peak':>10}")
    for r in rows:
        print(f"{r['recordings']:>10} {r['seconds']:>8.1f} {r['peak_mib']:>13.1f} {r['growth_mib']:>11.1f} "
              f"{r['anon_before_mib']:>12.1f} {r['anon_peak_mib']:>10.1f}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"\n{last['n'] / first['n']:.0f}x the recordings: peak RSS x{last['peak_mib'] / first['peak_mib']:.3f}, "
              f"anonymous peak x{last['anon_peak_mib'] / first['anon_peak_mib']:.3f} "
              f"({first['anon_peak_mib']:.1f} -> {last['anon_peak_mib']:.1f} MiB)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
