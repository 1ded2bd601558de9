"""Which alignment recipe beats the classical pipeline? For each N and seed: the demo pipeline up to the genetics
stage (simulate -> ingest -> pretrain -> embed -> genetics, simulator defaults of configs/demo.yaml), then

  * cca      PCA -> CCA on the BrainLM subject embeddings vs the genotype matrix (sizes chosen on val)
  * fc_cca   PCA -> CCA on Fisher-z FC (`brainmm fmri connectivity`) vs the genotype matrix (sizes chosen on val)
  * recipes  `brainmm align` (run_align) with table brain inputs: BrainLM embeddings (the default), FC PCA scores,
             concat(BrainLM, FC PCA), linear / whitened heads, batch size, temperature (see RECIPES)

Every choice (CCA sizes, the align epoch) is made on the validation subjects; each configuration reads the test
split once. Prints one row per (N, seed, method): val score, test R@1 and MRR brain -> genotype (subject level,
95 % bootstrap CIs), chance, seconds; and the pipeline's per-stage wall/CPU seconds and peak RSS.

    OMP_NUM_THREADS=1 python benchmarks/alignment_recipes.py --n 500 --seeds 0 1 2 --out runs/recipes
    python benchmarks/alignment_recipes.py --n 2000 --seeds 0 --recipes default,fc_lin,concat_lin
    python benchmarks/alignment_recipes.py --n 500 --seeds 0 --pretrain   # pretraining schedules (masked MSE)
    python benchmarks/alignment_recipes.py --n 500 --seeds 0 1 2 --reuse --cca-screen   # input scalings for CCA
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np

# name -> (brain input, align overrides). Inputs: emb (BrainLM subject embeddings), fc (FC PCA scores, PCA fitted on
# train), concat (both, side by side). "genotype_table" drops the genotype MLP tower (the head sees the dosages).
RECIPES: dict[str, tuple[str, list[str]]] = {
    "default": ("emb", []),
    "fc_mlp": ("fc", []),
    "concat_mlp": ("concat", []),
    "fc_lin": ("fc", ["head.kind=linear"]),
    "concat_lin": ("concat", ["head.kind=linear"]),
    "fc_lin_gtab": ("fc", ["head.kind=linear", "genotype_table"]),
    "concat_lin_gtab": ("concat", ["head.kind=linear", "genotype_table"]),
    "fc_lin_b128": ("fc", ["head.kind=linear", "train.batch_size=128"]),
    "fc_lin_t03": ("fc", ["head.kind=linear", "loss.init_logit_scale=1.204"]),  # temperature 0.3 at start
    "emb_lin": ("emb", ["head.kind=linear"]),
    "fc_lin_gtab_d16": ("fc", ["head.kind=linear", "genotype_table", "head.out_dim=16"]),
    "concat_lin_gtab_d16": ("concat", ["head.kind=linear", "genotype_table", "head.out_dim=16"]),
    "fc_lin_gtab_b128": ("fc", ["head.kind=linear", "genotype_table", "train.batch_size=128"]),
    # linear heads started from the train-fitted PCA -> CCA solution (head.init cca; epoch 0 = CCA, chosen on val)
    "cca_init_emb": ("emb", ["head.kind=linear", "genotype_table", "head.init=cca"]),
    "cca_init_concat": ("concat", ["head.kind=linear", "genotype_table", "head.init=cca"]),
    "cca_init_fc": ("fc", ["head.kind=linear", "genotype_table", "head.init=cca"]),
    "cca_init_concat_z": ("concat", ["head.kind=linear", "genotype_table", "head.init=cca", "head.standardize=true"]),
}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def prepare(n: int, seed: int, root: Path, uri: str, overrides: list[str], reuse: bool = False) -> dict[str, Any]:
    """Run simulate..genetics of the demo pipeline; returns the paths and per-stage seconds / peak RSS."""
    from brainmm.config import load_config
    from brainmm.pipeline import PipelineConfig, run_pipeline

    out = root / f"n{n}_s{seed}"
    cfg = load_config(PipelineConfig, None, [
        f"output_dir={out}", f"simulate.n_subjects={n}", f"simulate.seed={seed}", f"pretrain.train.seed={1234 + seed}",
        "stages.align=false", "stages.evaluate=false", f"tracking.uri={uri}", "tracking.experiment=recipes",
        *overrides])
    state = json.loads((out / "pipeline.json").read_text()) if (out / "pipeline.json").is_file() else {}
    if reuse and state and state.get("status") != "finished":
        raise SystemExit(f"{out}: pipeline status {state.get('status')!r} (still running?); --reuse needs a finished one")
    if reuse and state:  # same N, seed and overrides: reuse its stage outputs
        stages = {s: {"wall_s": r["seconds"], "cpu_s": r["cpu_seconds"]} for s, r in state["records"].items()}
    else:
        result = run_pipeline(cfg, overwrite=True)
        stages = {s: {"wall_s": r.seconds, "cpu_s": r.cpu_seconds} for s, r in result.stages.items()}
    pre = json.loads((out / "pretrain" / "metrics.json").read_text()).get("test", {})
    return {"out": out, "fmri": out / "fmri", "emb": out / "embed" / "brain", "geno": out / "genetics" / "genotypes",
            "split": out / "fmri" / "split.csv", "stages": stages, "pretrain_test": pre, "cfg": cfg}


def brain_tables(prep: dict[str, Any], fc_pca: float) -> dict[str, Any]:
    """FC (no PCA, for fc_cca), FC PCA (for heads) and the pipeline's [BrainLM, FC PCA] table
    (`brain_input_table`: train-fitted PCA and block scaling); times the FC stage."""
    from brainmm.data.fmri.connectivity import ConnectivityConfig, connectivity_table
    from brainmm.pipeline.brain_inputs import brain_input_table

    out = prep["out"] / "fc"
    t0, c0 = time.perf_counter(), time.process_time()
    fc = connectivity_table(prep["fmri"], out / "fc", ConnectivityConfig())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    pca = connectivity_table(prep["fmri"], out / "fc_pca", ConnectivityConfig(pca=fc_pca))
    prep["stages"]["connectivity"] = {"wall_s": wall, "cpu_s": cpu}
    concat = brain_input_table(["brainlm", "connectivity"], str(prep["emb"]), str(fc), str(prep["split"]),
                               int(fc_pca), out / "concat")
    return {"fc_raw": fc, "fc": pca, "concat": concat, "emb": prep["emb"]}


def _split_rows(table, split_csv: Path) -> dict[str, list[str]]:
    import pandas as pd

    split = pd.read_csv(split_csv, dtype={"subject_id": str})
    of = dict(zip(split["subject_id"], split["split"]))
    from brainmm.align import table_subjects

    subjects = list(dict.fromkeys(table_subjects(table, "brain")))
    return {s: [x for x in subjects if of.get(x) == s] for s in ("train", "val", "test")}


def _subject_matrix(table, subjects: list[str]) -> np.ndarray:
    from brainmm.align import table_subjects

    subj = np.array(table_subjects(table, "t"))
    return np.stack([table.vectors[subj == s].mean(0) for s in subjects]).astype(np.float64)


def test_metrics(brain: np.ndarray, geno: np.ndarray) -> dict[str, float]:
    """Test R@1 and MRR brain -> genotype with 95 % bootstrap CIs and chance (rows paired)."""
    from alignment.retrieval import retrieval_report

    rep = retrieval_report(brain, geno, kway=None, n_boot=1000, seed=0)
    out = {}
    for r in rep.records:
        if r["direction"] == "brain_to_genetics" and r["metric"] in ("R@1", "R_at_1", "mrr"):
            key = "r1" if r["metric"] != "mrr" else "mrr"
            out.update({key: r["value"], f"{key}_lo": r["ci_low"], f"{key}_hi": r["ci_high"],
                        f"{key}_chance": r["chance"]})
    return out


def cca_row(name: str, brain_path: Any, geno_path: Path, split_csv: Path) -> dict[str, Any]:
    """PCA -> CCA with sizes chosen on val (alignment.baselines.select_cca), scored once on test."""
    from alignment.baselines import select_cca
    from brainmm.embeddings import EmbeddingTable

    t0 = time.perf_counter()
    b, g = EmbeddingTable.load(brain_path), EmbeddingTable.load(geno_path)
    rows = _split_rows(b, split_csv)
    mat = {s: (_subject_matrix(b, ids), g.subset(ids).vectors.astype(np.float64)) for s, ids in rows.items()}
    from alignment.retrieval import pair_ranks

    model = select_cca("cca", *mat["train"], *mat["val"], max_components=8)
    u, v = model.transform(*mat["test"])
    sel = model.selection_
    val_r1 = float(np.mean([(r == 0).mean() for r in pair_ranks(*model.transform(*mat["val"]))]))
    return {"method": name, "val": sel["val_mrr"], "val_kind": "mrr",
            "detail": f"pca {int(sel['pca_brain'])}/{int(sel['pca_genetics'])}, {int(sel['n_components'])} pairs, "
                      f"val R@1 {val_r1:.3f}",
            **test_metrics(u, v), "seconds": time.perf_counter() - t0}


def align_row(name: str, brain_path: Any, prep: dict[str, Any], uri: str, overrides: list[str],
              seed: int) -> dict[str, Any]:
    """`run_align` on table inputs (the demo's align section + overrides), test metrics of the best-val epoch."""
    from brainmm.align import AlignConfig, run_align
    from brainmm.config import apply_overrides, from_dict, to_dict
    from brainmm.embeddings import EmbeddingTable

    cfg = prep["cfg"]
    data = to_dict(cfg.align)
    data["towers"]["genetics"] = {"genotype": to_dict(deepcopy(cfg.genetics.genotype_mlp))}
    rest = [o for o in overrides if o != "genotype_table"]
    if "genotype_table" in overrides:
        data["towers"]["genetics"] = {}
    data.update(name=f"recipe-{name}", output_dir=str(prep["out"] / "recipes" / name))
    data["data"] = {"brain": str(brain_path), "genetics": {"genotype": str(prep["geno"])}, "split": str(prep["split"])}
    data["train"]["seed"] = seed
    data["tracking"].update(uri=uri, experiment="recipes")
    apply_overrides(data, rest)
    t0 = time.perf_counter()
    result = run_align(from_dict(AlignConfig, data))
    test = result.embeddings["test"]
    b, g = EmbeddingTable.load(test["brain"]), EmbeddingTable.load(test["genotype"])
    rows = _split_rows(b, prep["split"])["test"]
    return {"method": name, "val": result.metrics["val"]["score"], "val_kind": "R@1",
            "detail": f"epoch {result.metrics['best_epoch']}",
            **test_metrics(_subject_matrix(b, rows), g.subset(rows).vectors.astype(np.float64)),
            "seconds": time.perf_counter() - t0}


def fmt(n: int, seed: int, r: dict[str, Any]) -> str:
    return (f"| {n} | {seed} | {r['method']} | {r['val']:.3f} ({r['val_kind']}) | {r['r1']:.3f} "
            f"[{r['r1_lo']:.3f}, {r['r1_hi']:.3f}] | {r['mrr']:.3f} [{r['mrr_lo']:.3f}, {r['mrr_hi']:.3f}] | "
            f"{r['r1_chance']:.4f} | {r['detail']} | {r['seconds']:.0f} |")


HEADER = ("| N | seed | method | val score | test R@1 [95% CI] | test MRR [95% CI] | chance R@1 | chosen on val | s |\n"
          "|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[500])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/recipes")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names of RECIPES")
    p.add_argument("--fc-pca", type=float, default=64, help="FC PCA components (or variance share) for the heads")
    p.add_argument("--reuse", action="store_true", help="reuse a finished pipeline folder of the same N/seed in --out")
    p.add_argument("--baselines", default="cca,fc_cca", help="comma-separated: cca, fc_cca (or none)")
    p.add_argument("--pretrain", action="store_true", help="compare pretraining schedules instead (masked MSE)")
    p.add_argument("--pipeline", nargs="*", default=[], help="extra pipeline overrides (key=value)")
    p.add_argument("--schedules", default=",".join(PRETRAIN), help="with --pretrain: comma-separated PRETRAIN names")
    p.add_argument("--cca-screen", action="store_true",
                   help="compare input scalings of the CCA start instead (val MRR chooses; test read once)")
    args = p.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    from brainmm.runtime import set_quiet

    torch.set_num_threads(1)
    threadpool_limits(1)
    set_quiet(True)
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    if args.pretrain:
        return pretrain_schedules(args, root, uri)
    names = [r for r in args.recipes.split(",") if r]
    print("| N | seed | brain input | genotype input | val MRR | test R@1 | chosen on val |\n|---|---|---|---|---|---|---|"
          if args.cca_screen else HEADER, flush=True)
    timing = []
    for n in args.n:
        for seed in args.seeds:
            prep = prepare(n, seed, root, uri, args.pipeline, args.reuse)
            tables = brain_tables(prep, args.fc_pca)
            if args.cca_screen:
                cca_screen(n, seed, prep, tables)
                continue
            print(f"# stages n={n} seed={seed} {json.dumps(prep['stages'])} peak_rss_gb={_rss_gb():.2f} "
                  f"pretrain_test={json.dumps(prep['pretrain_test'])}", flush=True)
            baselines = {"cca": "emb", "fc_cca": "fc_raw"}
            rows = [cca_row(b, tables[baselines[b]], prep["geno"], prep["split"])
                    for b in args.baselines.split(",") if b in baselines]
            for r in rows:
                print(fmt(n, seed, r), flush=True)
            for name in names:
                brain, overrides = RECIPES[name]
                row = align_row(name, tables[brain], prep, uri, overrides, seed)
                rows.append(row)
                print(fmt(n, seed, row), flush=True)
            timing.append((n, seed, prep["stages"], prep["pretrain_test"]))
            with open(root / "results.jsonl", "a") as f:
                for r in rows:
                    f.write(json.dumps({"n": n, "seed": seed, **r}) + "\n")
                f.write(json.dumps({"n": n, "seed": seed, "stages": prep["stages"], "peak_rss_gb": _rss_gb(),
                                    "pretrain_test": prep["pretrain_test"]}) + "\n")
    print("\nStages, wall/CPU seconds (pretrain test masked MSE / mean / interpolation)")
    print("| N | seed | " + " | ".join(timing[0][2]) + " | peak RSS GB | pretrain MSE |")
    for n, seed, stages, pre in timing:
        cells = " | ".join(f"{v['wall_s']:.0f}/{v['cpu_s']:.0f}" for v in stages.values())
        mse = "/".join(f"{pre.get(k, float('nan')):.3f}" for k in ("masked_mse", "baseline_mean_mse",
                                                                    "baseline_interp_mse"))
        print(f"| {n} | {seed} | {cells} | {_rss_gb():.2f} | {mse} |")


def cca_screen(n: int, seed: int, prep: dict[str, Any], tables: dict[str, Any]) -> None:
    """PCA -> CCA (select_cca, sizes on val MRR) on brain and genotype inputs scaled four ways: per-feature z-scores
    (what `head.standardize: true` feeds the CCA start), block scaling (`brain_input_table`), or as they are."""
    from alignment.baselines import select_cca
    from brainmm.embeddings import EmbeddingTable
    from brainmm.pipeline.brain_inputs import block_scale

    emb, fc, concat = (EmbeddingTable.load(tables[k]) for k in ("emb", "fc", "concat"))
    geno = EmbeddingTable.load(prep["geno"])
    rows = _split_rows(emb, prep["split"])
    order = [s for s in ("train", "val", "test") for _ in rows[s]]

    def stacked(table) -> np.ndarray:
        return np.vstack([_subject_matrix(table, rows[s]) for s in ("train", "val", "test")])

    train = np.array([s == "train" for s in order])

    def zscore(x: np.ndarray) -> np.ndarray:
        return (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)

    raw_concat = np.hstack([stacked(emb), stacked(fc)])
    brains = {"concat z-scored": zscore(raw_concat), "concat block-scaled": stacked(concat),
              "fc_raw (fc_cca)": stacked(EmbeddingTable.load(tables["fc_raw"]))}
    g = np.vstack([geno.subset(rows[s]).vectors.astype(np.float64) for s in ("train", "val", "test")])
    genos = {"dosages": g, "dosages z-scored": zscore(g)}
    assert np.allclose(stacked(concat)[:, :emb.dim], block_scale(stacked(emb), train, {"block_scaling": {}}, "e"))
    cut = {s: np.array([o == s for o in order]) for s in ("train", "val", "test")}
    for gname, gx in genos.items():
        for bname, bx in brains.items():
            model = select_cca("cca", bx[cut["train"]], gx[cut["train"]], bx[cut["val"]], gx[cut["val"]], 8)
            t = test_metrics(*model.transform(bx[cut["test"]], gx[cut["test"]]))
            sel = model.selection_
            print(f"| {n} | {seed} | {bname} | {gname} | {sel['val_mrr']:.3f} | {t['r1']:.3f} | "
                  f"{int(sel['pca_brain'])}/{int(sel['pca_genetics'])}, {int(sel['n_components'])} pairs |", flush=True)


PRETRAIN = {  # name -> pipeline overrides of the pretrain stage (the demo's tiny model)
    "demo_100": [],
    "steps400": ["pretrain.train.max_steps=400"],
    "steps400_lr03": ["pretrain.train.max_steps=400", "pretrain.train.base_lr=0.3"],
    "steps400_mask05": ["pretrain.train.max_steps=400", "pretrain.model.mask_ratio=0.5"],
}


def pretrain_schedules(args: argparse.Namespace, root: Path, uri: str) -> None:
    """Test masked MSE of each schedule against the per-parcel mean and linear interpolation, with seconds."""
    from brainmm.config import load_config
    from brainmm.pipeline import PipelineConfig, run_pipeline

    print("| N | seed | schedule | masked MSE | mean baseline | interpolation | R^2 | pretrain wall s |\n"
          "|---|---|---|---|---|---|---|---|", flush=True)
    for n in args.n:
        for seed in args.seeds:
            for name in [x for x in args.schedules.split(",") if x]:
                extra = PRETRAIN[name]
                out = root / f"pretrain_n{n}_s{seed}_{name}"
                cfg = load_config(PipelineConfig, None, [
                    f"output_dir={out}", f"simulate.n_subjects={n}", f"simulate.seed={seed}",
                    f"pretrain.train.seed={1234 + seed}", "stages.embed=false", "stages.genetics=false",
                    "stages.align=false", "stages.evaluate=false", "align.data.brain=unused",
                    "align.data.genetics={g: unused}", f"tracking.uri={uri}", "tracking.experiment=recipes",
                    *args.pipeline, *extra])
                res = run_pipeline(cfg, overwrite=True)
                m = json.loads((out / "pretrain" / "metrics.json").read_text())["test"]
                print(f"| {n} | {seed} | {name} | {m['masked_mse']:.3f} | {m['baseline_mean_mse']:.3f} | "
                      f"{m['baseline_interp_mse']:.3f} | {m['r2']:.3f} | {res.stages['pretrain'].seconds:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
