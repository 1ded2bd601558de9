"""Cost of the probes' grouped ridge head (`alignment.probes.FoldRidgeCV`: each inner fold's whole alpha path from
one eigendecomposition) against sklearn's RidgeCV with the same folds (a grid search: one Ridge solve per alpha and
fold), on row-space-sized inputs (a probe fold of 3,000 subjects: ~2,400 training rows x ~2,400 coordinates,
families of two, 3 inner folds). Interleaved; the alphas and predictions must agree (asserted).

    OMP_NUM_THREADS=1 python benchmarks/fold_ridge.py --n 2400 --dim 2400 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold

    from alignment.probes import FoldRidgeCV
    from alignment.stats import RIDGE_ALPHAS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2400, help="training rows of the probe fold")
    ap.add_argument("--dim", type=int, default=2400, help="columns (row-space coordinates)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.dim))
    y = x[:, :20].sum(axis=1) * 0.1 + rng.normal(size=args.n)
    cv = list(GroupKFold(n_splits=3).split(x, y, np.arange(args.n) // 2))
    print(f"{args.n} rows x {args.dim} columns, 3 inner folds, {len(RIDGE_ALPHAS)} alphas")
    seconds: dict[str, list[float]] = {"RidgeCV": [], "FoldRidgeCV": []}
    out = {}
    for _ in range(args.repeats):
        for name, cls in (("RidgeCV", RidgeCV), ("FoldRidgeCV", FoldRidgeCV)):
            t0 = time.perf_counter()
            out[name] = cls(alphas=RIDGE_ALPHAS, cv=cv).fit(x, y)
            seconds[name].append(time.perf_counter() - t0)
            print(f"  {name:>11}: {seconds[name][-1]:6.2f} s", flush=True)
    assert out["RidgeCV"].alpha_ == out["FoldRidgeCV"].alpha_
    np.testing.assert_allclose(out["FoldRidgeCV"].predict(x[:50]), out["RidgeCV"].predict(x[:50]), rtol=1e-9,
                               atol=1e-9)
    print(f"  same alpha ({out['RidgeCV'].alpha_:g}) and predictions; speedup (best of {args.repeats}): "
          f"{min(seconds['RidgeCV']) / min(seconds['FoldRidgeCV']):.2f}x")


if __name__ == "__main__":
    main()
