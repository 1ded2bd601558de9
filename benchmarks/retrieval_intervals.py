"""Coverage of the retrieval intervals and level of the permutation test, on null and weak-signal tables.

For each N: `draws` independent tables (two 16-D Gaussian tables; brain -> genetics; null: unrelated, weak: genetics
= rho * brain + noise). Per metric and side, the rate at which the 95 % interval excludes the true value (null:
the exact chance; weak: the mean over `truth_draws` further independent tables) for the both-sides subject
bootstrap (`alignment.intervals`, what `retrieval_report` prints) and, as the reference measured in the same run,
the old query-only bootstrap with Wilson intervals for R@k (`bootstrap_rank_metrics`). Plus the rate of MRR
permutation p < 0.05 (null: the false-positive rate; weak: power).

    OMP_NUM_THREADS=2 python benchmarks/retrieval_intervals.py --n 150 1500 15000 --draws 200 200 10 \
        --truth-draws 1000 200 10 --boot 200 --perm 1000

    # families: sibling pairs, resampled and shuffled whole
    OMP_NUM_THREADS=1 python benchmarks/retrieval_intervals.py --n 150 --draws 200 --rho 0 --families 1.2 --perm 199

Results: benchmarks/retrieval_intervals.md.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from scipy.stats import binom

from alignment.intervals import both_sides_intervals
from alignment.ranks import as_embeddings, pair_ranks
from alignment.retrieval import bootstrap_rank_metrics, chance_metrics, rank_metrics
from alignment.significance import retrieval_pvalues

KS = (1, 5, 10)
METRICS = ("R_at_1", "R_at_10", "mrr", "mean_rank", "median_rank")


SEED = 0  # offset of the table seeds (--seed): more draws at a size without repeating tables
FAMILY = 0  # > 0: subjects come in sibling pairs sharing this much family structure on each side (--families)


def table(rng: np.random.Generator, n: int, rho: float, dim: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One brain / genetics table pair (unit rows)."""
    x = rng.standard_normal((n, dim))
    g = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((n, dim))
    if FAMILY:
        pairs = np.arange(n) // 2
        x = x + FAMILY * rng.standard_normal((n // 2 + 1, dim))[pairs]
        g = g + FAMILY * rng.standard_normal((n // 2 + 1, dim))[pairs]
    return as_embeddings(x, "brain", device=device), as_embeddings(g, "genetics", device=device)


def truth(n: int, rho: float, draws: int, dim: int, device: str, seed: int) -> dict[str, float]:
    """The expected metric at pool size n: exact chance (null) or the mean over independent tables."""
    if rho == 0:
        return chance_metrics(n, 1, KS)
    rng = np.random.default_rng(seed)
    values = [rank_metrics(pair_ranks(*table(rng, n, rho, dim, device), normalize=False)[0], KS) for _ in range(draws)]
    return {k: float(np.mean([v[k] for v in values])) for k in values[0]}


def run(n: int, rho: float, draws: int, truth_draws: int, boot: int, perm: int, dim: int, device: str) -> dict:
    """Exclusion rates per side for both interval methods and the MRR permutation rejection rate."""
    target = truth(n, rho, truth_draws, dim, device, seed=10_000 + n)
    rng = np.random.default_rng(n + SEED)
    counts = {m: {"new": [0, 0], "old": [0, 0]} for m in METRICS}
    rejected = 0
    start = time.perf_counter()
    codes = np.arange(n)
    families = codes // 2 if FAMILY else None
    for d in range(draws):
        q, g = table(rng, n, rho, dim, device)
        new = both_sides_intervals(q, g, codes, codes, ks=KS, n_boot=boot, seed=d, families=families)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old = bootstrap_rank_metrics(pair_ranks(q, g, normalize=False)[0], families, ks=KS, n_boot=boot, seed=d)
        for m in METRICS:
            for name, ci in (("new", new[m]), ("old", old[m])):
                counts[m][name][0] += ci[0] > target[m]
                counts[m][name][1] += ci[1] < target[m]
        if perm:
            rejected += retrieval_pvalues(q, g, ks=KS, n_perm=perm, clusters=families,
                                          seed=d)["brain_to_genetics"]["mrr"] < 0.05
    seconds = time.perf_counter() - start
    band = [float(binom.ppf(q, draws, 0.025) / draws) for q in (0.005, 0.995)]
    p_band = [float(binom.ppf(q, draws, 0.05) / draws) for q in (0.005, 0.995)]
    return {"n": n, "rho": rho, "draws": draws, "truth_draws": truth_draws if rho else 0, "boot": boot, "perm": perm,
            "truth": {m: target[m] for m in METRICS}, "seconds": seconds, "band_2.5%": band, "band_5%": p_band,
            "p_lt_0.05": rejected / draws if perm else None,
            "rates": {m: {k: [v[0] / draws, v[1] / draws] for k, v in c.items()} for m, c in counts.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[150, 1500, 15000])
    ap.add_argument("--draws", type=int, nargs="+", default=[200, 200, 10])
    ap.add_argument("--truth-draws", type=int, nargs="+", default=[1000, 200, 10])
    ap.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.15])
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--perm", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="")
    ap.add_argument("--seed", type=int, default=0, help="offset of the table seeds")
    ap.add_argument("--families", type=float, default=0.0,
                    help="sibling pairs with this much shared family structure per side (resampled / shuffled whole)")
    args = ap.parse_args()
    global FAMILY, SEED
    FAMILY, SEED = args.families, args.seed
    results = []
    for n, draws, tdraws in zip(args.n, args.draws, args.truth_draws):
        for rho in args.rho:
            res = run(n, rho, draws, tdraws, args.boot, args.perm, args.dim, args.device)
            results.append(res)
            print(f"\nN = {n}, rho = {rho}: {draws} draws ({res['seconds']:.0f} s), 99 % band of 2.5 %: "
                  f"[{res['band_2.5%'][0]:.3f}, {res['band_2.5%'][1]:.3f}]; MRR p < 0.05: {res['p_lt_0.05']}")
            print("| metric | truth | both-sides bootstrap: above / below | query-only (old): above / below |")
            print("|---|---|---|---|")
            for m, r in res["rates"].items():
                print(f"| {m} | {res['truth'][m]:.4g} | {r['new'][0]:.3f} / {r['new'][1]:.3f} | "
                      f"{r['old'][0]:.3f} / {r['old'][1]:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
