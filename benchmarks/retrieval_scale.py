"""Retrieval at scale: blockwise `retrieval_report` at N = 100k x 512-D (both directions, CPU, float32) and the
ratio against the naive full-matrix + argsort ranking (open_clip v3 style) at N = 20k, each run in a fresh
subprocess so that its peak RSS (ru_maxrss from wait4) and wall time are its own. Prints medians.

    python benchmarks/retrieval_scale.py                 # defaults: --n 100000 --ref-n 20000 --repeats 3
    python benchmarks/retrieval_scale.py --n 20000 --repeats 1   # quick look
    python benchmarks/retrieval_scale.py --ref-n 0               # only the N = 100k run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

GOAL_SECONDS, GOAL_RSS_GB = 30.0, 1.5


def _data(n: int, dim: int):
    """Seeded paired embeddings: genetics = brain + noise (moderate retrieval, ranks spread over the pool)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    brain = torch.randn(n, dim, generator=gen)
    genetics = brain + 6.0 * torch.randn(n, dim, generator=gen)
    return brain, genetics


def _child(mode: str, n: int, dim: int) -> dict:
    import torch

    from alignment.retrieval import as_embeddings, pair_ranks, retrieval_report

    brain, genetics = _data(n, dim)
    start = time.perf_counter()
    if (
        mode == "report"
    ):  # the full user-facing call: ranks, metrics, chance, 1000 bootstrap CIs, 300-way x 30
        report = retrieval_report(brain, genetics)
        ranks = report.ranks[("brain_to_genetics", "recording")]
        extra = {"R_at_1": report.flat()["brain_to_genetics/R_at_1"]}
    elif mode == "ranks":  # blockwise ranks only, both directions
        ranks, _ = pair_ranks(brain, genetics)
        extra = {}
    else:  # naive: full N x N matrix + argsort per direction
        q, g = as_embeddings(brain, "brain"), as_embeddings(genetics, "genetics")
        logits = q @ g.T
        truth = torch.arange(n)[:, None]
        ranks = torch.where(torch.argsort(logits, dim=1, descending=True) == truth)[1].numpy()
        _ = torch.where(torch.argsort(logits.T, dim=1, descending=True) == truth)[1]
        extra = {}
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "ranks_head": [int(r) for r in ranks[:2000]], **extra}


def _run(mode: str, n: int, dim: int) -> dict:
    """Run one measurement in a fresh interpreter; returns its JSON result plus peak RSS in GB."""
    cmd = [sys.executable, __file__, "--child", mode, "--n", str(n), "--dim", str(dim)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{mode} at N={n} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["rss_gb"] = usage.ru_maxrss / 1024**2  # kilobytes on Linux
    result["cpu_s"] = usage.ru_utime + usage.ru_stime  # whole child, data generation and imports included
    return result


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument(
        "--ref-n", type=int, default=20_000, help="pool size for the naive comparison (0: skip)"
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["report", "ranks", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.n, args.dim)))
        return

    import torch

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average at start {os.getloadavg()[0]:.1f}"
    )
    if args.ref_n > 0:
        ref = {
            m: [_run(m, args.ref_n, args.dim) for _ in range(args.repeats)]
            for m in ("ranks", "naive", "report")
        }
        same = ref["ranks"][0]["ranks_head"] == ref["naive"][0]["ranks_head"]
        print(f"\nN = {args.ref_n:,} x {args.dim}, both directions (median of {args.repeats}):")
        for mode, label in (
            ("naive", "naive full matrix + argsort"),
            ("ranks", "blockwise pair_ranks"),
            ("report", "blockwise retrieval_report"),
        ):
            print(
                f"  {label:30s} {_median(ref[mode], 'seconds'):8.2f} s   cpu {_median(ref[mode], 'cpu_s'):7.1f} s"
                f"   peak RSS {_median(ref[mode], 'rss_gb'):5.2f} GB"
            )
        ratio = _median(ref["naive"], "seconds") / _median(ref["ranks"], "seconds")
        print(
            f"  speed-up of blockwise ranks over naive: {ratio:.1f}x (ranks identical on the first 2000 queries: {same})"
        )

    big = [_run("report", args.n, args.dim) for _ in range(args.repeats)]
    seconds, rss = _median(big, "seconds"), _median(big, "rss_gb")
    print(
        f"\nN = {args.n:,} x {args.dim}, retrieval_report both directions (median of {args.repeats}): "
        f"{seconds:.1f} s (runs {', '.join(format(r['seconds'], '.1f') for r in big)}), peak RSS {rss:.2f} GB, "
        f"cpu {_median(big, 'cpu_s'):.0f} s, R@1 {big[0]['R_at_1']:.4f}"
    )
    print(
        f"goal <= {GOAL_SECONDS:.0f} s and <= {GOAL_RSS_GB} GB: {'met' if seconds <= GOAL_SECONDS and rss <= GOAL_RSS_GB else 'MISSED'}"
        f"; load average at end {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
