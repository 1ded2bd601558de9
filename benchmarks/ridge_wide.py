"""Cost of the ridge baselines from a wide source (genotypes -> brain table and -> FC PCA scores, the same training
rows): `RidgeMap("genetics_to_brain")` (dual form from one shared Gram eigendecomposition, `WideRidge`) against
sklearn's StandardScaler + RidgeCV per map (the reference: its own Gram eigendecomposition each time). Same data,
interleaved; the alphas must be equal and the predictions equal to rounding (asserted).

    OMP_NUM_THREADS=1 python benchmarks/ridge_wide.py --n 3000 --variants 10000 --repeats 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from alignment import baselines
    from alignment.baselines import RIDGE_ALPHAS, RidgeMap

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="training subjects")
    ap.add_argument("--variants", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    d = rng.binomial(2, rng.uniform(0.05, 0.5, args.variants), size=(args.n, args.variants)).astype(np.float64)
    brain = d[:, :100] @ rng.normal(size=(100, 64)) * 0.05 + rng.normal(size=(args.n, 64))
    fc = brain @ rng.normal(size=(64, 256)) + rng.normal(size=(args.n, 256))
    print(f"{args.n} subjects x {args.variants} variants -> brain (64) and FC scores (256)")
    seconds: dict[str, list[float]] = {"RidgeCV per map": [], "shared Gram": []}
    out = {}
    for _ in range(args.repeats):
        for name in seconds:
            baselines._GRAMS.clear()
            t0 = time.perf_counter()
            if name == "shared Gram":
                out[name] = [RidgeMap("genetics_to_brain").fit(t, d).model_ for t in (brain, fc)]
            else:
                out[name] = [make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(d, t)
                             for t in (brain, fc)]
            seconds[name].append(time.perf_counter() - t0)
            print(f"  {name:>15}: {seconds[name][-1]:7.1f} s", flush=True)
    for ref, got, t in zip(out["RidgeCV per map"], out["shared Gram"], (brain, fc)):
        assert ref[-1].alpha_ == got[-1].alpha_
        np.testing.assert_allclose(got.predict(d[:100]), ref.predict(d[:100]), rtol=0, atol=1e-8 * np.abs(t).max())
    print(f"  equal alphas and predictions; speedup (best of {args.repeats}): "
          f"{min(seconds['RidgeCV per map']) / min(seconds['shared Gram']):.2f}x")


if __name__ == "__main__":
    main()
