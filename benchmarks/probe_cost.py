"""Cost of evaluate's linear probes on a wide (genotype-like) representation: the probes as they run now (each
outer fold residualised, scaled and reduced to the training rows' row space once per representation and shared by
every target and permutation that uses it; residuals through the design's SVD) against the reference that
prepares every fold again for every target and every permuted run, with lstsq residuals (the probes' cost before
this change; the permuted runs' folds are the same in both). Same data, interleaved runs; the results must agree
to rounding (asserted).

Shape of N = 10,000 at UK Biobank shape: ~3,000 probe subjects (val + test) x 20,000 variants, targets age
(regression) and two binary ones, 6 confound columns, 1 permutation per probe (the pipeline's setting).

    OMP_NUM_THREADS=1 python benchmarks/probe_cost.py --n 3000 --variants 20000 --permutations 1 --repeats 1
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np
import pandas as pd


def reference_folds(task, x, y, groups, n_splits, seed, confounds, cache):  # type: ignore[no-untyped-def]
    """The probes before this change: every fold prepared anew (lstsq residuals), nothing shared."""
    from alignment import probes

    def residuals(x, confounds, train, test):  # type: ignore[no-untyped-def]
        design = np.hstack([np.ones((len(confounds), 1)), confounds])
        coef = np.linalg.lstsq(design[train], x[train], rcond=None)[0]
        return x[train] - design[train] @ coef, x[test] - design[test] @ coef

    with mock.patch.object(probes, "fold_residuals", residuals):
        return [(tr, te, *probes._prepare(x, confounds, tr, te))
                for tr, te in probes._outer_splits(task, y, groups, n_splits, seed)]


def main() -> None:
    from alignment import probes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="probe subjects")
    ap.add_argument("--variants", type=int, default=20000)
    ap.add_argument("--permutations", type=int, default=1, help="probes.n_permutations")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.binomial(2, rng.uniform(0.05, 0.5, args.variants), size=(args.n, args.variants)).astype(np.float64)
    confounds = rng.normal(size=(args.n, 6))
    table = pd.DataFrame({"subject_id": [f"s{i}" for i in range(args.n)],
                          "age": x[:, :50].sum(axis=1) * 0.05 + rng.normal(size=args.n),
                          "case": x[:, 50:100].sum(axis=1) * 0.05 + rng.normal(size=args.n),
                          "sex": rng.integers(0, 2, args.n)})
    table["case"] = (table["case"] > table["case"].median()).astype(int)
    kw = {"n_splits": 5, "n_boot": 200, "n_permutations": args.permutations, "seed": 0, "confounds": confounds,
          "adjusted": ["genetics"]}
    print(f"{args.n} subjects x {args.variants} variants, targets age/case/sex, {args.permutations} permutation(s)")
    seconds: dict[str, list[float]] = {"reference": [], "shared folds": []}
    out = {}
    for _ in range(args.repeats):
        for name in seconds:
            patch = mock.patch.object(probes, "_folds", reference_folds) if name == "reference" else mock.MagicMock()
            with patch:
                t0 = time.perf_counter()
                out[name] = probes.probe_representations({"genetics": x}, table, ["age", "case", "sex"], **kw)
                seconds[name].append(time.perf_counter() - t0)
            print(f"  {name:>12}: {seconds[name][-1]:7.1f} s", flush=True)
    for a, b in zip(out["reference"].records, out["shared folds"].records):
        assert (a["target"], a["metric"]) == (b["target"], b["metric"])
        np.testing.assert_allclose([a["value"], a["perm_mean"]], [b["value"], b["perm_mean"]], rtol=1e-6, atol=1e-6)
        print(f"  {a['target']:>4} {a['metric']:>17}: {b['value']:.4f} (permuted {b['perm_mean']:.4f})")
    print(f"  equal results; speedup reference / shared folds (best of {args.repeats}): "
          f"{min(seconds['reference']) / min(seconds['shared folds']):.2f}x")


if __name__ == "__main__":
    main()
