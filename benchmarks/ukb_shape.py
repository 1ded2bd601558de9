"""Benchmark: the whole pipeline at UK Biobank shape (424 parcels x 490 TRs at TR 0.735 s, >= 20,000 variants).

For each cohort size N, one `brainmm run` (a subprocess, so each size starts fresh) simulates -> ingests ->
connectivity -> [pretrain -> embed] -> genetics -> align -> evaluate in its own folder, and the per-stage wall
and CPU seconds and peak RSS (from pipeline.json) and the disk each stage's output takes are printed. With two
or more sizes, each stage's scaling exponent b (time ~ N^b, disk ~ N^b, from the two largest sizes) projects
N = 10,000 and 40,000, and the cost model's rates (`brainmm.pipeline.cost.RATES`) are fitted from the same runs
and printed next to the plan's estimate for each measured stage.

    python benchmarks/ukb_shape.py --sizes 200,500 --path fc           # FC-only path (brain_inputs [connectivity])
    python benchmarks/ukb_shape.py --sizes 200 --path brainlm --set pretrain.train.max_steps=3   # + pretrain, embed
    python benchmarks/ukb_shape.py --sizes 10000 --path fc --work /big/tmp   # the full size (about an hour)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PARCELS, TIMEPOINTS, TR = 424, 490, 0.735
PATHS = {
    "fc": ["brain_inputs=[connectivity]"],
    "brainlm": ["brain_inputs=[brainlm, connectivity]", "stages.pretrain=true"],  # asked for: no CPU FC-only rule
}


def overrides(n: int, variants: int, path: str, extra: list[str]) -> list[str]:
    """The pipeline overrides of one size (demo defaults otherwise)."""
    snps = 32
    return [f"simulate.n_subjects={n}", f"simulate.brain.n_parcels={PARCELS}",
            f"simulate.brain.n_timepoints={TIMEPOINTS}", f"simulate.brain.tr={TR}",
            f"simulate.genotypes.n_blocks={math.ceil(variants / snps)}", f"simulate.genotypes.snps_per_block={snps}",
            *PATHS[path], *extra]


def disk_bytes(output: str) -> int:
    """Bytes of a stage's output: a folder's files, or a table stem's `<stem>.*` / `<stem>_*` files."""
    p = Path(output)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return sum(f.stat().st_size for f in p.parent.glob(p.name + "*") if f.is_file())


def run_one(n: int, args: argparse.Namespace) -> dict:
    """One pipeline run of size n; returns its per-stage records (+ disk)."""
    out = Path(args.work) / f"{args.path}-{n}"
    if out.exists() and not args.resume:
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "brainmm.cli", "run", str(REPO / "configs" / "demo.yaml"), "--quiet",
           *(["--resume"] if args.resume else []),
           f"output_dir={out}", f"threads={args.threads}", f"tracking.uri=sqlite:///{Path(args.work) / 'mlflow.db'}",
           *overrides(n, args.variants, args.path, args.set)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=args.work, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"N={n}: brainmm run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    state = json.loads((out / "pipeline.json").read_text())
    records = state["records"]
    for rec in records.values():
        rec["disk_bytes"] = disk_bytes(rec["output"])
    if not args.keep:
        shutil.rmtree(out)
    return {"n": n, "wall": wall, "records": records}


def exponent(a: float, b: float, na: int, nb: int) -> float | None:
    """b in y ~ N^b from two sizes (None when a value is ~0)."""
    return math.log(b / a) / math.log(nb / na) if a > 0.05 and b > 0.05 else None


def _fmt(x: float | None) -> str:
    return f"{x:7.2f}" if x is not None else "      -"


def report(runs: list[dict], args: argparse.Namespace) -> None:
    """Per-stage table for each size, then exponents and projections."""
    for r in runs:
        stages = sum(rec["seconds"] for rec in r["records"].values())
        print(f"\nN = {r['n']} ({args.path} path): stages {stages:.0f} s wall ({stages / 60:.1f} min; this "
              f"command {r['wall']:.0f} s)")
        print(f"  {'stage':13s} {'wall s':>9s} {'CPU s':>9s} {'peak RSS MB':>12s} {'anon MB':>9s} {'disk MB':>9s}")
        for stage, rec in r["records"].items():
            anon = rec.get("peak_anon_mb")
            print(f"  {stage:13s} {rec['seconds']:9.1f} {rec['cpu_seconds']:9.1f} {rec['peak_rss_mb']:12.0f} "
                  f"{anon if anon is not None else float('nan'):9.0f} {rec['disk_bytes'] / 1e6:9.1f}")
    if len(runs) < 2:
        return
    a, b = runs[-2], runs[-1]
    key = "cpu_seconds" if args.project == "cpu" else "seconds"
    print(f"\nscaling exponents from N = {a['n']} and {b['n']}, projections ({args.project} time ~ N^b per stage):")
    print(f"  {'stage':13s} {'b time':>7s} {'b disk':>7s} {args.project + ' 10k':>10s} {args.project + ' 40k':>10s} "
          f"{'disk 10k':>10s} {'disk 40k':>10s}")
    totals = {10_000: [0.0, 0.0], 40_000: [0.0, 0.0]}
    for stage in b["records"]:
        ra, rb = a["records"][stage], b["records"][stage]
        bt = exponent(ra[key], rb[key], a["n"], b["n"])
        bd = exponent(ra["disk_bytes"] / 1e6, rb["disk_bytes"] / 1e6, a["n"], b["n"])
        cells = []
        for target in (10_000, 40_000):
            t = rb[key] * (target / b["n"]) ** (bt if bt is not None else 0.0)
            d = rb["disk_bytes"] * (target / b["n"]) ** (bd if bd is not None else 0.0)
            totals[target][0] += t
            totals[target][1] += d
            cells.append((t, d))
        print(f"  {stage:13s} {_fmt(bt)} {_fmt(bd)} {cells[0][0] / 60:8.1f} m {cells[1][0] / 60:8.1f} m "
              f"{cells[0][1] / 1e9:7.2f} GB {cells[1][1] / 1e9:7.2f} GB")
    print(f"  {'total':13s} {'':7s} {'':7s} {totals[10_000][0] / 60:8.1f} m {totals[40_000][0] / 60:8.1f} m "
          f"{totals[10_000][1] / 1e9:7.2f} GB {totals[40_000][1] / 1e9:7.2f} GB")
    rates(a, b, args)


def rates(a: dict, b: dict, args: argparse.Namespace) -> None:
    """The cost model's coefficients fitted on the two largest sizes, and the plan's estimate for each run."""
    from brainmm.config import load_config
    from brainmm.pipeline import PipelineConfig
    from brainmm.pipeline.cost import RATES, data_shapes, estimate_stage, stage_units

    cfgs = [load_config(PipelineConfig, REPO / "configs" / "demo.yaml",
                        overrides(r["n"], args.variants, args.path, args.set)) for r in (a, b)]
    print("\ncost-model rates fitted on these two sizes (brainmm/pipeline/cost.py RATES['cpu']):")
    for stage in b["records"]:
        ua, ub = (stage_units(stage, c, data_shapes(c)) for c in cfgs)
        if ua is None or ub is None or stage in ("pretrain",):
            continue
        ra, rb = a["records"][stage], b["records"][stage]
        s_per = (rb["cpu_seconds"] - ra["cpu_seconds"]) / (ub[0] - ua[0])  # CPU seconds (the machine is shared)
        mem = "peak_anon_mb" if ra.get("peak_anon_mb") is not None and rb.get("peak_anon_mb") is not None \
            else "peak_rss_mb"  # anonymous memory: what the stage needs (RSS also counts mapped file pages)
        mb_per = max((rb[mem] - ra[mem]) / (ub[1] - ua[1]), 0.0)
        b_per = max((rb["disk_bytes"] - ra["disk_bytes"]) / (ub[1] - ua[1]), 0.0)
        print(f'    "{stage}": Rate(s_per_unit={s_per:.3e}, base_s={max(rb["cpu_seconds"] - s_per * ub[0], 0):.1f}, '
              f'mb_per_unit={mb_per:.3e}, base_mb={rb[mem] - mb_per * ub[1]:.0f}, '
              f'bytes_per_unit={b_per:.3f}, base_bytes={max(rb["disk_bytes"] - b_per * ub[1], 0):.3e}),')
    print("\nthe plan's current estimate vs measured CPU seconds:")
    for r, c in zip((a, b), cfgs):
        shapes = data_shapes(c)
        row = [f"{s} {estimate_stage(s, c, shapes).seconds or float('nan'):.0f}/{rec['cpu_seconds']:.0f}"
               for s, rec in r["records"].items()]
        print(f"  N = {r['n']}: " + ", ".join(row) + f"  (rates table has {sorted(RATES['cpu'])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200,500", help="cohort sizes N, comma-separated")
    ap.add_argument("--path", choices=sorted(PATHS), default="fc")
    ap.add_argument("--variants", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=0, help="torch/BLAS threads (0: their defaults)")
    ap.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp") + "/ukb_shape")
    ap.add_argument("--keep", action="store_true", help="keep each run's folder")
    ap.add_argument("--project", choices=["cpu", "wall"], default="cpu",
                    help="project CPU seconds (default: a shared machine's wall time says little) or wall seconds")
    ap.add_argument("--resume", action="store_true", help="continue kept runs (`brainmm run --resume`: stages whose "
                    "config is unchanged keep their measured records)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more pipeline overrides")
    ap.add_argument("--report", nargs="*", default=[], metavar="LOG", help="no runs: report the per-size JSON lines "
                    "that earlier runs printed (e.g. a small size and 10,000 run separately)")
    args = ap.parse_args()
    if args.report:
        runs = [json.loads(line) for log in args.report for line in Path(log).read_text().splitlines()
                if line.startswith('{"n":')]
        report(sorted(runs, key=lambda r: r["n"]), args)
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    print(f"CPU {cpu}, {os.cpu_count()} cores; {PARCELS} parcels x {TIMEPOINTS} TRs, {args.variants} variants; "
          f"{args.path} path; threads {args.threads}")
    runs = []
    for n in sorted(int(x) for x in args.sizes.split(",")):
        runs.append(run_one(n, args))
        print(json.dumps({"n": n, "wall": runs[-1]["wall"], "records": runs[-1]["records"]}), flush=True)
    report(runs, args)


if __name__ == "__main__":
    main()
