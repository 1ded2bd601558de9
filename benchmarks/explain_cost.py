"""Cost of explain's permutation p-values (alignment.attribution.link_scores) on an edges-like table, two
comparisons, each against its reference on the same draws:
  --compare dtype:  float32 null products with the float64 recheck (the default) vs float64 products; the
                    p-values must be identical (asserted);
  --compare settle: features and units stopping once their BH decision at `--fdr` is settled (explain's default)
                    vs every undecided one running to the cap; the significant sets must be identical (asserted).

A connectivity-like table of V parcels (V(V-1)/2 edges) on n held-out subjects, r partner dimensions, parcels as
units (every edge in two). `--linked F`: a share F of the edges carries a planted link of strength uniform in
[0, 0.15] (the UKB-shape case: at N = 10,000, ~80 % of the model's 89,676 edges were significant and ran to the
cap); with F = 0 only parcels 0-2's edges are linked (their units never stop early: every member edge is needed in
every permutation up to the unit cap). The ratio of wall seconds is the speedup.

    OMP_NUM_THREADS=1 python benchmarks/explain_cost.py --compare dtype --parcels 120 --n 1500 --permutations 2000
    OMP_NUM_THREADS=1 python benchmarks/explain_cost.py --compare settle --parcels 200 --n 1500 --linked 0.8 \\
        --permutations 20000 --repeats 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def data(v: int, n: int, r: int, linked: float, seed: int) -> tuple[np.ndarray, np.ndarray, object]:
    """Edges [n, V(V-1)/2], partner [n, r] linked to some edges (see the module docstring), parcel membership."""
    from alignment.attribution import units_from_members

    rng = np.random.default_rng(seed)
    i, j = np.tril_indices(v, -1)
    x = rng.standard_normal((n, len(i)))
    z = rng.standard_normal((n, r))
    if linked > 0:
        driven = np.flatnonzero(rng.random(len(i)) < linked)
        x[:, driven] += rng.uniform(0, 0.15, len(driven)) * z[:, :1]
    else:
        driven = np.flatnonzero((i < 3) | (j < 3))
        x[:, driven] += 0.15 * z[:, :1]
    members = units_from_members([np.flatnonzero((i == p) | (j == p)) for p in range(v)], len(i))
    return x, z, members


def main() -> None:
    from alignment import attribution

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", choices=["dtype", "settle"], default="dtype")
    ap.add_argument("--parcels", type=int, default=120)
    ap.add_argument("--n", type=int, default=1500, help="held-out subjects")
    ap.add_argument("--dims", type=int, default=16, help="shared directions (explain.n_dims)")
    ap.add_argument("--linked", type=float, default=0.0, help="share of edges with a planted link (0: parcels 0-2)")
    ap.add_argument("--permutations", type=int, default=2000, help="n_permutations (units capped at the same)")
    ap.add_argument("--fdr", type=float, default=0.05, help="BH level of the settle rule (--compare settle)")
    ap.add_argument("--boot", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    x, z, members = data(args.parcels, args.n, args.dims, args.linked, 0)
    w = np.linspace(1.0, 0.1, args.dims)
    attribution.UNIT_PERMUTATIONS = args.permutations
    print(f"{x.shape[1]} edges x {args.n} subjects, {args.dims} dims, {args.parcels} parcels as units, "
          f"{args.permutations} permutations, {args.boot} bootstrap draws, --compare {args.compare}")
    runs = {"float64": {}, "float32": {}} if args.compare == "dtype" else {"to the cap": {}, "settled": {}}
    out, seconds = {}, {k: [] for k in runs}
    for _ in range(args.repeats):  # interleaved: a shared machine's load hits both alike
        for name in runs:
            attribution.NULL_DTYPE = np.float64 if name == "float64" else np.float32
            fdr = args.fdr if name == "settled" else None
            t0 = time.perf_counter()
            out[name] = attribution.link_scores(x, z, w, {"parcels": members}, args.permutations, args.boot, fdr=fdr)
            seconds[name].append(time.perf_counter() - t0)
            print(f"  {name:>10}: {seconds[name][-1]:7.1f} s", flush=True)
    ref, new = list(runs)
    for k in ("features", "parcels"):
        if args.compare == "dtype":
            np.testing.assert_array_equal(out[new][k].pvalue, out[ref][k].pvalue)
        else:
            sig = [out[name][k].qvalue <= args.fdr for name in runs]
            np.testing.assert_array_equal(*sig)
            print(f"  {k}: {int(sig[0].sum())} of {len(sig[0])} significant at BH {args.fdr} in both runs")
    same = "identical p-values" if args.compare == "dtype" else "identical significant sets"
    print(f"  {same} (edges and parcels); speedup {ref} / {new} (best of {args.repeats}): "
          f"{min(seconds[ref]) / min(seconds[new]):.2f}x")


if __name__ == "__main__":
    main()
