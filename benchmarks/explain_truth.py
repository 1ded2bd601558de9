"""Ground truth for `brainmm explain` (issue 28): on simulated cohorts, how well the scores of the explain
section recover what the simulator planted (truth.json), for brainmm's default and the CCA baselines' loadings.

Per regime x seed: one pipeline run with the planted link (the regime's effect size), then one null cohort
(simulate.effects.effect_size=0; it embeds with the planted run's BrainLM of the same seed, which saves a pretraining
and cannot plant a link), each in its own process and MLflow sqlite file. Read back from
<run>/evaluate/explain/*.tsv:
  - variants: AUROC and precision@k (k = number of causal SNPs) of the score for the causal SNPs of all factors;
  - edges: the same for the driven edges (both parcels in one module driven by a factor: the coupling effect);
  - parcels: the same for the driven parcels (modules driven by a factor; n/a when every parcel is driven);
  - null cohorts: the number of BH-significant features (q <= explain.fdr) per table and method.
Methods: model (brainmm's default: CCA-initialised linear heads on [BrainLM, FC PCA] x dosages; FC PCA alone in the
realistic regime, the FC-only path), cca (PCA -> CCA on the same brain table), fc_cca (PCA -> CCA on the
connectivity table). Variants are scored by their contribution to the held-out paired similarity, edges and
parcels by the link score (docs/explain.md). Writes <out>/explain_truth.md and .json.

    OMP_NUM_THREADS=1 python benchmarks/explain_truth.py --seeds 0 1 2 --out runs/explain_truth
    python benchmarks/explain_truth.py --regimes realistic --n 1000 --seeds 0 --out runs/explain_truth  # reduced N
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
METHODS = {"model": "score", "cca": "cca_score", "fc_cca": "fc_cca_score"}
OWN_SIDE = {"model_weight": "weight", "model_ig": "attribution", "cca_weight": "cca_weight",
            "fc_cca_weight": "fc_cca_weight", "oracle": "oracle"}  # weights, gradients, ceiling (no test, no q)
FAST = ["evaluate.probes.targets=[]", "evaluate.baselines.methods=[cca, fc_cca]", "evaluate.baselines.shuffled_pairs=false",
        "evaluate.model.log=false"]


def pipeline_yaml(regime: str, out: Path, n: int | None) -> Path:
    """The demo pipeline config, its simulate section replaced by configs/simulate_<regime>.yaml (when not demo)."""
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    if regime != "demo":  # 424 parcels: the FC-only path (no BrainLM pretraining on a CPU, README)
        cfg["simulate"] = yaml.safe_load((REPO / "configs" / f"simulate_{regime}.yaml").read_text())
        cfg["brain_inputs"] = ["connectivity"]
    if n:
        cfg["simulate"]["n_subjects"] = n
    path = out / f"{regime}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_one(config: Path, folder: Path, seed: int, null: bool, extra: list[str]) -> float | None:
    """One pipeline run in its own process (reused when <folder> holds a finished one); returns its wall seconds."""
    state = folder / "pipeline.json"
    if state.is_file() and json.loads(state.read_text()).get("status") == "finished":
        return None
    mode = "--resume" if state.is_file() else "--overwrite"  # a failed or stopped run continues its finished stages
    cmd = [sys.executable, "-m", "brainmm.cli", "-q", "run", str(config), mode, f"output_dir={folder}",
           f"simulate.seed={seed}", f"pretrain.train.seed={1234 + seed}", f"align.train.seed={seed}",
           f"tracking.uri=sqlite:///{(folder.parent / f'{folder.name}.db').resolve()}", f"name={folder.name}", *FAST,
           *(["simulate.effects.effect_size=0.0"] if null else []), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    log = folder.parent / f"{folder.name}.log"
    with open(log, "w") as handle:
        rc = subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{folder.name} failed (exit {rc}); see {log}:\n{log.read_text()[-2000:]}")
    return time.perf_counter() - t0


def rescore(folder: Path, n_permutations: int) -> None:
    """Recompute <run>/evaluate/explain/*.tsv with the current code (the pipeline's evaluate config and inputs)."""
    from brainmm.config import load_config
    from brainmm.evaluate.explain import compute_explain, write_explain
    from brainmm.evaluate.inputs import load_inputs, resolve_align_run
    from brainmm.pipeline import PipelineConfig
    from brainmm.pipeline.plan import make_plan

    ev = make_plan(load_config(PipelineConfig, folder / "config.yaml")).config.evaluate
    ev.figures.enabled = False
    ev.explain.n_permutations = n_permutations
    write_explain(compute_explain(load_inputs(ev, resolve_align_run(ev)), ev), folder / "evaluate" / "explain")


def truth_sets(folder: Path) -> dict[str, Any]:
    """Causal SNP ids, driven parcels and driven (within-driven-module) edges from the simulator's truth.json."""
    truth = json.loads((folder / "cohort" / "truth.json").read_text())
    causal = {s for f in truth["genetics"]["causal"] for s in f["snp_ids"]}
    modules = np.asarray(truth["brain"]["modules"])
    driven_modules = set(truth["brain"]["factor_module"].values())
    parcels = np.isin(modules, list(driven_modules))
    return {"causal": causal, "modules": modules, "driven_parcels": parcels, "driven_modules": driven_modules}


def recovery(scores: pd.Series, positive: np.ndarray) -> tuple[float, float]:
    """(AUROC, precision@k with k = number of positives); AUROC nan when one class is empty."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan"), float("nan")
    k = int(positive.sum())
    top = np.argsort(-scores.to_numpy(), kind="stable")[:k]
    return float(roc_auc_score(positive, scores.to_numpy())), float(positive[top].mean())


def oracle_scores(folder: Path, variant_ids: pd.Series) -> pd.Series:
    """A ceiling for any marginal variant score: sum over factors of corr(dosage, true factor)^2 on every subject of
    the cohort (the simulator's factors, no brain measurement, N instead of the held-out subjects)."""
    geno = np.load(folder / "cohort" / "genotypes.npz")
    d = geno["dosages"].astype(np.float64)
    d = np.where(np.isfinite(d), d, np.nanmean(d, axis=0))
    f = pd.read_csv(folder / "cohort" / "factors.csv").filter(regex=r"^factor_").to_numpy()
    d, f = d - d.mean(axis=0), (f - f.mean(axis=0)) / f.std(axis=0)
    sd = d.std(axis=0)
    r = (d / np.where(sd > 0, sd, np.inf)).T @ f / len(f)
    scores = pd.Series((r**2).sum(axis=1), index=geno["snp_ids"].astype(str))
    return scores.reindex(variant_ids.astype(str).to_numpy()).fillna(0.0).reset_index(drop=True)


def score_run(folder: Path, fdr: float) -> dict[str, Any]:
    """Recovery of the planted truth (or, null cohorts, significant counts) per table and method."""
    explain = folder / "evaluate" / "explain"
    truth = truth_sets(folder)
    variants = pd.read_csv(explain / "variants.tsv", sep="\t", dtype={"variant_id": str, "chrom": str})
    edges = pd.read_csv(explain / "edges.tsv", sep="\t")
    parcels = pd.read_csv(explain / "parcels.tsv", sep="\t")
    mod = truth["modules"]
    positives = {
        "variants": (variants, variants["variant_id"].isin(truth["causal"]).to_numpy()),
        "edges": (edges, (mod[edges["parcel_i"]] == mod[edges["parcel_j"]])
                  & np.isin(mod[edges["parcel_i"]], list(truth["driven_modules"]))),
        "parcels": (parcels, truth["driven_parcels"][parcels["parcel"]]),
    }
    variants["oracle"] = oracle_scores(folder, variants["variant_id"])
    out: dict[str, Any] = {}
    for table, (frame, positive) in positives.items():
        for method, col in {**METHODS, **OWN_SIDE}.items():
            if col not in frame:
                continue
            auroc, prec = recovery(frame[col], positive)
            out[f"{table}/{method}/auroc"] = auroc
            out[f"{table}/{method}/precision_at_k"] = prec
            qcol = "q" if method == "model" else f"{method}_q"
            if qcol in frame:
                out[f"{table}/{method}/n_significant"] = int((frame[qcol] <= fdr).sum())
                out[f"{table}/{method}/true_significant"] = int(((frame[qcol] <= fdr) & positive).sum())
        out[f"{table}/n"] = len(frame)
        out[f"{table}/n_positive"] = int(np.asarray(positive).sum())
    return out


def _fmt(values: list[float]) -> str:
    v = np.array([x for x in values if x == x], dtype=float)
    if not len(v):
        return "n/a"
    return f"{v.mean():.3f} ({', '.join(f'{x:.3f}' for x in v)})"


def report(rows: list[dict[str, Any]], fdr: float) -> str:
    """Markdown: recovery per regime/table/method (mean over seeds, per-seed values) and the null cohorts."""
    lines = ["| regime | table | method | AUROC mean (per seed) | precision@k mean (per seed) | BH-significant (true) |",
             "|---|---|---|---|---|---|"]
    frame = pd.DataFrame(rows)
    planted = frame[~frame["null"]]
    for regime, g in planted.groupby("regime", sort=False):
        for table in ("variants", "edges", "parcels"):
            for method in (*METHODS, *OWN_SIDE):
                key = f"{table}/{method}"
                if f"{key}/auroc" not in g or g[f"{key}/auroc"].isna().all() and method in OWN_SIDE:
                    continue
                sig = ", ".join(f"{int(a)} ({int(b)})" for a, b in zip(g[f"{key}/n_significant"],
                                                                       g[f"{key}/true_significant"])) \
                    if f"{key}/n_significant" in g else "-"
                lines.append(f"| {regime} | {table} (positives {int(g[f'{table}/n_positive'].iloc[0])} of "
                             f"{int(g[f'{table}/n'].iloc[0])}) | {method} | {_fmt(g[f'{key}/auroc'].tolist())} | "
                             f"{_fmt(g[f'{key}/precision_at_k'].tolist())} | {sig} |")
    null = frame[frame["null"]]
    if len(null):
        lines += ["", f"Null cohorts (effect_size 0): BH-significant features at q <= {fdr} per seed", "",
                  "| regime | seed | " + " | ".join(f"{t}/{m}" for t in ("variants", "edges", "parcels")
                                                    for m in METHODS) + " | any |",
                  "|---|---|" + "---|" * (3 * len(METHODS) + 1)]
        for _, r in null.iterrows():
            counts = [r.get(f"{t}/{m}/n_significant", float("nan")) for t in ("variants", "edges", "parcels")
                      for m in METHODS]
            lines.append(f"| {r['regime']} | {r['seed']} | " + " | ".join(
                "n/a" if c != c else str(int(c)) for c in counts) + f" | {int(np.nansum(counts) > 0)} |")
        lines.append("")
        for regime, g in null.groupby("regime", sort=False):
            for method in METHODS:
                sig = g.filter(regex=f"^(variants|edges|parcels)/{method}/n_significant$").fillna(0).sum(axis=1)
                lines.append(f"{regime}, {method}: {int((sig == 0).sum())} of {len(g)} null seeds without a "
                             "significant variant, edge or parcel (goal >= 95 % of seeds)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regimes", nargs="+", default=["demo"], help="demo and/or realistic (configs/simulate_*.yaml)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=None, help="simulate.n_subjects (default: the regime's)")
    ap.add_argument("--no-null", action="store_true", help="skip the effect_size 0 cohorts")
    ap.add_argument("--fdr", type=float, default=0.05)
    ap.add_argument("--permutations", type=int, default=10000, help="explain.n_permutations")
    ap.add_argument("--null-seeds", nargs="*", type=int, default=[], help="extra null cohorts without a planted run")
    ap.add_argument("--null-model", type=Path, default=None,
                    help="BrainLM folder the extra null cohorts embed with (default: pretrain one per run)")
    ap.add_argument("--rescore", action="store_true", help="recompute the explain tables of finished runs in-process "
                    "with the current code before scoring (the pipeline runs are reused)")
    ap.add_argument("--out", type=Path, default=Path("runs/explain_truth"))
    ap.add_argument("overrides", nargs="*", help="pipeline overrides for every run, e.g. align.train.epochs=50")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for regime in args.regimes:
        config = pipeline_yaml(regime, args.out, args.n)
        runs = [(False, seed) for seed in args.seeds] + ([] if args.no_null else [(True, s) for s in args.seeds])
        runs += [(True, seed) for seed in args.null_seeds if seed not in args.seeds]
        for null, seed in runs:
            folder = args.out / f"{regime}_s{seed}{'_null' if null else ''}"
            extra = [f"evaluate.explain.fdr={args.fdr}", f"evaluate.explain.n_permutations={args.permutations}",
                     *args.overrides]
            model = args.out / f"{regime}_s{seed}" / "pretrain" / "model"
            model = model if model.is_dir() else args.null_model
            if null and model:  # the null cohort embeds with the planted run's BrainLM of its seed (or --null-model):
                extra.append(f"embed.model={model}")  # unsupervised, it cannot plant a genetic link
            wall = run_one(config, folder, seed, null, extra)
            if args.rescore:
                rescore(folder, args.permutations)
            rows.append({"regime": regime, "seed": seed, "null": null, "wall_s": wall, **score_run(folder, args.fdr)})
            print(f"{folder.name}: done ({'reused' if wall is None else f'{wall:.0f} s'})", flush=True)
            (args.out / "explain_truth.md").write_text(report(rows, args.fdr) + "\n")  # so far
    text = report(rows, args.fdr)
    (args.out / "explain_truth.json").write_text(json.dumps(rows, indent=1, default=float))
    (args.out / "explain_truth.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
