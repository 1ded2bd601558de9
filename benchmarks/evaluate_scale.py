"""Benchmark: `brainmm evaluate` at the UK Biobank connectivity shape (424 parcels: 89,676 FC edges) and N subjects.

    python benchmarks/evaluate_scale.py [--subjects 2000] [--fc-pca 256 0] [--epochs 30] [--workdir DIR]

Synthetic cohort with a planted brain-genetics link: a latent z [N, 8] drives the connectivity table [N, 89,676]
(float32, low rank + noise), the align brain table (the FC-only path's 64 train-fitted PCA scores of it) and a
genetics table [N, 128]. One CLIP alignment (table towers, `configs/align_clip.yaml` with `--epochs`, patience 5),
then `brainmm evaluate` in a subprocess with the defaults of `configs/evaluate.yaml` (every baseline incl. fc_cca,
fc_pls, fc_ridge on data.brain_fc, 1,000 bootstrap resamples and permutations, figures, the shuffled-pair control
at `control_epochs: 0`), probes off (no phenotypes), explain off (its cost is measured in docs/explain.md). Printed:
wall and CPU seconds and peak RSS of the evaluate process for each `baselines.fc_pca` given (0 = the old path on all
edges), the seconds per evaluation section (result.json) and the main alignment's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARCELS = 424
EDGES = PARCELS * (PARCELS - 1) // 2
REPO = Path(__file__).resolve().parents[1]


def make_tables(root: Path, n: int) -> dict[str, str]:
    """Connectivity, brain (FC PCA-64, train fit) and genetics tables plus a split, tied through a latent z."""
    from brainmm.data.fmri.connectivity import ConnectivityConfig, fit_pca, pca_transform
    from brainmm.data.splits import make_split, save_split
    from brainmm.embeddings import EmbeddingTable

    rng = np.random.default_rng(0)
    subjects = [f"s{i:05d}" for i in range(n)]
    z = rng.standard_normal((n, 8))
    fc = np.empty((n, EDGES), dtype=np.float32)
    load = rng.standard_normal((8, EDGES)).astype(np.float32) * 0.05
    for i in range(0, n, 256):  # in row blocks: no float64 [N, edges] copy
        fc[i : i + 256] = z[i : i + 256].astype(np.float32) @ load
        fc[i : i + 256] += rng.standard_normal((len(fc[i : i + 256]), EDGES), dtype=np.float32) * 0.3
    EmbeddingTable(subjects, fc, {"kind": "connectivity", "num_parcels": PARCELS, "pca": None}).save(root / "fc")
    split = make_split(subjects, seed=0)
    save_split(split, root / "split.csv")
    train = np.flatnonzero(split.set_index("subject_id").loc[subjects, "split"].to_numpy() == "train")
    pca = fit_pca(fc, train, ConnectivityConfig(pca=64))
    EmbeddingTable(subjects, pca_transform(fc, pca).astype(np.float32), {"kind": "brain_inputs"}).save(root / "brain")
    del fc
    genetics = z @ rng.standard_normal((8, 128)) + 2.0 * rng.standard_normal((n, 128))
    EmbeddingTable(subjects, genetics.astype(np.float32), {}).save(root / "genetics")
    return {k: str(root / k) for k in ("fc", "brain", "genetics")} | {"split": str(root / "split.csv")}


def run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one child process (its own rusage, from os.wait4); output to `log`."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"failed: {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", type=int, default=2000)
    p.add_argument("--fc-pca", type=int, nargs="+", default=[256], help="baselines.fc_pca values (0 = all edges)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    brainmm = [sys.executable, "-m", "brainmm.cli", "--quiet"]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        paths = make_tables(root, args.subjects)
        print(f"tables: {args.subjects} subjects, connectivity {EDGES:,} edges, {time.perf_counter() - t0:.0f} s")
        uri = f"sqlite:///{root / 'mlflow.db'}"
        align_s, _, _ = run([*brainmm, "align", "--config", str(REPO / "configs" / "align_clip.yaml"),
                       f"data.brain={paths['brain']}", f"data.genetics={{dna: {paths['genetics']}}}",
                       f"data.split={paths['split']}", f"output_dir={root / 'align'}", f"train.epochs={args.epochs}",
                       "train.patience=5", "train.device=cpu", f"tracking.uri={uri}"], env, root / "align.log")
        print(f"align: {align_s:.0f} s wall")
        for k in args.fc_pca:
            out = root / f"eval_{k}"
            wall, cpu, rss = run([*brainmm, "evaluate", "--align-dir", str(root / "align"), "--config",
                        str(REPO / "configs" / "evaluate.yaml"), f"data.brain_fc={paths['fc']}",
                        f"baselines.fc_pca={k}", "baselines.shuffled_pairs=true", "explain.enabled=false",
                        f"output_dir={out}", f"tracking_uri={uri}"], env, root / f"eval_{k}.log")
            seconds = json.loads((out / "result.json").read_text()).get("seconds", {})
            print(f"evaluate, baselines.fc_pca={k}: {wall:.0f} s wall, {cpu:.0f} CPU s, peak RSS {rss:.0f} MB")
            print("  sections: " + ", ".join(f"{name} {t:.1f} s" for name, t in seconds.items()))


if __name__ == "__main__":
    main()
