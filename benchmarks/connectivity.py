"""Benchmark: correlation connectivity (Fisher z) as batched BLAS products vs a plain batched numpy reference, and the
whole `brainmm fmri connectivity` command at the UK Biobank shape (424 parcels x 490 TRs) with a per-phase split.

    python benchmarks/connectivity.py [--kernel-subjects 256] [--subjects 2000] [--pca 64] [--workdir DIR]
                                      [--threads 2] [--skip-command]
    python benchmarks/connectivity.py --stream 40000     # the kernel over 40,000 subjects, timed whole

Kernel: `correlation_vectors` (float64 and float32) against the reference measured in the same run: the series
standardised, one `np.matmul` over the stacked batch [B, V, T] @ [B, T, V], nilearn's lower-triangle order, arctanh.
The old path (nilearn `ConnectivityMeasure` with sklearn's default `EmpiricalCovariance()`, which also inverts every
covariance) and nilearn without the inverse (`store_precision=False`) are timed on a few subjects.

Command: an ingested synthetic dataset of `--subjects` recordings, then `connectivity_table` (the code behind
`brainmm fmri connectivity --pca K`) with each phase timed: reading the series from the Arrow dataset, the kernel,
the float32 feature memmap writes, PCA fit (train only) and transform, the table write. The 40,000-subject figure is
a linear extrapolation of the measured per-subject time (each phase is one pass over the rows; the streamed PCA is
forced so the PCA is the out-of-core solver a 40,000 x 89,676 table needs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

PARCELS, TRS, UKB_N = 424, 490, 40_000


def reference(series: list[np.ndarray]) -> np.ndarray:
    """Plain batched numpy: standardise, stacked matmul, lower triangle, arctanh."""
    x = np.stack(series).astype(np.float64)
    x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    corr = np.matmul(x.transpose(0, 2, 1), x) / x.shape[1]
    mask = np.tri(x.shape[2], k=-1, dtype=bool).ravel()
    return np.arctanh(np.clip(corr.reshape(len(x), -1)[:, mask], -1 + 1e-7, 1 - 1e-7))


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def kernel(n: int, batch: int, repeats: int) -> dict[str, float]:
    """Per-subject seconds of the reference, the BLAS kernel (float64, float32) and nilearn (old / no inverse)."""
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance

    from brainmm.data.fmri.connectivity import correlation_vectors

    rng = np.random.default_rng(0)
    mix = rng.standard_normal((PARCELS, PARCELS)) / np.sqrt(PARCELS) + np.eye(PARCELS)
    series = [(rng.standard_normal((TRS, PARCELS)) @ mix).astype(np.float32) for _ in range(n)]
    batches = [series[i : i + batch] for i in range(0, n, batch)]
    variants = {"reference": reference,
                "float64": lambda b: correlation_vectors(b, dtype="float64"),
                "float32": lambda b: correlation_vectors(b, dtype="float32")}
    best = dict.fromkeys(variants, np.inf)
    results: dict[str, np.ndarray] = {}
    for _ in range(repeats):  # interleaved, so load from other processes hits every variant alike
        for name, fn in variants.items():
            t, results[name] = best_of(lambda fn=fn: np.concatenate([fn(b) for b in batches]), 1)
            best[name] = min(best[name], t)
    out: dict[str, float] = {name: t / n for name, t in best.items()}
    for dtype in ("float64", "float32"):
        out[f"{dtype}_max_abs_diff"] = float(np.abs(results[dtype] - results["reference"]).max())
    few = [x.astype(np.float64) for x in series[:8]]
    for name, est in (("nilearn_old", EmpiricalCovariance()), ("nilearn_no_inverse",
                                                               EmpiricalCovariance(store_precision=False))):
        m = ConnectivityMeasure(cov_estimator=est, kind="correlation", vectorize=True, discard_diagonal=True,
                                standardize="zscore_sample")
        t, _ = best_of(lambda m=m: m.fit_transform(few), 1)
        out[name] = t / len(few)
    return out


def make_dataset(root: Path, n: int) -> Path:
    """n subjects x one 424 x 490 recording (correlated parcels), ingested with a 70/15/15 split."""
    import pandas as pd

    from brainmm.data.fmri import IngestConfig, ingest

    src = root / "src"
    src.mkdir(parents=True)
    rng = np.random.default_rng(1)
    mix = (rng.standard_normal((PARCELS, PARCELS)) / np.sqrt(PARCELS) + np.eye(PARCELS)).astype(np.float32)
    for i in range(n):
        np.save(src / f"r{i}.npy", rng.standard_normal((TRS, PARCELS), dtype=np.float32) @ mix)
    pd.DataFrame({"subject_id": [f"s{i:05d}" for i in range(n)], "path": [f"r{i}.npy" for i in range(n)]}).to_csv(
        src / "cohort.csv", index=False)
    pd.DataFrame(rng.uniform(-60, 60, (PARCELS, 3)), columns=list("xyz")).to_csv(src / "coords.tsv", sep="\t",
                                                                                 index=False)
    out = ingest(src / "cohort.csv", root / "ds", IngestConfig(coords=src / "coords.tsv", num_timepoints=TRS,
                                                               tr=0.735))
    for f in src.glob("r*.npy"):
        f.unlink()
    return out


def command(root: Path, n: int, pca: int, batch: int) -> dict[str, float]:
    """Wall seconds per phase of `connectivity_table` on n ingested subjects (the streamed PCA forced)."""
    import brainmm.data.fmri.connectivity as conn
    from brainmm.embeddings import EmbeddingTable

    start = time.perf_counter()
    dataset = make_dataset(root, n)
    phases = {"ingest (not part of the command)": time.perf_counter() - start}

    def timed(name: str, fn):
        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    originals = {k: getattr(conn, k) for k in ("_series", "_vectors", "fit_pca", "pca_transform")}
    save = EmbeddingTable.save
    conn._series = timed("read series", originals["_series"])
    conn._vectors = timed("correlation kernel", originals["_vectors"])
    conn.fit_pca = timed("PCA fit (train, streamed)", originals["fit_pca"])
    conn.pca_transform = timed("PCA transform", originals["pca_transform"])
    EmbeddingTable.save = timed("table write", save)
    try:
        t0 = time.perf_counter()
        conn.connectivity_table(dataset, root / "fc", conn.ConnectivityConfig(pca=pca, batch_size=batch,
                                                                              pca_in_memory_gb=1e-6))
        phases["command total"] = time.perf_counter() - t0
    finally:
        for k, fn in originals.items():
            setattr(conn, k, fn)
        EmbeddingTable.save = save
    named = sum(v for k, v in phases.items() if k not in ("command total", "ingest (not part of the command)"))
    phases["other (subject table, memmap writes, averaging)"] = phases["command total"] - named
    return phases


def stream(n: int, batch: int, dtype: str) -> dict[str, float]:
    """`correlation_vectors` over n subjects, batch by batch as `brainmm fmri connectivity` runs it, each batch's
    Fisher-z rows copied into a float32 [batch, edges] buffer (the command's memmap rows): a 64-subject pool of
    series is cycled, so the time is the kernel's and not the data generator's (reading is timed by the command)."""
    from brainmm.data.fmri.connectivity import correlation_vectors

    rng = np.random.default_rng(0)
    mix = rng.standard_normal((PARCELS, PARCELS)) / np.sqrt(PARCELS) + np.eye(PARCELS)
    pool = [(rng.standard_normal((TRS, PARCELS)) @ mix).astype(np.float32) for _ in range(batch)]
    rows = np.empty((batch, PARCELS * (PARCELS - 1) // 2), dtype=np.float32)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, n, batch):
        b = min(batch, n - i)
        rows[:b] = correlation_vectors(pool[:b], dtype=dtype)
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel-subjects", type=int, default=256)
    p.add_argument("--subjects", type=int, default=2000, help="subjects of the whole-command run")
    p.add_argument("--pca", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default=None, help="folder for the synthetic dataset (default: a temp folder)")
    p.add_argument("--skip-command", action="store_true")
    p.add_argument("--stream", type=int, default=0, help="only stream this many subjects through the kernel "
                   "(e.g. 40000: the issue's goal measured, not projected), float64 and float32")
    args = p.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads):
        if args.stream:
            for dtype in ("float64", "float32"):
                r = stream(args.stream, args.batch_size, dtype)
                print(f"stream {args.stream:,} subjects x {PARCELS} x {TRS}, {dtype}, batches of {args.batch_size}, "
                      f"{args.threads} threads: {r['wall_s'] / 60:.2f} min wall, {r['cpu_s'] / 60:.2f} CPU-min "
                      f"({1e3 * r['wall_s'] / args.stream:.2f} ms / subject)", flush=True)
            return
        k = kernel(args.kernel_subjects, args.batch_size, args.repeats)
        print(f"kernel, {args.kernel_subjects} subjects x {PARCELS} parcels x {TRS} TRs, {args.threads} threads, "
              f"best of {args.repeats} interleaved (ms per subject):")
        for name in ("reference", "float64", "float32", "nilearn_old", "nilearn_no_inverse"):
            ratio = k[name] / k["reference"]
            print(f"  {name:<20} {1e3 * k[name]:8.2f} ms   {ratio:5.2f}x the reference")
        print(f"  max |diff| vs reference: float64 {k['float64_max_abs_diff']:.1e}, "
              f"float32 {k['float32_max_abs_diff']:.1e}")
        for name in ("float64", "float32"):
            print(f"  {UKB_N:,} subjects, kernel {name}: {k[name] * UKB_N / 60:.1f} min (linear)")
        if args.skip_command:
            return
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            phases = command(Path(tmp), args.subjects, args.pca, args.batch_size)
        total = phases["command total"]
        print(f"command, {args.subjects} subjects, --pca {args.pca} (streamed PCA), {args.threads} threads "
              f"(s, share of the command, {UKB_N:,}-subject linear projection):")
        for name, t in phases.items():
            share = "" if name.startswith("ingest") else f"{100 * t / total:5.1f} %"
            print(f"  {name:<48} {t:8.1f} s {share:>8}   {t / args.subjects * UKB_N / 60:7.1f} min")
        print(f"  per subject: {1e3 * total / args.subjects:.1f} ms; rss peak {_rss_mb():.0f} MB; pid {os.getpid()}")


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
