"""Power benchmark (issue 27 items 3 and 5): at the realistic regime's effect sizes, how large must N be before
brainmm's default and the classical pipelines detect the brain <-> genetics link, in two generator families?

Families (--family): `ou` simulates from configs/simulate_realistic.yaml (brainmm's own Ornstein-Uhlenbeck network,
424 parcels); `neurolib` from configs/simulate_neurolib.yaml (the same genetics, factors, sites and population, with
neurolib's whole-brain Hopf model on its 80-region HCP connectome, dynamics brainmm does not define; needs the
sim-neurolib extra); `both` (the default of the full grid) runs the two, so a recipe is judged on both generative
stories. --quick runs `ou` unless --family is given (`--quick --family neurolib` is the small neurolib check).
Per (family, heritability scale, seed) one cohort of max(--n) subjects is simulated (factor SNP h2 0.05-0.25 times
the scale; the same seed gives the same genotypes, causal variants and noise at every scale). One
family-grouped (sibships) train/val/test split (70/15/15) is made for that whole cohort, and families are taken in
one seeded random order, so the cohort at N is a prefix of the cohort at every larger N: the subsets are
nested and every subject keeps its split at every N (no stage ever trains on a subject that is a test subject at
another N). Per subset the whole pipeline runs (`brainmm run configs/demo.yaml` on the subset's cohort table and
split, the cohort's VCF; every stage fits on the train subjects only). Methods, all scored on the test subjects:

* model: brainmm's default recipe (demo.yaml's align recipe), its shared-space embeddings;
* fc_cca: PCA -> CCA on the Fisher-z FC table vs dosages, sizes chosen on val (refit as `brainmm evaluate` does);
* pgs: per-brain-component ridge (a polygenic score): FC PCA (8 components, train fit) -> one ridge per component
  from the train-standardised dosages (alpha by GCV on train), the component with the best val correlation is the
  "first pair"; retrieval compares the actual and predicted scores of the val-positive components (cosine).

Held-out r is the test correlation of the first pair (model: a CCA fitted on its train/val shared embeddings with
`select_cca`, the same as fc_cca); MRR is brain -> genetics; both get one-sided permutation p-values over test
pairings (`--n-perm` shuffles of the genetics rows; siblings are ~1 % of the realistic cohort, so subject-level
shuffles). Power = share of seeds with p(r) < 0.05, with a Wilson 95 % CI; the smallest N with power >= 0.8 (point
estimate) is reported per method and scale. p-values come from `permutation_pvalue` (alignment.stats) over the
statistics computed here over shuffles from `alignment.significance.pairing_permutations`; the model's r and p
are cross-checked against evaluate's own (`evaluate_r`, `evaluate_p_r`: alignment.significance, issue 27 item 2).

    python benchmarks/power.py --out runs/power                      # the full grid: hours to days on 2 cores
    python benchmarks/power.py --quick --out runs/power-quick        # N 150/300, 2 seeds, scale 1, 20 pretrain steps
    python benchmarks/power.py --quick --family neurolib --out runs/power-quick-nl   # the same, neurolib family
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alignment_scaling import _metric, _model_ranks  # noqa: E402  (reused: metrics.json reader, model ranks)

REPO = Path(__file__).resolve().parents[1]
REALISTIC = REPO / "configs" / "simulate_realistic.yaml"
FAMILIES = {"ou": REALISTIC, "neurolib": REPO / "configs" / "simulate_neurolib.yaml"}  # family -> simulator config
METHODS = ("model", "fc_cca", "pgs")
FULL = {"n": [1000, 2000, 5000, 10000], "seeds": [0, 1, 2, 3, 4], "h2_scale": [0.5, 1.0, 2.0]}
QUICK = {"n": [150, 300], "seeds": [0, 1], "h2_scale": [1.0]}
# --quick also shortens BrainLM pretraining (100 -> 20 steps): at 424 parcels it dominates a run on a shared CPU.
QUICK_OVERRIDES = ["pretrain.train.max_steps=20"]
# What the benchmark reads from evaluate is fc_cca and the model's held-out correlation; the rest of evaluate (other
# baselines, a shuffled-pair align run, probes, figures, explain) is switched off to save time. The model's recipe
# is untouched.
EVALUATE_TRIM = ["evaluate.baselines.methods=[fc_cca]", "evaluate.baselines.shuffled_pairs=false",
                 "evaluate.probes.targets=[]", "evaluate.figures.enabled=false", "evaluate.model.log=false",
                 "evaluate.explain.enabled=false"]
PGS_COMPONENTS = 8
ALPHA = 0.05


def run_name(family: str, scale: float, seed: int) -> str:
    """Folder stem of one (family, scale, seed): `h1_s0` for ou (the names before families existed), else
    `neurolib-h1_s0`."""
    return f"{'' if family == 'ou' else family + '-'}h{scale:g}_s{seed}"


def simulate(out: Path, n_max: int, seed: int, scale: float, extra: list[str],
             family: str = "ou") -> tuple[Path, dict[str, float]]:
    """One cohort per (family, scale, seed) (reused when already there); wall s and the process's peak RSS."""
    from brainmm.config import load_config
    from brainmm.data.simulate import SimulationConfig, simulate_cohort

    config = FAMILIES[family]
    folder = out / "cohorts" / run_name(family, scale, seed)
    if (folder / "manifest.json").is_file():
        return folder, {}
    base = load_config(SimulationConfig, config)
    high = base.factors.h2_high if base.factors.h2_high is not None else base.factors.h2
    cfg = load_config(SimulationConfig, config, [
        f"n_subjects={n_max}", f"seed={seed}", f"factors.h2={min(1.0, base.factors.h2 * scale)}",
        f"factors.h2_high={min(1.0, high * scale)}", *extra])
    t0 = time.perf_counter()
    simulate_cohort(cfg, folder)
    return folder, {"simulate_s": time.perf_counter() - t0,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def nested_subsets(cohort_dir: Path, ns: list[int], seed: int) -> dict[int, pd.DataFrame]:
    """Split tables (subject_id, group, split) of nested subsets: one split of the whole cohort, families in one
    seeded order, the subset at N = the longest prefix of families with at most N subjects."""
    from brainmm.data.splits import make_split

    cohort = pd.read_csv(cohort_dir / "cohort.csv", dtype={"subject_id": str, "family": str})
    subjects = cohort.drop_duplicates("subject_id")
    split = make_split(subjects["subject_id"], subjects["family"], (0.7, 0.15, 0.15), seed=seed)
    families = np.array(sorted(subjects["family"].unique()))
    order = families[np.random.default_rng([seed, 27]).permutation(len(families))]
    cumulative = subjects.groupby("family").size().loc[order].cumsum().to_numpy()
    return {n: split[split["group"].isin(set(order[: np.searchsorted(cumulative, n, side="right")]))]
            for n in ns}


def run_pipeline(cohort_dir: Path, split: pd.DataFrame, folder: Path, extra: list[str]) -> dict[str, Any]:
    """`brainmm run configs/demo.yaml` on one subset (skipped when a finished run is there, resumed when an
    unfinished one is: its finished stages with unchanged config and inputs are reused)."""
    state = folder / "pipeline.json"
    status = json.loads(state.read_text()).get("status") if state.is_file() else None
    if status == "finished":
        return {"reused": True}
    inputs = folder.parent / f"{folder.name}-inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    cohort = pd.read_csv(cohort_dir / "cohort.csv", dtype={"subject_id": str, "family": str})
    cohort = cohort[cohort["subject_id"].isin(set(split["subject_id"]))].copy()
    cohort["file"] = [str((cohort_dir / f).resolve()) for f in cohort["file"]]
    cohort.to_csv(inputs / "cohort.csv", index=False)
    split.to_csv(inputs / "split.csv", index=False)
    mode = "--resume" if status is not None else "--overwrite"
    cmd = [sys.executable, "-m", "brainmm.cli", "-q", "run", mode, str(REPO / "configs" / "demo.yaml"),
           f"output_dir={folder}", "stages.simulate=false", f"data.fmri_cohort={inputs / 'cohort.csv'}",
           f"ingest.split_from={inputs / 'split.csv'}", f"ingest.coords={cohort_dir / 'coords.tsv'}",
           f"genetics.matrix.vcf={cohort_dir / 'genotypes.vcf.gz'}", "genetics.matrix.drop_unmatched_samples=true",
           f"name=power-{folder.name}", f"tracking.experiment=power-{folder.name}",
           f"tracking.uri=sqlite:///{(folder.parent / f'mlflow-{folder.name}.db').resolve()}",
           *EVALUATE_TRIM, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    log_path = folder.parent / f"{folder.name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pipeline {folder} failed; see {log_path}:\n{log_path.read_text()[-2000:]}")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def _corr(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.corrcoef(u, v)[0, 1])


def heldout_stats(first: tuple[np.ndarray, np.ndarray], space: tuple[np.ndarray, np.ndarray], n_perm: int,
                  seed: int) -> dict[str, float]:
    """Test r of the first pair and brain -> genetics MRR (cosine in `space`), each with a one-sided permutation
    p-value over test pairings (the same shuffles of the genetics rows for both, from
    `alignment.significance.pairing_permutations`)."""
    from scipy.stats import rankdata

    from alignment.significance import pairing_permutations
    from alignment.stats import permutation_pvalue

    b, g = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in space)
    ranks = rankdata(-(b @ g.T), method="max", axis=1) - 1  # [i, j]: candidates scoring >= j (pessimistic ties)
    n = len(b)
    rows = np.arange(n)
    r, mrr = _corr(*first), float(np.mean(1 / (1 + ranks[rows, rows])))
    null = np.array([(_corr(first[0], first[1][p]), np.mean(1 / (1 + ranks[rows, p])))
                     for p in pairing_permutations(n, n_perm, seed=seed)])
    p_r, p_mrr = permutation_pvalue(np.array([r, mrr]), null)
    chance = float(np.mean(1 / np.arange(1, n + 1)))
    return {"r": r, "p_r": float(p_r), "mrr": mrr, "p_mrr": float(p_mrr), "mrr_chance": chance, "n_test": n}


def _side(folder: Path, split: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Subject-mean, L2-normalised shared-space embeddings of one split (brain, genotype), in one subject order."""
    from brainmm.align import table_subjects
    from brainmm.embeddings import EmbeddingTable
    from brainmm.evaluate.inputs import subject_mean

    means = {}
    for key in ("brain", "genotype"):
        table = EmbeddingTable.load(folder / "align" / "embeddings" / split / key)
        ids, vectors = subject_mean(table.vectors, table_subjects(table, key), normalize=True)
        means[key] = dict(zip(ids, vectors))
    subjects = sorted(set(means["brain"]) & set(means["genotype"]))
    return subjects, {k: np.stack([means[k][s] for s in subjects]) for k in means}


def model_method(folder: Path, n_perm: int, seed: int) -> dict[str, float]:
    """brainmm's default: MRR in its shared space; r of the first CCA pair fitted on its train/val embeddings."""
    from alignment.baselines import select_cca

    (_, tr), (_, va), (subjects, te) = (_side(folder, s) for s in ("train", "val", "test"))
    cca = select_cca("cca", tr["brain"], tr["genotype"], va["brain"], va["genotype"], 8)
    u, v = cca.transform(te["brain"], te["genotype"])
    stats = heldout_stats((u[:, 0], v[:, 0]), (te["brain"], te["genotype"]), n_perm, seed)
    check_subjects, ranks = _model_ranks(folder)  # the cohort-size benchmark's reading of the same ranks (torch)
    if check_subjects != subjects:
        raise SystemExit(f"{folder}: test subjects differ from alignment_scaling._model_ranks'")
    return {**stats, "mrr_torch_ranks": float(np.mean(1 / (1 + ranks)))}  # equal up to float32 near-ties


def classical_inputs(folder: Path) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    """(subjects, FC table, genotype matrix) per split, read exactly as `brainmm evaluate` reads them."""
    from brainmm.config import load_config
    from brainmm.evaluate import EvaluateConfig
    from brainmm.evaluate.inputs import load_inputs, resolve_align_run

    cfg = load_config(EvaluateConfig, folder / "evaluate" / "config.yaml")
    inputs = load_inputs(cfg, resolve_align_run(cfg))
    return {s: inputs.pairs(s, "genotype", shared=False, brain=inputs.brain_fc) for s in ("train", "val", "test")}


def fc_cca_method(data: dict[str, Any], n_perm: int, seed: int) -> dict[str, float]:
    """PCA -> CCA of FC vs dosages, sizes chosen on val (as evaluate's fc_cca)."""
    from alignment.baselines import select_cca

    (_, bt, gt), (_, bv, gv), (_, bx, gx) = data["train"], data["val"], data["test"]
    u, v = select_cca("cca", bt, gt, bv, gv, 8).transform(bx, gx)
    return heldout_stats((u[:, 0], v[:, 0]), (u, v), n_perm, seed)


def pgs_method(data: dict[str, Any], n_perm: int, seed: int) -> dict[str, float]:
    """Per-brain-component ridge from dosages (train fit, alpha by GCV on train); first pair chosen on val."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV

    (_, bt, gt), (_, bv, gv), (_, bx, gx) = data["train"], data["val"], data["test"]
    pca = PCA(min(PGS_COMPONENTS, len(bt) - 1), random_state=seed).fit(bt)
    yt, yv, yx = (pca.transform(b) for b in (bt, bv, bx))
    mu, sd = gt.mean(0), gt.std(0)
    sd[sd == 0] = 1
    zt, zv, zx = ((g - mu) / sd for g in (gt, gv, gx))
    ridge = RidgeCV(alphas=np.logspace(1, 7, 13), alpha_per_target=True).fit(zt, yt)
    pv, px = ridge.predict(zv), ridge.predict(zx)
    val_r = np.array([_corr(yv[:, k], pv[:, k]) for k in range(yv.shape[1])])
    best = int(np.nanargmax(val_r))
    keep = np.flatnonzero(val_r > 0) if (val_r > 0).any() else np.array([best])
    scale_y, scale_p = yt[:, keep].std(0), np.maximum(ridge.predict(zt)[:, keep].std(0), 1e-12)
    stats = heldout_stats((yx[:, best], px[:, best]), (yx[:, keep] / scale_y, px[:, keep] / scale_p), n_perm, seed)
    return {**stats, "component": best, "val_r": float(val_r[best])}


def score(folder: Path, n_perm: int, seed: int) -> dict[str, dict[str, float]]:
    """Every method's held-out statistics for one finished pipeline run."""
    data = classical_inputs(folder)
    out = {"model": model_method(folder, n_perm, seed), "fc_cca": fc_cca_method(data, n_perm, seed),
           "pgs": pgs_method(data, n_perm, seed)}
    table = pd.read_json(folder / "evaluate" / "metrics.json", orient="split")
    reported = _metric(table, "baseline", "fc_cca", "mrr")  # evaluate's own fc_cca: the refit must match it
    out["fc_cca"]["evaluate_mrr"] = reported.get("value", float("nan"))
    corr = table[(table["section"] == "retrieval") & (table["split"] == "test")
                 & (table["metric"] == "canonical_corr_1")]  # evaluate's held-out r of the model (issue 27 item 2)
    if len(corr):
        out["model"]["evaluate_r"] = float(corr.iloc[0]["value"])
        out["model"]["evaluate_p_r"] = float(corr.iloc[0].get("p_value", float("nan")))
    return out


def power_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (family, scale, N, method): mean r / MRR over seeds, power = share of seeds with p(r) < ALPHA (Wilson
    CI). Rows saved before families existed are `ou`."""
    from alignment.stats import wilson_ci

    out = []
    frame = pd.DataFrame([{"family": "ou", **r} for r in rows])
    for (family, scale, n), group in frame.groupby(["family", "h2_scale", "n"]):
        for m in METHODS:
            stats = [s[m] for s in group["scores"]]
            hits = [s["p_r"] < ALPHA for s in stats]
            low, high = wilson_ci(float(np.mean(hits)), len(hits))
            out.append({"family": family, "h2_scale": scale, "n": n, "method": m, "seeds": len(stats),
                        "n_test": int(np.mean([s["n_test"] for s in stats])),
                        "r": float(np.mean([s["r"] for s in stats])), "mrr": float(np.mean([s["mrr"] for s in stats])),
                        "mrr_chance": float(np.mean([s["mrr_chance"] for s in stats])),
                        "p_r": [s["p_r"] for s in stats], "p_mrr": [s["p_mrr"] for s in stats],
                        "power": float(np.mean(hits)), "power_ci": [low, high],
                        "power_mrr": float(np.mean([s["p_mrr"] < ALPHA for s in stats]))})
    return out


def render(table: list[dict[str, Any]], costs: dict[str, Any], command: str, quick: bool) -> str:
    """Markdown: per family and scale, the table and the smallest N reaching 80 % power per method."""
    lines = ["# power benchmark results" + (" (QUICK MODE: small N, 2 seeds; not the benchmark's grid)" if quick
                                           else ""), "", f"`{command}`", ""]
    everything = pd.DataFrame(table)
    sections = [(f, s) for f in FAMILIES for s in sorted(everything.loc[everything["family"] == f, "h2_scale"].unique())]
    for family, scale in sections:
        t = everything[everything["family"] == family]
        lines += [f"## {family} family ({FAMILIES[family].relative_to(REPO)}), heritability x{scale:g}", "",
                  "| N | test | method | held-out r (mean) | MRR (mean; chance) | "
                  "p(r) per seed | p(MRR) per seed | power p(r) < 0.05 [95 % CI] | power p(MRR) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for _, row in t[t["h2_scale"] == scale].sort_values(["n", "method"]).iterrows():
            lines.append(f"| {row.n} | {row.n_test} | {row.method} | {row.r:.3f} | {row.mrr:.3f} ({row.mrr_chance:.3f}) "
                         f"| {', '.join(f'{p:.3f}' for p in row.p_r)} | {', '.join(f'{p:.3f}' for p in row.p_mrr)} "
                         f"| {row.power:.2f} [{row.power_ci[0]:.2f}, {row.power_ci[1]:.2f}] | {row.power_mrr:.2f} |")
        lines += ["", "| method | smallest N with power >= 0.8 |", "|---|---|"]
        for m in METHODS:
            sub = t[(t["h2_scale"] == scale) & (t["method"] == m) & (t["power"] >= 0.8)]
            lines.append(f"| {m} | {int(sub['n'].min()) if len(sub) else '> ' + str(int(t['n'].max()))} |")
        lines.append("")
    lines += ["## costs", "", "```", json.dumps(costs, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def main() -> None:
    """Simulate, subsample, run the pipelines, score every method and write power.json / power.md."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"small grid to show it works: {QUICK}, {QUICK_OVERRIDES}")
    ap.add_argument("--family", choices=[*FAMILIES, "both"],
                    help="generator family: ou, neurolib or both (default: both; ou with --quick)")
    ap.add_argument("--n", type=int, nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--h2-scale", type=float, nargs="+")
    ap.add_argument("--n-perm", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("runs/power"))
    ap.add_argument("--simulate", nargs="*", default=[], help="extra simulator overrides, e.g. brain.n_timepoints=200")
    ap.add_argument("--summarise-only", action="store_true", help="only tabulate the runs scored so far in --out")
    ap.add_argument("overrides", nargs="*", help="pipeline overrides for every run")
    args = ap.parse_args()
    grid = QUICK if args.quick else FULL
    ns, seeds = args.n or grid["n"], args.seeds or grid["seeds"]
    scales = args.h2_scale or grid["h2_scale"]
    family_arg = args.family or ("ou" if args.quick else "both")
    families = list(FAMILIES) if family_arg == "both" else [family_arg]
    args.out.mkdir(parents=True, exist_ok=True)
    rows, costs = [], {}
    if args.summarise_only:
        saved = json.loads((args.out / "power_rows.json").read_text())
        rows, costs = (saved, {}) if isinstance(saved, list) else (saved["rows"], saved["costs"])
        scales = []
    for family in families:
        for scale in scales:
            for seed in seeds:
                name = run_name(family, scale, seed)
                cohort, sim_cost = simulate(args.out, max(ns), seed, scale, args.simulate, family)
                costs[f"simulate {name} N={max(ns)}"] = sim_cost
                for n, split in nested_subsets(cohort, ns, seed).items():
                    folder = args.out / f"{name}_n{n}"
                    extra = [*(QUICK_OVERRIDES if args.quick else []), *args.overrides]
                    costs[f"pipeline {name} N={n}"] = run_pipeline(cohort, split, folder, extra)
                    rows.append({"family": family, "h2_scale": scale, "seed": seed, "n": n,
                                 "scores": score(folder, args.n_perm, seed)})
                    (args.out / "power_rows.json").write_text(json.dumps({"rows": rows, "costs": costs}, indent=1))
    table = power_table(rows)
    (args.out / "power.json").write_text(json.dumps({"rows": rows, "table": table, "costs": costs}, indent=1))
    text = render(table, costs, "python " + " ".join(sys.argv), args.quick)
    (args.out / "power.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
