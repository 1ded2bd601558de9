"""`EvaluateConfig`: which align run to evaluate, and how (retrieval, probes, baselines, figures, model, MLflow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from brainmm.align import ConfoundsConfig
from brainmm.errors import BrainmmError
from brainmm.evaluate.baseline_registry import BASELINES, baseline_names
from brainmm.explain import ExplainSection

BASELINE_METHODS = baseline_names()  # brainmm.evaluate.baseline_registry
FC_METHODS = tuple(n for n, b in BASELINES.items() if b.table == "connectivity")  # on data.brain_fc (skipped without)
PROBE_REPRESENTATIONS = ("brain", "genetics", "shared_brain", "shared_genetics", "concat")
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class EvalDataConfig:
    """Input paths; an empty value means "as in the align run's config.yaml" (cohort has no such default)."""

    brain: str = ""
    genetics: dict[str, str] = field(default_factory=dict)
    split: str = ""
    cohort: str = ""  # fMRI dataset folder (its cohort.csv) or a CSV/TSV/Parquet table with subject_id + phenotypes
    brain_fc: str = ""  # connectivity table (`brainmm fmri connectivity`) for the fc_* baselines; "" = no fc_* rows


@dataclass
class RetrievalSection:
    """Brain <-> genetics retrieval on the shared-space embeddings of `splits` (test first: its names are unprefixed)."""

    splits: list[str] = field(default_factory=lambda: ["test", "val"])
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    kway: int = 300  # MindEye protocol: top-1 among min(kway, n_subjects) random subjects; 0 = off
    kway_repeats: int = 30
    n_boot: int = 1000
    n_permutations: int = 1000  # shuffles of the test pairing for p-values (0 = none; "above chance" needs them)


@dataclass
class ProbeSection:
    """Linear probes of cohort phenotypes on frozen representations of the subjects of `splits`."""

    targets: list[str] = field(default_factory=list)  # cohort columns (numeric or categorical), e.g. [age, sex]
    tasks: dict[str, Literal["classification", "regression"]] = field(default_factory=dict)  # override inference
    splits: list[str] = field(default_factory=lambda: ["val", "test"])  # held out from the alignment
    group_col: str = ""  # cohort column for grouped CV (family/site); default: the split table's 'group'
    representations: list[str] = field(default_factory=lambda: list(PROBE_REPRESENTATIONS))
    n_splits: int = 5
    n_boot: int = 1000
    n_permutations: int = 3


@dataclass
class BaselineSection:
    """Baselines fitted on the train split and scored with the same retrieval metrics on the test split."""

    methods: list[str] = field(default_factory=lambda: list(BASELINE_METHODS))  # ridge = both directions; fc_*: FC
    n_components: int = 8  # CCA / PLS components
    n_permutations: int = 1000  # permutations of the test pairing for canonical-correlation p-values
    shuffled_pairs: bool = False  # train a second alignment on permuted train pairs (costs one training run)
    shuffled_overrides: list[str] = field(default_factory=list)  # align overrides for that run, e.g. train.epochs=20
    unadjusted: bool = True  # with confounds: train the alignment again without them (a control; one training run)
    control_epochs: int = 0  # epochs of the control trainings (shuffled pairs, unadjusted); 0 = the main run's best
    fc_pca: int = 256  # fc_* baselines on this many connectivity PCA components (fitted on train); 0 = all edges


@dataclass
class FigureSection:
    """Figures logged with mlflow.log_figure and written to <output>/figures."""

    enabled: bool = True
    heatmap_subjects: int = 32  # test subjects shown in the similarity heatmap
    color_by: str = ""  # phenotype colouring the 2-D PCA of the shared space; default: the first probe target


@dataclass
class ModelSection:
    """The trained heads as MLflow models (one per side: heads_brain, heads_<modality>)."""

    log: bool = True
    serialization_format: Literal["pt2", "pickle"] = "pt2"  # pt2 = torch.export (no pickle when loading)


@dataclass
class EvaluateConfig:
    """The `brainmm evaluate` stage: evaluate one align run (by MLflow run id or by folder)."""

    name: str = "evaluate"  # MLflow run name of the nested run
    run_id: str = ""  # MLflow run id of the align run
    align_dir: str = ""  # or its folder
    output_dir: str = ""  # default <align_dir>/evaluation
    mlflow_run: Literal["nested", "same"] = "nested"  # a child run of the align run, or the align run itself
    tracking_uri: str | None = None  # default: the URI recorded in <align_dir>/run.json, else $MLFLOW_TRACKING_URI
    seed: int = 0
    level: float = 0.95  # level of every bootstrap confidence interval
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)
    probes: ProbeSection = field(default_factory=ProbeSection)
    baselines: BaselineSection = field(default_factory=BaselineSection)
    figures: FigureSection = field(default_factory=FigureSection)
    model: ModelSection = field(default_factory=ModelSection)
    confounds: ConfoundsConfig = field(default_factory=ConfoundsConfig)  # empty: the align run's
    explain: ExplainSection = field(default_factory=ExplainSection)  # link scores per variant/edge/parcel

    def check_paths(self) -> None:
        """The align folder and the given input tables exist (the CLI calls this before torch and mlflow load)."""
        from pathlib import Path

        from brainmm.embeddings import require_table

        if self.align_dir and not Path(self.align_dir).is_dir():
            raise BrainmmError(f"align folder {self.align_dir}: does not exist (expected the output_dir of "
                               "`brainmm align`)")
        d = self.data
        for stem in [s for s in (d.brain, d.brain_fc) if s] + list(d.genetics.values()):
            require_table(stem)

    def validate(self) -> None:
        """Cross-field checks (paths: `check_paths`; columns are checked when the run starts)."""
        r, p, b = self.retrieval, self.probes, self.baselines
        _choices("retrieval.splits", r.splits, SPLIT_NAMES, nonempty=True)
        _choices("probes.splits", p.splits, SPLIT_NAMES, nonempty=bool(p.targets))
        _choices("probes.representations", p.representations, PROBE_REPRESENTATIONS, nonempty=bool(p.targets))
        _choices("baselines.methods", b.methods, BASELINE_METHODS)
        if not r.ks or min(r.ks) < 1:
            raise BrainmmError(f"evaluate config field 'retrieval.ks': expected positive integers, got {r.ks}")
        positive = {"retrieval.kway_repeats": r.kway_repeats, "retrieval.n_boot": r.n_boot,
                    "probes.n_boot": p.n_boot, "baselines.n_components": b.n_components,
                    "figures.heatmap_subjects": self.figures.heatmap_subjects}
        for name, value in positive.items():
            if value < 1:
                raise BrainmmError(f"evaluate config field '{name}': expected an integer >= 1, got {value}")
        if r.kway == 1 or r.kway < 0:
            raise BrainmmError(f"evaluate config field 'retrieval.kway': expected 0 (off) or >= 2, got {r.kway}")
        if not 0 < self.level < 1:
            raise BrainmmError(f"evaluate config field 'level': expected a number in (0, 1), got {self.level}")
        if p.n_splits < 2:
            raise BrainmmError(f"evaluate config field 'probes.n_splits': expected an integer >= 2, got {p.n_splits}")
        for name, value in (("probes.n_permutations", p.n_permutations), ("baselines.n_permutations", b.n_permutations),
                            ("retrieval.n_permutations", r.n_permutations),
                            ("baselines.control_epochs", b.control_epochs), ("baselines.fc_pca", b.fc_pca)):
            if value < 0:
                raise BrainmmError(f"evaluate config field '{name}': expected an integer >= 0, got {value}")
        unknown = sorted(set(p.tasks) - set(p.targets))
        if unknown:
            raise BrainmmError(f"evaluate config field 'probes.tasks': {unknown} are not in probes.targets {p.targets}")


def _choices(name: str, values: list[str], allowed: tuple[str, ...], nonempty: bool = False) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise BrainmmError(f"evaluate config field '{name}': unknown {bad}; choose from {list(allowed)}")
    if len(set(values)) != len(values):
        raise BrainmmError(f"evaluate config field '{name}': repeated entries in {values}")
    if nonempty and not values:
        raise BrainmmError(f"evaluate config field '{name}': expected at least one of {list(allowed)}")
