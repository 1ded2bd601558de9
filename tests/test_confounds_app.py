"""Confound adjustment in the application (issue 14): the `confounds` config section, train-fitted residualisation of
both modalities' inputs in `brainmm align`, bad covariate columns (one-line CLI errors, nothing written), and the
acceptance scenario (strong population confounding, no / default genetic effect) over 5 seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmm.align import AlignConfig
from brainmm.config import load_config
from brainmm.embeddings import EmbeddingTable

CONFOUNDING = ["population.n_groups=3", "population.fst=0.1", "population.site_association=0.9",
               "population.brain_effect=1.0", "sites.n_sites=3"]
COVARIATES = ["age", "sex", "site"]


def build_inputs(folder: Path, seed: int, effect: float, n_subjects: int = 200, n_pcs: int = 5,
                 confounding: list[str] = CONFOUNDING) -> dict[str, Any]:
    """A simulated cohort and the app's inputs: split, brain feature table (per-parcel log-variance + Fisher-z FC),
    genotype matrix (`genetics matrix`, train-fitted QC), genetic PCs (`genetics pca`, fitted on train)."""
    from brainmm.data.genetics import run_matrix
    from brainmm.data.genetics.config import GeneticPcaConfig, GenotypeMatrixConfig
    from brainmm.data.genetics.pca import run_pca
    from brainmm.data.simulate import SimulationConfig, simulate_cohort
    from brainmm.data.simulate.power import recording_features
    from brainmm.data.splits import make_split

    sim = load_config(SimulationConfig, None, [f"seed={seed}", f"n_subjects={n_subjects}", "brain.n_timepoints=400", "genotypes.n_blocks=16", "factors.h2=0.9", "factors.n_causal=2",
                                                f"effects.effect_size={effect}", *confounding])
    cohort_dir = simulate_cohort(sim, folder / "cohort")
    cohort = pd.read_csv(cohort_dir / "cohort.csv", dtype={"subject_id": str, "site": str, "family": str})
    split = make_split(cohort["subject_id"], cohort["family"], (0.6, 0.2, 0.2), seed=seed)
    split.to_csv(folder / "split.csv", index=False)
    brain = np.stack([recording_features(np.load(cohort_dir / f)) for f in cohort["file"]])
    EmbeddingTable(cohort["subject_id"].tolist(), brain, {"kind": "brain_features"}).save(folder / "brain")
    vcf = str(cohort_dir / "genotypes.vcf.gz")
    run_matrix(GenotypeMatrixConfig(vcf=vcf, split=str(folder / "split.csv"), out=str(folder / "genotypes")))
    run_pca(GeneticPcaConfig(vcf=vcf, split=str(folder / "split.csv"), n_pcs=n_pcs, out=str(folder / "pcs")))
    return {"folder": folder, "cohort": str(cohort_dir / "cohort.csv"), "split": str(folder / "split.csv"),
            "brain": str(folder / "brain"), "genotype": str(folder / "genotypes"), "pcs": str(folder / "pcs"),
            "n_pcs": n_pcs}


def align_config(inputs: dict[str, Any], adjusted: bool, uri: str, epochs: int = 60, name: str = "") -> AlignConfig:
    """Heads-only alignment (brain table <-> genotype-matrix table), confounds on or off."""
    confounds = []
    if adjusted:
        confounds = [f"confounds.covariates=[{','.join(COVARIATES)}]", f"confounds.genetic_pcs={inputs['n_pcs']}",
                     f"confounds.pcs={inputs['pcs']}", f"confounds.cohort={inputs['cohort']}"]
    out = inputs["folder"] / (name or ("adjusted" if adjusted else "unadjusted"))
    return load_config(AlignConfig, None, [
        f"output_dir={out}", f"data.brain={inputs['brain']}", f"data.genetics={{genotype: {inputs['genotype']}}}",
        f"data.split={inputs['split']}", f"train.epochs={epochs}", "train.batch_size=32", "train.warmup_steps=10",
        "train.patience=20", "train.checkpoint_every=100000", "head.hidden_dim=256", "head.out_dim=64",
        "head.dropout=0.3", f"tracking.uri={uri}", *confounds])


def test_ranks(result: Any) -> np.ndarray:
    """0-based brain -> genotype ranks of the test subjects in the shared space."""
    from alignment.retrieval import pair_ranks

    brain = EmbeddingTable.load(result.embeddings["test"]["brain"])
    genes = EmbeddingTable.load(result.embeddings["test"]["genotype"]).subset(brain.ids)
    return pair_ranks(brain.vectors, genes.vectors)[0]


test_ranks.__test__ = False  # a helper, not a test
