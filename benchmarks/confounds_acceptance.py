"""Issue-14 acceptance scenario with the confound LIBRARY only (no align/evaluate wiring): does confound
adjustment remove a brain<->genetics retrieval score made by population structure, and keep a planted one?

Per seed, a simulated cohort (`brainmm.data.simulate`) with strong confounding: 3 Balding-Nichols ancestry groups
(F_ST 0.1) scanned mostly at their own site (site_association 0.9, 3 sites) and a non-genetic group effect on the
brain (brain_effect 1.0); `effects.effect_size` 0 (no genetic link) or 1 (the default link). Features per subject:
brain = log-variance per parcel + Fisher-z FC upper triangle; genetics = QC'd, train-mean-imputed dosages.
Family-grouped split 60/20/20. Genetic PCs (plink2 formula, fitted on train, projected for val/test).
Linear model: `alignment.baselines.select_cca` (per-view PCA -> CCA; PCA size and pairs chosen on val), test
retrieval in its space. Adjusted = both modalities residualised (`alignment.confounds.Residualiser`, fitted on
train) on age, sex, site and the genetic PCs before CCA. Also: the `confounds_only` baseline and within-site /
within-ancestry-cluster retrieval (`alignment.stratified`). Pooled rows: ranks of all seeds together, bootstrap
over (seed, subject), chance = mean over queries of 1/N.

    OMP_NUM_THREADS=1 python benchmarks/confounds_acceptance.py [--subjects 400] [--seeds 5] [--pcs 10]
        [--effects 0 1] [--no-population]

`--heads`: the acceptance test's procedure (tests/test_confounds_app.py: `brainmm align`, heads only, on a brain
feature table and a genotype-matrix table; 5 PCs by default there). `--app`: the same scenario through the application instead: per seed and effect, `brainmm demo` with
`confounds.covariates=[age,sex,site] confounds.genetic_pcs=<pcs>` (PCs computed by the pipeline, fitted on train;
the trained contrastive model on frozen BrainLM embeddings and a genotype MLP tower; evaluate's unadjusted
comparison run, confounds_only and within-stratum retrieval). Pooled rows from the test embeddings of the adjusted
align run and of the unadjusted run. Extra demo overrides: `--set key=value ...`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from alignment.baselines import select_cca
from alignment.confounds import ConfoundSpace, Residualiser
from alignment.retrieval import DIRECTIONS, bootstrap_rank_metrics, chance_metrics, pair_ranks, rank_metrics
from alignment.stratified import AncestryClusters, within_stratum_report
from brainmm.config import load_config
from brainmm.data.simulate import SimulationConfig, simulate_cohort
from brainmm.data.simulate.power import recording_features
from brainmm.data.splits import make_split

CONFOUNDING = ["population.n_groups=3", "population.fst=0.1", "population.site_association=0.9",
               "population.brain_effect=1.0", "sites.n_sites=3"]


def genetic_pcs(dos: np.ndarray, train: np.ndarray, n_pcs: int) -> np.ndarray:
    """plink2 --pca formula: z = (x - 2p) / sqrt(2p(1-p)), p from train, missing -> 0; train SVD, all projected."""
    called = np.isfinite(dos)
    p = np.where(called[train], dos[train], 0).sum(0) / np.maximum(2 * called[train].sum(0), 1)
    keep = (np.minimum(p, 1 - p) >= 0.01) & (called[train].mean(0) >= 0.9)
    z = np.where(called[:, keep], (dos[:, keep] - 2 * p[keep]) / np.sqrt(2 * p[keep] * (1 - p[keep])), 0.0)
    _, _, vt = np.linalg.svd(z[train], full_matrices=False)
    return z @ vt[:n_pcs].T


def features(folder: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Subject table (cohort.csv, one row per subject), brain features, raw dosages (NaN = missing)."""
    cohort = pd.read_csv(folder / "cohort.csv", dtype={"subject_id": str}).drop_duplicates("subject_id")
    brain = np.stack([recording_features(np.load(folder / f)) for f in cohort["file"]])
    with np.load(folder / "genotypes.npz") as npz:
        order = pd.Index([str(s) for s in npz["subject_ids"]]).get_indexer(cohort["subject_id"])
        dos = npz["dosages"].astype(np.float64)[order]
    return cohort.reset_index(drop=True), brain, dos


def impute(dos: np.ndarray, train: np.ndarray) -> np.ndarray:
    """QC on train (MAF >= 0.01, call rate >= 0.9) and train-mean imputation."""
    called = np.isfinite(dos)
    mean = np.where(called[train], dos[train], 0).sum(0) / np.maximum(called[train].sum(0), 1)
    keep = (np.minimum(mean, 2 - mean) / 2 >= 0.01) & (called[train].mean(0) >= 0.9)
    return np.where(called, dos, mean)[:, keep]


def cca_ranks(brain: np.ndarray, genes: np.ndarray, idx: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Test ranks (brain->genetics, genetics->brain) and test canonical scores of the val-selected CCA."""
    model = select_cca("cca", brain[idx["train"]], genes[idx["train"]], brain[idx["val"]], genes[idx["val"]])
    u, v = model.transform(brain[idx["test"]], genes[idx["test"]])
    fwd, bwd = pair_ranks(u, v)
    return fwd, bwd, u, v


def one_seed(folder: Path, seed: int, n_pcs: int) -> list[dict]:
    cohort, brain, dos = features(folder)
    split = make_split(cohort["subject_id"], cohort["family"], (0.6, 0.2, 0.2), seed=seed)
    which = split.set_index("subject_id").loc[cohort["subject_id"], "split"].to_numpy()
    idx = {s: np.flatnonzero(which == s) for s in ("train", "val", "test")}
    genes = impute(dos, idx["train"])
    pcs = genetic_pcs(dos, idx["train"], n_pcs)
    cov = cohort[["age", "sex", "site"]].copy()
    names = [f"pc{i + 1}" for i in range(n_pcs)]
    cov[names] = pcs
    columns = ["age", "sex", "site", *names]
    rows: list[dict] = []

    def add(kind: str, fwd: np.ndarray, chance: dict[str, float]) -> None:
        rows.append({"seed": seed, "kind": kind, "ranks": fwd, "chance": chance})

    full = chance_metrics(len(idx["test"]))
    fwd, _, u, v = cca_ranks(brain, genes, idx)
    add("unadjusted", fwd, full)
    tr = idx["train"]
    rb = Residualiser(columns).fit(brain[tr], cov.iloc[tr]).transform(brain, cov)
    rg = Residualiser(columns).fit(genes[tr], cov.iloc[tr]).transform(genes, cov)
    fwd_a, _, ua, va = cca_ranks(rb, rg, idx)
    add("adjusted", fwd_a, full)
    space = ConfoundSpace(columns).fit(brain[tr], genes[tr], cov.iloc[tr])  # the confounds_only baseline
    add("confounds_only", pair_ranks(*space.transform(brain[idx["test"]], genes[idx["test"]]))[0], full)
    clusters = AncestryClusters(max_clusters=6, seed=seed).fit(pcs[tr, :4]).predict(pcs[idx["test"], :4])
    site = cohort["site"].to_numpy()[idx["test"]]
    for label, strata in (("site", site), ("ancestry_cluster", clusters)):
        for kind, (a, b) in (("unadjusted", (u, v)), ("adjusted", (ua, va))):
            rep = within_stratum_report(a, b, strata, name=label, n_boot=10)
            chance = {x["metric"]: x["chance"] for x in rep.records if x["direction"] == DIRECTIONS[0]}
            add(f"{kind} within {label}", rep.ranks[(DIRECTIONS[0], f"within_{label}")], chance)
    truth = cohort.get("ancestry", cohort["site"]).to_numpy()[idx["test"]]
    rows[-1]["clusters"] = len(np.unique(clusters))
    rows[-1]["cluster_purity"] = float(pd.crosstab(clusters, truth).max(axis=1).sum() / len(truth))
    return rows


def summarise(rows: list[dict], n_boot: int) -> pd.DataFrame:
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        sel = [r for r in rows if r["kind"] == kind]
        per_seed = [rank_metrics(r["ranks"])["R_at_1"] for r in sel]
        ranks = np.concatenate([r["ranks"] for r in sel])
        clusters = np.concatenate([np.full(len(r["ranks"]), i) * 100000 + np.arange(len(r["ranks"]))
                                   for i, r in enumerate(sel)])
        point = rank_metrics(ranks)
        ci = bootstrap_rank_metrics(ranks, clusters, n_boot=n_boot, seed=0)
        # chance of the pooled queries: mean over queries (strata: already a per-seed mean over queries)
        weights = [len(r["ranks"]) for r in sel]
        chance, chance_mrr = (float(np.average([r["chance"][m] for r in sel], weights=weights))
                              for m in ("R_at_1", "mrr"))
        out.append({
            "retrieval (brain->genetics, test)": kind,
            "R@1 per seed": " ".join(f"{x:.3f}" for x in per_seed),
            "pooled R@1": f"{point['R_at_1']:.3f} [{ci['R_at_1'][0]:.3f}, {ci['R_at_1'][1]:.3f}]",
            "chance": f"{chance:.3f}",
            "x chance": f"{point['R_at_1'] / chance:.1f}",
            "above chance": ci["R_at_1"][0] > chance,
            "pooled MRR": "-" if "summary only" in kind else
            f"{point['mrr']:.3f} [{ci['mrr'][0]:.3f}, {ci['mrr'][1]:.3f}]",
            "MRR chance": f"{chance_mrr:.3f}",
        })
    return pd.DataFrame(out)


def print_table(table: pd.DataFrame) -> None:
    """A summarise() table as markdown on stdout."""
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for values in table.itertuples(index=False):
        print("| " + " | ".join(str(x) for x in values) + " |", flush=True)


def app_rows(folder: Path, seed: int) -> list[dict]:
    """Pooled-table rows of one finished demo: adjusted / unadjusted test ranks, within-stratum ranks, confounds_only."""
    from brainmm.align import table_subjects
    from brainmm.embeddings import EmbeddingTable

    rows: list[dict] = []
    for kind, run in (("unadjusted", folder / "evaluate" / "unadjusted" / "align"), ("adjusted", folder / "align")):
        brain = EmbeddingTable.load(run / "embeddings" / "test" / "brain")  # one recording per subject (demo)
        genes = EmbeddingTable.load(run / "embeddings" / "test" / "genotype")
        genes = genes.subset(table_subjects(brain, "brain"))
        rows.append({"seed": seed, "kind": kind, "ranks": pair_ranks(brain.vectors, genes.vectors)[0],
                     "chance": chance_metrics(len(brain.ids))})
    table = pd.read_csv(folder / "evaluate" / "metrics.csv").set_index("name")
    for name, kind in (("baseline/confounds_only/brain_to_genotype", "confounds_only (summary only)"),
                       ("retrieval/within_site/brain_to_genotype", "adjusted within site (summary only)"),
                       ("retrieval/unadjusted/within_site/brain_to_genotype", "unadjusted within site (summary only)"),
                       ("retrieval/within_ancestry_cluster/brain_to_genotype",
                        "adjusted within ancestry_cluster (summary only)")):
        if f"{name}/R_at_1" in table.index:
            r1, n = table.loc[f"{name}/R_at_1"], int(table.loc[f"{name}/R_at_1", "n"])
            hits = int(round(r1["value"] * n))  # R@1 is a share of queries: rebuild 0/1 "ranks" for pooling
            rows.append({"seed": seed, "kind": kind, "ranks": np.r_[np.zeros(hits, int), np.full(n - hits, 10**6)],
                         "chance": {"R_at_1": r1["chance"], "mrr": table.loc[f"{name}/mrr", "chance"]}})
    return rows


def run_heads(args: argparse.Namespace) -> None:
    """`--heads`: the procedure of tests/test_confounds_app.py (the `brainmm align` heads-only path on a brain
    feature table and a genotype-matrix table; adjusted = age, sex, site + `--pcs` genetic PCs fitted on train)."""
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_confounds_app import APP_HEADS, align_config, build_inputs, test_ranks

    from brainmm.align import run_align

    base = Path(tempfile.mkdtemp(prefix="confounds-heads-"))
    uri = f"sqlite:///{base / 'mlflow.db'}"
    try:
        for effect in args.effects:
            rows = []
            for seed in range(args.seeds):
                inputs = build_inputs(base / f"e{effect}_s{seed}", seed, effect, args.subjects, args.pcs)
                for adjusted in (False, True):
                    cfg = align_config(inputs, adjusted, uri, extra=[*APP_HEADS, *args.set])
                    ranks = test_ranks(run_align(cfg))
                    rows.append({"seed": seed, "kind": "adjusted" if adjusted else "unadjusted", "ranks": ranks,
                                 "chance": chance_metrics(len(ranks))})
            print(f"\n## heads-only app path: effects.effect_size={effect}, {args.subjects} subjects, "
                  f"seeds 0-{args.seeds - 1}, {args.pcs} PCs\n")
            print_table(summarise(rows, args.boot))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_app(args: argparse.Namespace) -> None:
    """`--app`: one `brainmm demo` per seed and effect, pooled like the library rows."""
    from brainmm.pipeline import PipelineConfig, run_pipeline

    base = Path(tempfile.mkdtemp(prefix="confounds-app-"))
    scenario = [f"simulate.{x}" for x in CONFOUNDING]
    for effect in args.effects:
        rows = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            out = base / f"e{effect}_s{seed}"
            cfg = load_config(PipelineConfig, None, [
                f"output_dir={out}", f"tracking.uri=sqlite:///{base / 'mlflow.db'}", f"simulate.seed={seed}",
                f"simulate.n_subjects={args.subjects}", f"simulate.effects.effect_size={effect}", *scenario,
                "confounds.covariates=[age,sex,site]", f"confounds.genetic_pcs={args.pcs}", *args.set])
            t0 = time.perf_counter()
            run_pipeline(cfg)
            rows += app_rows(out, seed)
            print(f"effect {effect} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"\n## app: effects.effect_size={effect}, {args.subjects} subjects, seeds {args.first_seed}-"
              f"{args.first_seed + args.seeds - 1}, "
              f"{args.pcs} PCs\n")
        print_table(summarise(rows, args.boot))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pcs", type=int, default=10)
    parser.add_argument("--boot", type=int, default=2000)
    parser.add_argument("--effects", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--no-population", action="store_true",
                        help="reference: same cohorts without population structure (1 group, 3 sites)")
    parser.add_argument("--app", action="store_true", help="through `brainmm demo` with confounds (see above)")
    parser.add_argument("--set", nargs="*", default=[], help="extra demo overrides (with --app) or align overrides (with --heads)")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed (with --app)")
    parser.add_argument("--heads", action="store_true", help="the acceptance test's heads-only `brainmm align` path")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.heads:
        run_heads(args)
        print(f"\n{time.perf_counter() - start:.0f} s")
        return
    if args.app:
        run_app(args)
        print(f"\n{time.perf_counter() - start:.0f} s")
        return
    with tempfile.TemporaryDirectory() as tmp:
        scenario = ["sites.n_sites=3"] if args.no_population else CONFOUNDING
        for effect in args.effects:
            rows = []
            for seed in range(args.seeds):
                cfg = load_config(SimulationConfig, None, [f"seed={seed}", f"n_subjects={args.subjects}",
                                                            f"effects.effect_size={effect}", *scenario])
                folder = simulate_cohort(cfg, Path(tmp) / f"e{effect}_s{seed}")
                rows += one_seed(folder, seed, args.pcs)
            clusters = [r.get("clusters") for r in rows if "clusters" in r]
            purity = [r.get("cluster_purity") for r in rows if "cluster_purity" in r]
            print(f"\n## effects.effect_size={effect}{' (no population structure)' * args.no_population}, "
                  f"{args.subjects} subjects, seeds 0-{args.seeds - 1} "
                  f"(ancestry clusters per seed {clusters}, purity {np.round(purity, 2).tolist()})\n")
            print_table(summarise(rows, args.boot))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
