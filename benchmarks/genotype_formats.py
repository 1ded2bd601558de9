"""brainmm genetics matrix on .pgen and BGEN vs `plink2 --export A` on the same files: time and peak RSS.

A synthetic cohort (random hard calls, ~1 % missing; with --dosages fractional dosages, as from imputation) is
written as .pgen with pgenlib's writer and converted to BGEN 1.2 8-bit (zlib) by plink2. Each tool runs once as its own process (single-threaded: plink2 --threads 1,
OMP_NUM_THREADS=1); peak RSS comes from that process's rusage (os.wait4). Ratios: brainmm time / plink2 time,
and brainmm peak RSS / output matrix size (subjects x variants float32), the same after subtracting the RSS of
Python with brainmm's imports (a fixed ~125 MiB that dominates small runs), and / plink2 peak RSS.

    python benchmarks/genotype_formats.py                                  # 50,000 x 20,000 (the issue's size)
    python benchmarks/genotype_formats.py --samples 10000 --variants 5000  # what fits a shared 2-core machine
    python benchmarks/genotype_formats.py --dosages                        # fractional dosages (kept as float32)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_cohort(folder: Path, n: int, m: int, seed: int = 0, dosages: bool = False) -> Path:
    """Random genotypes as folder/cohort.pgen (+ .pvar, .psam) and a split table (70 % train): hard calls, or with
    `dosages` imputation-like fractional dosages (each call blurred towards the others)."""
    import pgenlib

    rng = np.random.default_rng(seed)
    pgen = folder / "cohort.pgen"
    with pgenlib.PgenWriter(str(pgen).encode(), n, m, False, dosage_present=dosages) as w:
        for start in range(0, m, 500):
            b = min(500, m - start)
            freq = rng.uniform(0.02, 0.5, size=(b, 1))
            geno = rng.binomial(2, freq, size=(b, n)).astype(np.int8)
            missing = rng.random((b, n)) < 0.01
            if dosages:
                dose = np.clip(geno + rng.normal(0, 0.1, size=(b, n)), 0, 2).astype(np.float32)
                dose[missing] = -9
                for row in dose:
                    w.append_dosages(row)
            else:
                geno[missing] = -9
                w.append_biallelic_batch(geno)
    samples = [f"id{i}" for i in range(n)]
    pgen.with_suffix(".psam").write_text("#IID\n" + "\n".join(samples) + "\n")
    with open(pgen.with_suffix(".pvar"), "w") as fh:
        fh.write("#CHROM\tPOS\tID\tREF\tALT\n")
        fh.writelines(f"1\t{1000 + 10 * j}\tv{j}\tA\tG\n" for j in range(m))
    split = ["train"] * (7 * n // 10) + ["val"] * (n - 7 * n // 10)
    (folder / "split.csv").write_text("subject_id,split\n" + "".join(f"{s},{p}\n" for s, p in zip(samples, split)))
    return pgen


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one process, started after the previous writes reached the disk."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--variants", type=int, default=20_000)
    ap.add_argument("--block-size", type=int, default=None, help="default: brainmm's (~16 MiB of dosages)")
    ap.add_argument("--workdir", default=None, help="where the synthetic files go (default: a temporary folder)")
    ap.add_argument("--dosages", action="store_true", help="fractional dosages (imputed data) instead of hard calls")
    args = ap.parse_args()
    plink2 = shutil.which("plink2")
    if plink2 is None:
        raise SystemExit("plink2 not found (apt-get install -y plink2)")
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="genotype_formats_"))
    folder.mkdir(parents=True, exist_ok=True)
    n, m = args.samples, args.variants
    t0 = time.perf_counter()
    # in a fresh interpreter: a child's peak RSS starts at its parent's (Linux keeps it across exec)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pgen = pool.submit(write_cohort, folder, n, m, dosages=args.dosages).result()
    subprocess.run([plink2, "--pfile", str(folder / "cohort"), "--export", "bgen-1.2", "bits=8", "ref-first",
                    "--out", str(folder / "cohort"), "--threads", "1"], check=True, capture_output=True)
    print(f"wrote {n} samples x {m} variants (.pgen, .bgen) in {time.perf_counter() - t0:.1f} s under {folder}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    output_mib = n * m * 4 / 2**20
    base_s, base_rss = measure([sys.executable, "-c", "import brainmm.data.genetics.matrix"], env)
    print(f"output matrix {output_mib:.0f} MiB (float32); python + brainmm imports alone: {base_rss:.0f} MiB peak RSS")
    print(f"{'format':6} {'tool':8} {'seconds':>8} {'peak MiB':>9} {'time ratio':>11} {'RSS/output':>11} "
          f"{'(RSS-imports)/output':>21} {'RSS ratio':>10}")
    for fmt in ("pgen", "bgen"):
        flag = ["--pfile", str(folder / "cohort")] if fmt == "pgen" else [
            "--bgen", str(folder / "cohort.bgen"), "ref-first", "--sample", str(folder / "cohort.sample")]
        p_s, p_rss = measure([plink2, *flag, "--export", "A", "--out", str(folder / f"plink_{fmt}"), "--threads",
                              "1"])
        b_s, b_rss = measure([sys.executable, "-m", "brainmm.cli", "-q", "genetics", "matrix", f"--{fmt}",
                              str(pgen.with_suffix(f".{fmt}")), "--split", str(folder / "split.csv"), "--min-maf",
                              "0", "--max-missing", "1", "--out", str(folder / f"brainmm_{fmt}"),
                              *(["--block-size", str(args.block_size)] if args.block_size else [])], env)
        print(f"{fmt:6} {'plink2':8} {p_s:8.1f} {p_rss:9.0f}")
        print(f"{fmt:6} {'brainmm':8} {b_s:8.1f} {b_rss:9.0f} {b_s / p_s:11.2f} {b_rss / output_mib:11.2f} "
              f"{(b_rss - base_rss) / output_mib:21.2f} {b_rss / p_rss:10.2f}")
        for f in folder.glob(f"plink_{fmt}.raw"):
            f.unlink()


if __name__ == "__main__":
    main()
