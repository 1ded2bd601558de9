"""Benchmark: window reads and memory while iterating an fMRI dataset (`python benchmarks/fmri_windows.py`).

Prints ratios against a reference measured in the same run: the zero-copy window reader (what
`FmriDataset.windows` uses) vs decoding the whole recording with `datasets`' numpy formatting and slicing; and
anonymous memory growth over one epoch for a dataset and one 4x larger (streaming: it should not scale).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _make(root: Path, n: int, v: int, t: int) -> Path:
    from brainmm.data.fmri import IngestConfig, ingest

    rng = np.random.default_rng(0)
    (root / "ts").mkdir(parents=True)
    for i in range(n):
        np.save(root / "ts" / f"s{i}.npy", (100 + rng.standard_normal((t, v))).astype(np.float32))
    pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)], "path": [f"ts/s{i}.npy" for i in range(n)]}).to_csv(
        root / "cohort.csv", index=False)
    pd.DataFrame(rng.uniform(-60, 60, (v, 3)), columns=["x", "y", "z"]).to_csv(root / "coords.tsv", sep="\t", index=False)
    start = time.perf_counter()
    out = ingest(root / "cohort.csv", root / "ds", IngestConfig(coords=root / "coords.tsv", num_timepoints=200))
    mb = n * v * t * 4 / 2**20
    print(f"ingest {n} x {v} x {t}: {time.perf_counter() - start:.2f} s ({mb / (time.perf_counter() - start):.0f} MB/s)")
    return out


def _epoch_growth(path: Path) -> float:
    from brainmm.data.fmri import FmriDataset

    w = FmriDataset.load(path).windows(None, mode="random")
    w[0]
    before = _rss_anon_mb()
    for i in range(len(w)):
        w[i]
    return _rss_anon_mb() - before


def main() -> None:
    """Run the benchmark and print the numbers."""
    from brainmm.data.fmri import FmriDataset
    from brainmm.runtime import set_quiet

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recordings", type=int, default=100)
    parser.add_argument("--parcels", type=int, default=424)
    parser.add_argument("--timepoints", type=int, default=490)
    args = parser.parse_args()
    set_quiet(True)
    with tempfile.TemporaryDirectory() as tmp:
        small = _make(Path(tmp) / "small", args.recordings, args.parcels, args.timepoints)
        large = _make(Path(tmp) / "large", 4 * args.recordings, args.parcels, args.timepoints)
        ds = FmriDataset.load(large)
        w = ds.windows(None, mode="random")
        rows = [int(w.start_of(i)[0]) for i in range(len(w))]
        w[0]
        start = time.perf_counter()
        for i in range(len(w)):
            w[i]
        ours = (time.perf_counter() - start) / len(w)
        data = ds.data
        start = time.perf_counter()
        for i, row in enumerate(rows):
            s = w.start_of(i)[2]
            np.ascontiguousarray(data[row]["signal"][s : s + 200].T)
        ref = (time.perf_counter() - start) / len(w)
        print(f"window read: {ours * 1e6:.0f} us (zero-copy) vs {ref * 1e6:.0f} us (datasets numpy row decode): "
              f"{ref / ours:.1f}x faster")
        g_small, g_large = _epoch_growth(small), _epoch_growth(large)
        print(f"anonymous memory growth over one epoch: {g_small:.1f} MB ({args.recordings} recordings), "
              f"{g_large:.1f} MB ({4 * args.recordings} recordings)")


if __name__ == "__main__":
    main()
