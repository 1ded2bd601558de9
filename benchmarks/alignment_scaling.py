"""Cohort-size benchmark of the whole pipeline (issue 13): simulate -> ingest -> connectivity -> pretrain -> embed ->
genetics -> align -> evaluate, one `brainmm demo` subprocess per (N, seed), each logging to its own MLflow experiment
in its own sqlite file (<out>/mlflow-n<N>-s<seed>.db: parallel runs must not create one database at once).

Per run: test R@1 / MRR [95% CI] (brain -> genotype, subject level) of brainmm's default recipe and of every baseline
(cca, pls, ridge, fc_cca, fc_pls, fc_ridge, random_head, shuffled_pairs) read from evaluate/metrics.json; the paired
bootstrap difference model - best classical baseline (best by test R@1 among cca/pls/ridge/fc_*; the same subject
resample for both), the same difference against `cca_inputs` (PCA -> CCA on the align run's own brain table: the
model's CCA start, so the difference is what fine-tuning adds), and the stage costs the pipeline records in pipeline.json (wall s, CPU s of the process, peak RSS
per stage). Writes <out>/scaling.md (table + per-stage scaling exponents and the extrapolation to --extrapolate).

    OMP_NUM_THREADS=1 python benchmarks/alignment_scaling.py --n 500 2000 10000 --seeds 0 1 2 --out runs/scaling
    python benchmarks/alignment_scaling.py --n 500 --seeds 0 1 2 --jobs 3 --out runs/scaling   # 3 runs at a time
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
CLASSICAL = ("cca", "pls", "ridge_brain_to_genotype", "ridge_genotype_to_brain", "fc_cca", "fc_pls",
             "fc_ridge_brain_to_genotype", "fc_ridge_genotype_to_brain")
ROWS = ("model", *CLASSICAL, "random_head", "shuffled_pairs")
STAGES = ("simulate", "ingest", "connectivity", "pretrain", "embed", "genetics", "align", "evaluate")
DIRECTION = "brain_to_genotype"


def run_one(n: int, seed: int, out: Path, extra: list[str]) -> dict[str, Any]:
    """One pipeline run in its own process (skipped when <out> already holds a finished run)."""
    folder = out / f"n{n}_s{seed}"
    state_path = folder / "pipeline.json"
    if state_path.is_file() and json.loads(state_path.read_text()).get("status") == "finished":
        return {"folder": folder, "child_cpu_s": None, "wall_s": None, "reused": True}
    cmd = [sys.executable, "-m", "brainmm.cli", "-q", "demo", "--out", str(folder), "--overwrite",
           f"simulate.n_subjects={n}", f"simulate.seed={seed}", f"pretrain.train.seed={1234 + seed}",
           f"align.train.seed={seed}", f"name=scaling-n{n}-s{seed}", f"tracking.experiment=scaling-n{n}-s{seed}",
           f"tracking.uri=sqlite:///{(out / f'mlflow-n{n}-s{seed}.db').resolve()}", "evaluate.model.log=false", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    log_path = out / f"n{n}_s{seed}.log"
    with open(log_path, "w") as log:  # a file, not a pipe: a full pipe buffer would block the child
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run n={n} seed={seed} failed; see {log_path}:\n{log_path.read_text()[-2000:]}")
    return {"folder": folder, "child_cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall,
            "child_peak_rss_mb": usage.ru_maxrss / 1024, "reused": False}


def _metric(table: pd.DataFrame, section: str, model: str | None, metric: str) -> dict[str, float]:
    t = table[(table["section"] == section) & (table["split"] == "test") & (table["direction"] == DIRECTION)
              & (table["metric"] == metric)]
    if section == "retrieval":
        t = t[t["level"] == "subject"]
    else:
        t = t[(t["model"] == model) & (t["level"] == "subject")]
    if t.empty:
        return {}
    r = t.iloc[0]
    return {"value": float(r["value"]), "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]),
            "chance": float(r["chance"]), "n": int(r["n"])}


def _model_ranks(folder: Path) -> tuple[list[str], np.ndarray]:
    """Subject-level test ranks (brain -> genotype) of the trained model, from its shared-space embeddings."""
    from alignment.retrieval import pair_ranks
    from brainmm.align import table_subjects
    from brainmm.embeddings import EmbeddingTable
    from brainmm.evaluate.inputs import subject_mean

    sides = {}
    for key in ("brain", "genotype"):
        t = EmbeddingTable.load(folder / "align" / "embeddings" / "test" / key)
        sides[key] = subject_mean(t.vectors, table_subjects(t, key), normalize=True)
    subjects = sorted(set(sides["brain"][0]) & set(sides["genotype"][0]))
    b, g = (sides[k][1][[sides[k][0].index(s) for s in subjects]] for k in ("brain", "genotype"))
    return subjects, pair_ranks(b, g)[0]


def _baseline_ranks(folder: Path, name: str) -> tuple[list[str], np.ndarray]:
    """Refit one classical baseline exactly as `brainmm evaluate` does and return its test ranks; `cca_inputs` is
    CCA on the align run's own brain table (the model's epoch-0 start when its heads start from CCA)."""
    from alignment.baselines import RidgeMap, select_cca
    from alignment.retrieval import pair_ranks
    from brainmm.config import load_config
    from brainmm.evaluate import EvaluateConfig
    from brainmm.evaluate.inputs import load_inputs, read_side, resolve_align_run

    cfg = load_config(EvaluateConfig, folder / "evaluate" / "config.yaml")
    inputs = load_inputs(cfg, resolve_align_run(cfg))
    side = inputs.brain_fc if name.startswith("fc_") else None
    if name == "cca_inputs":
        align_brain = yaml.safe_load((folder / "align" / "config.yaml").read_text())["data"]["brain"]
        side = read_side(align_brain, "align data.brain")
    base = name.removeprefix("fc_").removesuffix("_inputs")
    data = {s: inputs.pairs(s, "genotype", shared=False, brain=side) for s in ("train", "val", "test")}
    (_, bt, gt), (_, bv, gv), (subjects, bx, gx) = data["train"], data["val"], data["test"]
    if base in ("cca", "pls"):
        model = select_cca(base, bt, gt, bv, gv, cfg.baselines.n_components)
    else:
        model = RidgeMap(base.removeprefix("ridge_").replace("genotype", "genetics")).fit(bt, gt)
    return subjects, pair_ranks(*model.transform(bx, gx))[0]


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean difference a - b of per-subject scores with a percentile bootstrap CI (same resample for both)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    diffs = (a[idx] - b[idx]).mean(1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"value": float((a - b).mean()), "ci_low": float(low), "ci_high": float(high)}


def summarise(n: int, seed: int, info: dict[str, Any]) -> dict[str, Any]:
    """Metrics, paired difference and stage costs of one finished run."""
    folder = info["folder"]
    table = pd.read_json(folder / "evaluate" / "metrics.json", orient="split")
    row: dict[str, Any] = {"n": n, "seed": seed}
    for name in ROWS:
        section, model = ("retrieval", None) if name == "model" else ("baseline", name)
        row[name] = {m: _metric(table, section, model, m) for m in ("R_at_1", "mrr")}
    present = [c for c in CLASSICAL if row[c]["R_at_1"]]
    best = max(present, key=lambda c: row[c]["R_at_1"]["value"])
    subjects, model_ranks = _model_ranks(folder)
    b_subjects, best_ranks = _baseline_ranks(folder, best)
    if b_subjects != subjects:
        raise SystemExit(f"{folder}: model and {best} test subjects differ")
    refit = float((best_ranks == 0).mean())
    row["best_baseline"], row["best_refit_R_at_1"] = best, refit
    row["diff_R_at_1"] = paired_difference((model_ranks == 0).astype(float), (best_ranks == 0).astype(float), seed=seed)
    row["diff_mrr"] = paired_difference(1 / (1 + model_ranks), 1 / (1 + best_ranks), seed=seed)
    i_subjects, input_ranks = _baseline_ranks(folder, "cca_inputs")
    if i_subjects != subjects:
        raise SystemExit(f"{folder}: model and cca_inputs test subjects differ")
    row["cca_inputs_R_at_1"] = float((input_ranks == 0).mean())
    row["diff_inputs_R_at_1"] = paired_difference((model_ranks == 0).astype(float), (input_ranks == 0).astype(float),
                                                  seed=seed)
    state = json.loads((folder / "pipeline.json").read_text())
    row["stages"] = {s: {k: r.get(k) for k in ("seconds", "cpu_seconds", "peak_rss_mb")}
                     for s, r in state["records"].items()}
    row["total"] = {"seconds": state.get("seconds"), "cpu_seconds": state.get("cpu_seconds"),
                    "child_cpu_s": info.get("child_cpu_s"), "child_peak_rss_mb": info.get("child_peak_rss_mb")}
    pre = state["records"].get("pretrain", {}).get("extra") or {}
    row["pretrain"] = pre
    return row


def _ci(d: dict[str, float]) -> str:
    return f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]" if d else "-"


def render(rows: list[dict[str, Any]], extrapolate: int, command: str) -> str:
    """Markdown: per-N method table (mean over seeds + per-seed CIs), paired differences, stage costs, scaling."""
    lines = ["# alignment_scaling results", "", f"`{command}`", ""]
    for n in sorted({r["n"] for r in rows}):
        rs = [r for r in rows if r["n"] == n]
        seeds = [r["seed"] for r in rs]
        chance = rs[0]["model"]["R_at_1"]["chance"]
        lines += [f"## N = {n} ({rs[0]['model']['R_at_1']['n']} test subjects, chance R@1 {chance:.4f}); "
                  f"seeds {seeds}", "",
                  "| method | mean R@1 | mean MRR | " + " | ".join(f"seed {s} R@1 [95% CI]" for s in seeds) + " |",
                  "|---|---|---|" + "---|" * len(seeds)]
        for name in ROWS:
            vals = [r[name]["R_at_1"] for r in rs]
            if not all(vals):
                continue
            mrr = [r[name]["mrr"]["value"] for r in rs if r[name]["mrr"]]
            lines.append(f"| {name} | {np.mean([v['value'] for v in vals]):.3f} | "
                         f"{np.mean(mrr):.3f} | " + " | ".join(_ci(v) for v in vals) + " |")
        lines += ["", "| seed | best classical (test R@1; refit) | model - best, R@1 [95% CI] | model - best, MRR "
                  "[95% CI] | cca_inputs R@1 | model - cca_inputs, R@1 [95% CI] | pretrain test masked MSE / mean "
                  "baseline / R^2 |", "|---|---|---|---|---|---|---|"]
        for r in rs:
            p = r["pretrain"]
            pre = " / ".join(f"{p[k]:.3f}" if isinstance(p.get(k), float) else "-"
                             for k in ("masked_mse", "baseline_mean_mse", "r2"))
            lines.append(f"| {r['seed']} | {r['best_baseline']} ({r[r['best_baseline']]['R_at_1']['value']:.3f}; "
                         f"{r['best_refit_R_at_1']:.3f}) | {_ci(r['diff_R_at_1'])} | {_ci(r['diff_mrr'])} | "
                         f"{r['cca_inputs_R_at_1']:.3f} | {_ci(r['diff_inputs_R_at_1'])} | {pre} |")
        lines += ["", "| stage | wall s | CPU s | peak RSS MB |", "|---|---|---|---|"]
        for s in [*STAGES, "total"]:
            if s == "total":
                w = [r["total"]["seconds"] for r in rs]
                c = [r["total"]["cpu_seconds"] for r in rs]
                # the largest stage peak: the stages reset VmHWM, which also resets the process's ru_maxrss
                m = [max([x["peak_rss_mb"] or 0 for x in r["stages"].values()] + [r["total"]["child_peak_rss_mb"] or 0])
                     for r in rs]
            else:
                w = [r["stages"][s]["seconds"] for r in rs if s in r["stages"]]
                c = [r["stages"][s]["cpu_seconds"] for r in rs if s in r["stages"]]
                m = [r["stages"][s]["peak_rss_mb"] or math.nan for r in rs if s in r["stages"]]
            if w:
                lines.append(f"| {s} | {np.mean(w):.0f} | {np.mean(c):.0f} | {np.nanmax(m):.0f} |")
        lines.append("")
    ns = sorted({r["n"] for r in rows})
    if len(ns) >= 2:
        lines += [f"## Per-stage scaling (CPU s, mean over seeds) and extrapolation to N = {extrapolate}", "",
                  "| stage | " + " | ".join(f"N={n}" for n in ns) + f" | exponent | N={extrapolate} (CPU s) |",
                  "|---|" + "---|" * len(ns) + "---|---|"]
        total = 0.0
        for s in STAGES:
            cpu = [np.mean([r["stages"][s]["cpu_seconds"] for r in rows if r["n"] == n and s in r["stages"]])
                   for n in ns]
            a, b = ns[-2], ns[-1]
            ca, cb = max(cpu[-2], 0.05), max(cpu[-1], 0.05)
            k = math.log(cb / ca) / math.log(b / a)
            pred = cb * (extrapolate / b) ** k
            total += pred
            lines.append(f"| {s} | " + " | ".join(f"{c:.0f}" for c in cpu) + f" | {k:.2f} | {pred:.0f} |")
        lines += [f"| total | | | | {total:.0f} ({total / 60:.0f} min) |", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run (or reuse) every (N, seed) pipeline, then print and write the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[500, 2000, 10000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/scaling"))
    ap.add_argument("--jobs", type=int, default=1, help="pipelines run at a time (each single-threaded)")
    ap.add_argument("--extrapolate", type=int, default=10000)
    ap.add_argument("--summarise-only", action="store_true", help="only read finished runs in --out")
    ap.add_argument("overrides", nargs="*", help="pipeline overrides for every run, e.g. align.train.epochs=100")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    grid = [(n, s) for n in args.n for s in args.seeds]
    if args.summarise_only:
        grid = [(n, s) for n, s in grid if (args.out / f"n{n}_s{s}" / "pipeline.json").is_file()]
        infos = [{"folder": args.out / f"n{n}_s{s}"} for n, s in grid]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            infos = list(pool.map(lambda ns: run_one(*ns, args.out, args.overrides), grid))
    rows = [summarise(n, s, info) for (n, s), info in zip(grid, infos)]
    (args.out / "scaling.json").write_text(json.dumps(rows, indent=1, default=str))
    text = render(rows, args.extrapolate, "python " + " ".join(sys.argv))
    (args.out / "scaling.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
