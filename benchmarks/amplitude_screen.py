"""Amplitude lever on a finished pipeline run (`alignment_scaling.py` output folder): the default recipe with
per-parcel log SD appended to its brain table, and CCA on [FC, log SD] beside `fc_cca` (sizes and epoch chosen on
validation; test scored once). The log SD block is scaled like the default's other blocks. Results:
benchmarks/alignment_scaling.md ("Lever: BOLD amplitude"; measured with the previous, z-scored default).

    OMP_NUM_THREADS=1 python benchmarks/amplitude_screen.py --run /tmp/scale10k/n10000_s0 --n 10000 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import alignment_recipes as ar  # noqa: E402

RECIPE = ["head.kind=linear", "genotype_table", "head.init=cca"]  # the pipeline default's align recipe


def log_sd(fmri: Path, subjects: list[str]) -> np.ndarray:
    """[subjects, parcels]: mean over a subject's recordings of log SD per parcel of the stored (scaled) series."""
    from brainmm.data.fmri.dataset import FmriDataset

    ds = FmriDataset.load(fmri)
    per: dict[str, list[np.ndarray]] = {}
    for rid, sid in zip(ds.recordings["recording_id"], ds.recordings["subject_id"].astype(str)):
        per.setdefault(sid, []).append(np.log(ds.signal(rid).std(axis=-1)))
    return np.stack([np.mean(per[s], axis=0) for s in subjects]).astype(np.float32)


def main() -> None:
    from brainmm.align import table_subjects
    from brainmm.config import load_config
    from brainmm.embeddings import EmbeddingTable
    from brainmm.pipeline import PipelineConfig
    from brainmm.pipeline.brain_inputs import block_scale

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a finished pipeline folder (n<N>_s<seed>)")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/amplitude"))
    args = p.parse_args()
    out = args.out / args.run.name
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(args.out / 'mlflow.db').resolve()}"
    cfg = load_config(PipelineConfig, None, [f"output_dir={args.run}", f"simulate.n_subjects={args.n}",
                                             f"simulate.seed={args.seed}", f"tracking.uri={uri}"])
    prep = {"out": out, "fmri": args.run / "fmri", "emb": args.run / "embed" / "brain", "stages": {}, "cfg": cfg,
            "geno": args.run / "genetics" / "genotypes", "split": args.run / "fmri" / "split.csv"}
    tabs = ar.brain_tables(prep, 64)
    subjects = table_subjects(EmbeddingTable.load(prep["emb"]), "emb")
    amp = log_sd(prep["fmri"], subjects)
    concat = EmbeddingTable.load(tabs["concat"])
    train = np.isin(subjects, ar._split_rows(concat, prep["split"])["train"])
    scaled = block_scale(amp.astype(np.float64), train, {"block_scaling": {}}, "log_sd")  # a third block, like the others
    EmbeddingTable(subjects, np.hstack([concat.vectors, scaled]), {"kind": "concat(brainlm, fc_pca, log_sd)"}).save(
        out / "default_amp")
    fc = EmbeddingTable.load(tabs["fc_raw"]).subset(subjects)
    EmbeddingTable(subjects, np.hstack([fc.vectors, amp]), {"kind": "concat(fc, log_sd)"}).save(out / "fc_amp")
    rows = [ar.align_row("default_amp", out / "default_amp", prep, uri, RECIPE, args.seed),
            ar.cca_row("fc_cca", tabs["fc_raw"], prep["geno"], prep["split"]),
            ar.cca_row("fc_amp_cca", out / "fc_amp", prep["geno"], prep["split"])]
    print("\n" + ar.HEADER)
    for r in rows:
        print(ar.fmt(args.n, args.seed, r), flush=True)


if __name__ == "__main__":
    main()
