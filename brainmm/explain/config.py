"""`ExplainSection`: which held-out subjects, how many shared directions, permutations, bootstrap draws, FDR level."""

from __future__ import annotations

from dataclasses import dataclass, field

from brainmm.errors import BrainmmError

EXPLAIN_BASELINES = ("cca", "fc_cca")


@dataclass
class ExplainSection:
    """Link scores per input feature and unit (variants, genes, edges, parcels, networks) on held-out subjects."""

    enabled: bool = True
    splits: list[str] = field(default_factory=lambda: ["test"])  # held-out subjects the scores are computed on
    n_dims: int = 16  # shared directions kept (largest share of the training paired similarity)
    # most pairings permuted per feature (sequential: a null one stops after 10 exceedances, one whose BH decision
    # at `fdr` is settled stops then)
    n_permutations: int = 100_000
    n_boot: int = 500  # bootstrap draws of the held-out subjects for the CIs
    fdr: float = 0.05  # Benjamini-Hochberg level of the "significant" lists
    top_k: int = 5  # rows per table in the printed summary
    top_edges: int = 20  # edges drawn in the connectome view
    ig_steps: int = 32  # integrated-gradients steps (attribution column)
    genes: str = ""  # BED of genes (chrom, start, end, name): a gene column and genes.tsv
    networks: str = ""  # TSV with parcel label + network columns: networks.tsv (else from Schaefer-style labels)
    baselines: list[str] = field(default_factory=lambda: list(EXPLAIN_BASELINES))  # explained the same way

    def validate(self) -> None:
        """Ranges and names (paths are checked when the run starts)."""
        bad = [s for s in self.splits if s not in ("train", "val", "test")]
        if not self.splits or bad or "train" in self.splits:
            raise BrainmmError(f"config field 'explain.splits': expected held-out splits from [val, test], got "
                               f"{self.splits}")
        for name in ("n_dims", "n_permutations", "n_boot", "top_k", "top_edges", "ig_steps"):
            if getattr(self, name) < 1:
                raise BrainmmError(f"config field 'explain.{name}': expected an integer >= 1, got "
                                   f"{getattr(self, name)}")
        if not 0 < self.fdr < 1:
            raise BrainmmError(f"config field 'explain.fdr': expected a level in (0, 1), got {self.fdr}")
        unknown = [b for b in self.baselines if b not in EXPLAIN_BASELINES]
        if unknown:
            raise BrainmmError(f"config field 'explain.baselines': unknown {unknown}; expected some of "
                               f"{list(EXPLAIN_BASELINES)}")
