"""The `confounds` config section and the covariate-table column names of the strata, importable without numpy or
pandas (the CLI checks a config before heavy modules load; the adjustment itself is in confounds.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from brainmm.errors import BrainmmError

ANCESTRY = "ancestry_cluster"  # covariate-table column: KMeans cluster of the genetic PCs (fitted on train)
CELL = "confound_cell"  # covariate-table column: ancestry cluster x categorical covariates (permutation strata)
STRATUM = "confound_stratum"  # design column: CELL merged until each stratum has enough training rows


@dataclass
class ConfoundsConfig:
    """Covariates regressed out of both modalities' inputs (fitted on train subjects) before alignment, baselines
    and probes. `covariates`: cohort-table columns (text columns, and those in `categorical`, one-hot);
    `genetic_pcs`: the first K columns of `pcs` (a `brainmm genetics pca` table; the pipeline computes it from the
    cohort's genotypes fitted on train when empty); `cohort`: an fMRI dataset folder or a CSV/TSV/Parquet table
    with subject_id and the covariates (the pipeline: its fMRI dataset)."""

    covariates: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    genetic_pcs: int = 0
    pcs: str = ""
    cohort: str = ""

    @property
    def enabled(self) -> bool:
        """Whether any confound is set."""
        return bool(self.covariates) or self.genetic_pcs > 0

    @property
    def pc_names(self) -> list[str]:
        """Design column names of the genetic PCs."""
        return [f"pc{i + 1}" for i in range(self.genetic_pcs)]

    @property
    def columns(self) -> list[str]:
        """Every covariate column of the design: the cohort columns, then the PCs."""
        return [*self.covariates, *self.pc_names]

    def validate(self) -> None:
        """Field checks that need no files."""
        if self.genetic_pcs < 0:
            raise BrainmmError(f"config field 'confounds.genetic_pcs': expected an integer >= 0, got {self.genetic_pcs}")
        if len(set(self.covariates)) != len(self.covariates):
            raise BrainmmError(f"config field 'confounds.covariates': repeated columns in {self.covariates}")
        clash = [c for c in self.covariates if c in self.pc_names or c in ("subject_id", ANCESTRY, CELL, STRATUM)]
        if clash:
            raise BrainmmError(f"config field 'confounds.covariates': {clash} clash with the genetic PC columns "
                               f"(pc1..), the subject id or the strata ({ANCESTRY}, {CELL}, {STRATUM}); rename "
                               "them in the cohort table")
        unknown = sorted(set(self.categorical) - set(self.covariates))
        if unknown:
            raise BrainmmError(f"config field 'confounds.categorical': {unknown} are not in confounds.covariates "
                               f"{self.covariates}")

    def require_sources(self, where: str) -> None:
        """The cohort table (with covariates) and the PC table (with genetic_pcs) must be given."""
        if self.covariates and not self.cohort:
            raise BrainmmError(f"{where} config field 'confounds.cohort': confounds.covariates {self.covariates} need "
                               "the cohort table (an fMRI dataset folder or a CSV/TSV/Parquet table with subject_id)")
        if self.genetic_pcs and not self.pcs:
            raise BrainmmError(f"{where} config field 'confounds.pcs': confounds.genetic_pcs={self.genetic_pcs} needs "
                               "a `brainmm genetics pca` table (fitted on the train subjects of the same split)")
