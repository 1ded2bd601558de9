"""Cost of explain's permutation p-values (alignment.attribution.link_scores) on an edges-like table: float32 null
products with the float64 recheck (the default) against the float64 products (the reference), same draws.

A connectivity-like table of V parcels (V(V-1)/2 edges) on n held-out subjects, r partner dimensions, parcels as
units (every edge in two); a few parcels' edges carry a planted link so that their units never stop early (the
expensive case: every member edge is needed in every permutation up to the unit cap). Both runs must give the
same p-values (asserted); the ratio of wall seconds is the speedup.

    OMP_NUM_THREADS=1 python benchmarks/explain_cost.py --parcels 120 --n 1500 --permutations 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def data(v: int, n: int, r: int, seed: int) -> tuple[np.ndarray, np.ndarray, object]:
    """Edges [n, V(V-1)/2], partner [n, r] linked to the edges of parcels 0-2, parcel membership."""
    from alignment.attribution import units_from_members

    rng = np.random.default_rng(seed)
    i, j = np.tril_indices(v, -1)
    x = rng.standard_normal((n, len(i)))
    driven = np.flatnonzero((i < 3) | (j < 3))
    z = rng.standard_normal((n, r))
    x[:, driven] += 0.15 * z[:, :1]
    members = units_from_members([np.flatnonzero((i == p) | (j == p)) for p in range(v)], len(i))
    return x, z, members


def main() -> None:
    from alignment import attribution

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parcels", type=int, default=120)
    ap.add_argument("--n", type=int, default=1500, help="held-out subjects")
    ap.add_argument("--dims", type=int, default=16, help="shared directions (explain.n_dims)")
    ap.add_argument("--permutations", type=int, default=2000, help="n_permutations (units capped at the same)")
    ap.add_argument("--boot", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    x, z, members = data(args.parcels, args.n, args.dims, 0)
    w = np.linspace(1.0, 0.1, args.dims)
    attribution.UNIT_PERMUTATIONS = args.permutations
    print(f"{x.shape[1]} edges x {args.n} subjects, {args.dims} dims, {args.parcels} parcels as units, "
          f"{args.permutations} permutations, {args.boot} bootstrap draws")
    out, seconds = {}, {"float64": [], "float32": []}
    for _ in range(args.repeats):  # interleaved: a shared machine's load hits both alike
        for dtype in (np.float64, np.float32):
            attribution.NULL_DTYPE = dtype
            t0 = time.perf_counter()
            out[dtype.__name__] = attribution.link_scores(x, z, w, {"parcels": members}, args.permutations, args.boot)
            seconds[dtype.__name__].append(time.perf_counter() - t0)
            print(f"  null products in {dtype.__name__}: {seconds[dtype.__name__][-1]:7.1f} s", flush=True)
    for k in ("features", "parcels"):
        np.testing.assert_array_equal(out["float32"][k].pvalue, out["float64"][k].pvalue)
    print(f"  identical p-values (edges and parcels); speedup float64 / float32+recheck (best of {args.repeats}): "
          f"{min(seconds['float64']) / min(seconds['float32']):.2f}x")


if __name__ == "__main__":
    main()
