"""Issue-30 calibration: on confounded null cohorts (no brain-genetics effect; ancestry tied to site, a group effect on
the brain), does the adjusted verdict keep its 5 % false-positive rate and do adjusted R@1 / MRR hold chance? And on
the same confounding with the default genetic effect, how much adjusted signal is kept?

Per (N, strength, effect, seed): a simulated cohort (`brainmm.data.simulate`, the acceptance test's procedure
`tests/test_confounds_app.py::build_inputs`: per-parcel log-variance + Fisher-z FC brain table, train-QC'd genotype
matrix, 5 genetic PCs fitted on train, family-grouped 60/20/20 split), `brainmm align` with the app's heads on
inputs adjusted for age, sex, site and the PCs (`confounds`), then `brainmm evaluate` on that run (which trains
the unadjusted comparison itself). Strength 1 is the issue's example (3 Balding-Nichols groups, F_ST 0.1, site
association 0.9 over 3 sites, group effect on the brain 1.0 SD); strength 2 doubles F_ST and the brain effect (the
site association is a probability and stays 0.9). The verdict is evaluate's: Bonferroni over the permutation
p-values (shuffled within site x ancestry cells) of the first held-out canonical correlation and MRR both ways.

    OMP_NUM_THREADS=1 python benchmarks/confounds_null.py --sizes 800 2000 5000 --seeds 10 --strengths 1 2
        [--effect-seeds 3] [--out benchmarks/results/confounds_null] [--page benchmarks/confounds_null.md]

Each run's numbers go to <out>/<N>_x<strength>_e<effect>_s<seed>.json (a finished run is not redone); the page
(markdown tables) is rebuilt from every JSON in <out>. `--page-only` rebuilds it without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
SEED0 = 3000  # cohort seeds SEED0 + i: none of them is used by the suite
DIRECTIONS = ("brain_to_genotype", "genotype_to_brain")


def confounding(strength: float) -> list[str]:
    """Simulation overrides of the confounded cohort at `strength` x the issue's example."""
    return ["population.n_groups=3", f"population.fst={0.1 * strength:g}", "population.site_association=0.9",
            f"population.brain_effect={1.0 * strength:g}", "sites.n_sites=3"]


def one_run(n: int, strength: float, effect: float, seed: int, work: Path, unadjusted: bool = True) -> dict:
    """Simulate, align (adjusted), evaluate (heads on feature tables; `unadjusted`: with the unadjusted comparison
    run); the numbers the page needs."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_confounds_app import APP_HEADS, align_config, build_inputs

    from brainmm.align import run_align
    from brainmm.config import load_config
    from brainmm.evaluate import EvaluateConfig, run_evaluate

    t0 = time.time()
    inputs = build_inputs(work / "inputs", seed, effect, n_subjects=n, confounding=confounding(strength))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    align = run_align(align_config(inputs, True, uri, extra=APP_HEADS))
    ev = load_config(EvaluateConfig, None, [f"align_dir={align.run_dir}", "retrieval.kway=0", "retrieval.n_boot=200",
                                            "baselines.methods=[cca]", "model.log=false", "figures.enabled=false",
                                            f"output_dir={work / 'evaluation'}",
                                            f"baselines.unadjusted={str(unadjusted).lower()}"])
    return record(run_evaluate(ev).metrics, n, strength, effect, seed, time.time() - t0)


def one_demo(n: int, strength: float, effect: float, seed: int, work: Path) -> dict:
    """The issue's example through the whole application: `brainmm demo` (frozen BrainLM embeddings, genotype MLP
    tower) with `confounds.covariates=[site] confounds.genetic_pcs=5` on the confounded cohort."""
    from brainmm.config import load_config
    from brainmm.pipeline import PipelineConfig, run_pipeline

    t0 = time.time()
    cfg = load_config(PipelineConfig, None, [
        f"output_dir={work / 'demo'}", f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"simulate.seed={seed}",
        f"simulate.n_subjects={n}", f"simulate.effects.effect_size={effect}",
        *(f"simulate.{x}" for x in confounding(strength)), "confounds.covariates=[site]", "confounds.genetic_pcs=5"])
    run_pipeline(cfg)
    metrics = json.loads((work / "demo" / "evaluate" / "metrics_flat.json").read_text())
    return record({k: (float("nan") if v is None else v) for k, v in metrics.items()}, n, strength, effect, seed,
                  time.time() - t0)


def record(m: dict, n: int, strength: float, effect: float, seed: int, seconds: float) -> dict:
    """The numbers of one run the page needs, from evaluate's metrics."""
    out: dict = {"n": n, "strength": strength, "effect": effect, "seed": seed, "seconds": seconds,
                 "verdict_p": verdict_p(m)}
    for prefix in ("retrieval", "retrieval/unadjusted", "baseline/cca"):
        for d in DIRECTIONS:
            for metric in ("R_at_1", "mrr"):
                key = f"{prefix}/{d}/{metric}"
                out[key] = {s: m.get(f"{key}_{s}" if s != "value" else key)
                            for s in ("value", "chance", "ci_low", "ci_high", "p_value")}
    out["retrieval/brain_genotype/canonical_corr_1"] = {
        s: m.get(f"retrieval/brain_genotype/canonical_corr_1{'' if s == 'value' else '_' + s}")
        for s in ("value", "ci_low", "ci_high", "p_value")}
    return out


def verdict_p(m: dict) -> float:
    """Evaluate's verdict p-value (`brainmm.evaluate.summary.verdict_lines`): Bonferroni over the first held-out
    canonical correlation and MRR in both directions."""
    keys = ["retrieval/brain_genotype/canonical_corr_1_p_value",
            *(f"retrieval/{d}/mrr_p_value" for d in DIRECTIONS)]
    ps = [float(m[k]) for k in keys if k in m and np.isfinite(m[k])]
    return min(1.0, len(ps) * min(ps)) if ps else float("nan")


def binomial_ci(k: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson 95 % interval of a proportion k / n."""
    low = stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0
    high = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(low), float(high)


def null_band(n: int, alpha: float = 0.05) -> tuple[int, int]:
    """Rejection counts a calibrated test gives with 95 % probability over n null draws (central binomial band)."""
    return int(stats.binom.ppf(0.025, n, alpha)), int(stats.binom.ppf(0.975, n, alpha))


def mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    """Mean over seeds and its 95 % t interval."""
    if len(x) < 2:
        return float(np.mean(x)), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def page(rows: list[dict], demo: bool = False) -> str:
    """Markdown tables from the per-run records."""
    lines = ["# Confounded null cohorts: calibration of the adjusted verdict (issue 30)", "",
             "Mode: " + ("`--demo` (the whole `brainmm demo` pipeline, adjusted for site + 5 PCs)" if demo else
                         "heads on feature tables (`brainmm align` + `brainmm evaluate`, adjusted for age, sex, site + "
                         "5 PCs)") + ".", "",
             "Generated by `benchmarks/confounds_null.py` (its docstring: the procedure). Per row: seeds pooled. "
             "FPR: share of null cohorts whose adjusted verdict (Bonferroni over the within-strata permutation "
             "p-values of MRR both ways and the first held-out canonical correlation) is p < 0.05, with its "
             "Clopper-Pearson 95 % CI; 'band': the rejection counts a calibrated test gives with 95 % probability. "
             "Excess: adjusted metric minus its chance, mean over seeds with a 95 % t interval (holds chance when "
             "the interval covers 0). Brain -> genotype direction.", ""]
    null = [r for r in rows if r["effect"] == 0]
    if null:
        lines += ["## Null cohorts (effect 0)", "",
                  "| N | strength | seeds | FPR adjusted [95% CI] | rejections (band) | MRR p < 0.05 (one test) | "
                  "R@1 excess [95% CI] | MRR excess [95% CI] | MRR / chance | unadjusted MRR / chance | "
                  "unadjusted FPR (MRR p < 0.05) | cca FPR (MRR p < 0.05) | s / run |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for (n, s), group in _groups(null).items():
            lines.append(_null_row(n, s, group))
        k = sum(r["verdict_p"] < 0.05 for r in null)
        band = null_band(len(null))
        low, high = binomial_ci(k, len(null))
        covered, total = family_cover(null)
        lines += ["", f"Family-wise, Bonferroni over the {total} excess intervals above (t quantile at 1 - 0.05 / "
                  f"{2 * total}): {covered} of {total} cover 0."]
        ps = np.array([r["retrieval/brain_to_genotype/mrr"]["p_value"] for r in null])
        single = int((ps < 0.05).sum())
        lines += ["", f"All null cohorts together: {k} of {len(null)} adjusted verdicts reject "
                  f"(FPR {k / len(null):.3f} [{low:.3f}, {high:.3f}]; a calibrated test rejects {band[0]}-{band[1]} "
                  f"times with 95 % probability). The adjusted brain -> genotype MRR p-value alone: {single} of "
                  f"{len(null)} below 0.05 (band {band[0]}-{band[1]}); Kolmogorov-Smirnov against uniform: "
                  f"p = {stats.kstest(ps, 'uniform').pvalue:.3g}.", ""]
    planted = [r for r in rows if r["effect"] > 0]
    if planted:
        lines += ["## Default genetic effect, same confounding", "",
                  "| N | strength | seeds | verdict rejects | adjusted R@1 (chance) | adjusted MRR (chance) | "
                  "unadjusted MRR (chance) |", "|---|---|---|---|---|---|---|"]
        for (n, s), group in _groups(planted).items():
            d = "retrieval/brain_to_genotype"
            cells = [f"{n}", f"{s:g}", f"{len(group)}", f"{sum(r['verdict_p'] < 0.05 for r in group)}/{len(group)}"]
            for key in (f"{d}/R_at_1", f"{d}/mrr", "retrieval/unadjusted/brain_to_genotype/mrr"):
                v = np.array([r[key]["value"] for r in group if r[key]["value"] is not None])
                c = np.array([r[key]["chance"] for r in group if r[key]["value"] is not None])
                cells.append(f"{v.mean():.4f} ({c.mean():.4f}; {v.mean() / c.mean():.1f}x)" if len(v) else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def family_cover(null: list[dict]) -> tuple[int, int]:
    """How many of the table's R@1 / MRR excess intervals cover 0 at one family-wise 95 % level (Bonferroni)."""
    groups = _groups(null)
    total = 2 * len(groups)
    covered = 0
    for group in groups.values():
        for metric in ("R_at_1", "mrr"):
            key = f"retrieval/brain_to_genotype/{metric}"
            x = np.array([r[key]["value"] - r[key]["chance"] for r in group])
            if len(x) < 2:
                continue
            half = stats.t.ppf(1 - 0.05 / (2 * total), len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
            covered += int(abs(x.mean()) <= half)
    return covered, total


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["n"], r["strength"], r["seed"])):
        out.setdefault((r["n"], r["strength"]), []).append(r)
    return out


def _null_row(n: int, strength: float, group: list[dict]) -> str:
    d = "retrieval/brain_to_genotype"
    k = sum(r["verdict_p"] < 0.05 for r in group)
    low, high = binomial_ci(k, len(group))
    band = null_band(len(group))
    single = sum(r[f"{d}/mrr"]["p_value"] < 0.05 for r in group)
    cells = [f"{n}", f"{strength:g}", f"{len(group)}", f"{k / len(group):.2f} [{low:.2f}, {high:.2f}]",
             f"{k} ({band[0]}-{band[1]})", f"{single}/{len(group)}"]
    for metric in ("R_at_1", "mrr"):
        x = np.array([r[f"{d}/{metric}"]["value"] - r[f"{d}/{metric}"]["chance"] for r in group])
        mean, lo, hi = mean_ci(x)
        cells.append(f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    for key in (f"{d}/mrr", "retrieval/unadjusted/brain_to_genotype/mrr"):
        ratios = [r[key]["value"] / r[key]["chance"] for r in group if r[key]["value"] is not None]
        cells.append(f"{np.mean(ratios):.2f}" if ratios else "-")
    for key in ("retrieval/unadjusted/brain_to_genotype/mrr", "baseline/cca/brain_to_genotype/mrr"):
        ps = [r[key]["p_value"] for r in group if r[key]["p_value"] is not None]
        cells.append(f"{np.mean(np.array(ps) < 0.05):.2f}" if ps else "-")
    cells.append(f"{np.mean([r['seconds'] for r in group]):.0f}")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[800, 2000, 5000])
    parser.add_argument("--strengths", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--seeds", type=int, default=10, help="null cohorts per (N, strength)")
    parser.add_argument("--effect-seeds", type=int, default=3, help="default-effect cohorts per (N, strength 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="start at this seed index (split a run over "
                        "processes: --first-seed 0 --seeds 5 and --first-seed 5 --seeds 10)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/confounds_null")
    parser.add_argument("--page", type=Path, default=ROOT / "benchmarks/confounds_null.md")
    parser.add_argument("--page-only", action="store_true")
    parser.add_argument("--unadjusted-max", type=int, default=2000,
                        help="train evaluate's unadjusted comparison only up to this N (it doubles a run's cost)")
    parser.add_argument("--demo", action="store_true", help="the whole `brainmm demo` pipeline (issue's example) "
                        "instead of heads on feature tables; default --out/--page get a _demo suffix")
    args = parser.parse_args()
    if args.demo:
        args.out = args.out.with_name(args.out.name + "_demo") if args.out == parser.get_default("out") else args.out
        args.page = args.page.with_name("confounds_null_demo.md") if args.page == parser.get_default("page") \
            else args.page
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.page_only:
        jobs = [(n, s, 0.0, SEED0 + i) for i in range(args.first_seed, args.seeds) for n in args.sizes
                for s in args.strengths]
        jobs += [(n, 1.0, 1.0, SEED0 + i) for i in range(args.first_seed, args.effect_seeds) for n in args.sizes]
        for n, s, e, seed in jobs:
            path = args.out / f"{n}_x{s:g}_e{e:g}_s{seed}.json"
            if path.exists():
                continue
            work = Path(tempfile.mkdtemp(prefix="confounds-null-"))
            try:
                record = (one_demo(n, s, e, seed, work) if args.demo
                          else one_run(n, s, e, seed, work, unadjusted=n <= args.unadjusted_max))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            tmp.rename(path)
            print(f"N={n} strength={s:g} effect={e:g} seed={seed}: verdict p {record['verdict_p']:.3g}, "
                  f"{record['seconds']:.0f} s", flush=True)
            args.page.write_text(page([json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))], args.demo))
    args.page.write_text(page([json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))], args.demo))


if __name__ == "__main__":
    main()
