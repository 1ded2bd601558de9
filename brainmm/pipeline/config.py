"""`PipelineConfig`: the stage configs composed into one, with the demo's settings as defaults.

Every stage keeps its own section (the same dataclass its own command reads). The pipeline fills the fields that
connect stages: an empty input path means "the previous stage's output", a relative output path is taken inside
`output_dir`, and the stages' tracking sections come from the top-level `tracking`. `configs/demo.yaml` equals
these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from brainmm.align import (
    AlignConfig,
    AlignTrainConfig,
    ConfoundsConfig,
    GeneticsTowerConfig,
    GenotypeMLPTowerConfig,
)
from brainmm.data.fmri.connectivity import ConnectivityConfig
from brainmm.data.fmri.ingest import IngestConfig
from brainmm.data.genetics.config import GeneticsEmbedConfig, GenotypeMatrixConfig
from brainmm.data.simulate.config import BrainConfig, FactorConfig, GenotypeConfig, SimulationConfig
from brainmm.embed.config import EmbedConfig
from brainmm.errors import BrainmmError
from brainmm.evaluate.config import BaselineSection, EvaluateConfig, ProbeSection
from brainmm.tracking import TrackingConfig
from brainmm.train.pretrain_config import (
    BrainLMArchConfig,
    PretrainConfig,
    PretrainEvalConfig,
    PretrainModelConfig,
    PretrainTrainConfig,
)

STAGES = ("simulate", "ingest", "connectivity", "pretrain", "embed", "genetics", "align", "evaluate")


@dataclass
class StageSwitches:
    """Which stages run. null = decided by the inputs (a stage runs when its output is not given)."""

    simulate: bool | None = None  # null: when data.fmri_cohort and data.fmri_dataset are empty
    ingest: bool | None = None  # null: when data.fmri_dataset is empty
    connectivity: bool | None = None  # null: when evaluate asks fc_* baselines and evaluate.data.brain_fc is empty
    pretrain: bool | None = None  # null: when embed.model (a BrainLM checkpoint) is empty
    embed: bool | None = None  # null: when align.data.brain is empty (and the brain tower is a table)
    genetics: bool | None = None  # null: when align.data.genetics is empty
    align: bool = True
    evaluate: bool = True


@dataclass
class PipelineData:
    """Real fMRI inputs that no stage section holds (empty: simulate a cohort).

    The other real inputs live in their stage's section: `ingest.atlas` / `ingest.coords`, `genetics.matrix.vcf`
    / `.bed`, `genetics.dna.inputs.*` and `genetics.dna.encoder.path`, `embed.model` (a BrainLM checkpoint).
    """

    fmri_cohort: str = ""  # cohort table (subject_id, path, ...) for `fmri ingest`
    fmri_dataset: str = ""  # an ingested fMRI dataset folder (ingest is then skipped)


@dataclass
class GeneticsSection:
    """The genetics stage: a genotype matrix (-> genotype MLP tower) or DNA-model embeddings of personal sequences."""

    kind: Literal["genotype_matrix", "dna"] = "genotype_matrix"
    modality: str = ""  # name in the shared space and in the metric names; "" = genotype / dna
    matrix: GenotypeMatrixConfig = field(default_factory=lambda: GenotypeMatrixConfig(out="genetics/genotypes"))
    # the tower in front of a genotype matrix (kind genotype_matrix); align.towers.genetics.<modality> replaces it.
    # Default `table` (the linear CCA-initialised head sees the dosages); kind genotype_mlp: 256 hidden, 128 out
    genotype_mlp: GeneticsTowerConfig = field(default_factory=lambda: GenotypeMLPTowerConfig(
        kind="table", hidden_sizes=[256], output_size=128, dropout=0.5))
    dna: GeneticsEmbedConfig = field(default_factory=lambda: GeneticsEmbedConfig(out="genetics/dna"))

    @property
    def name(self) -> str:
        """The modality name."""
        return self.modality or ("genotype" if self.kind == "genotype_matrix" else "dna")


def _simulate() -> SimulationConfig:
    return SimulationConfig(n_subjects=500, genotypes=GenotypeConfig(n_blocks=16),
                            factors=FactorConfig(h2=0.9, n_causal=2), brain=BrainConfig(n_timepoints=800))


def _ingest() -> IngestConfig:
    return IngestConfig(num_timepoints=200)


def _pretrain() -> PretrainConfig:
    arch = BrainLMArchConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                             decoder_hidden_size=64, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
                             decoder_intermediate_size=128, timepoint_patching_size=10, xyz_init_scale=0.02)
    return PretrainConfig(
        name="pretrain", output_dir="pretrain", model=PretrainModelConfig(arch=arch),
        train=PretrainTrainConfig(max_steps=100, batch_size=16, base_lr=0.1, log_every=10, checkpoint_every=100,
                                  precision="fp32"),  # fp32 like embed: the same demo on every CPU
        eval=PretrainEvalConfig(every=0, batch_size=16, max_windows=32))


def _embed() -> EmbedConfig:
    # fp32: the demo's numbers (and its acceptance margins) are the same on every CPU; `precision=auto` opts in
    return EmbedConfig(pooling="mean", batch_size=64, precision="fp32", cache_dir="cache/brain-embeddings",
                       out="embed/brain")


def _align() -> AlignConfig:
    from alignment import HeadConfig

    return AlignConfig(
        name="align", output_dir="align", head=HeadConfig(kind="linear", dropout=0.3, standardize=False, init="cca"),
        train=AlignTrainConfig(batch_size=32, epochs=200, warmup_steps=20, checkpoint_every=1000, patience=60,
                               precision="fp32"))


def _evaluate() -> EvaluateConfig:
    return EvaluateConfig(
        output_dir="evaluate", probes=ProbeSection(targets=["age", "sex", "diagnosis"], n_permutations=1),
        baselines=BaselineSection(shuffled_pairs=True))


@dataclass
class PipelineConfig:
    """`brainmm run` / `brainmm demo`: simulate -> ingest -> connectivity -> pretrain -> embed -> genetics -> align -> evaluate."""

    name: str = "demo"  # MLflow name of the pipeline's parent run
    output_dir: str = "runs/demo"  # every stage writes a folder inside it
    threads: int = 1  # torch and BLAS CPU threads (tiny models: 1 is fastest on shared cores); 0 = their defaults
    brain_inputs: list[str] = field(default_factory=lambda: ["brainlm", "connectivity"])  # align's brain table
    brain_fc_pca: int = 64  # connectivity PCA components (fitted on train) when brain_inputs has connectivity
    stages: StageSwitches = field(default_factory=StageSwitches)
    data: PipelineData = field(default_factory=PipelineData)
    simulate: SimulationConfig = field(default_factory=_simulate)
    ingest: IngestConfig = field(default_factory=_ingest)
    connectivity: ConnectivityConfig = field(default_factory=ConnectivityConfig)  # -> connectivity/fc (fc_* baselines)
    pretrain: PretrainConfig = field(default_factory=_pretrain)
    embed: EmbedConfig = field(default_factory=_embed)
    genetics: GeneticsSection = field(default_factory=GeneticsSection)
    align: AlignConfig = field(default_factory=_align)
    evaluate: EvaluateConfig = field(default_factory=_evaluate)
    # passed to align and evaluate; cohort empty: the fMRI dataset; pcs empty: computed in the genetics stage
    confounds: ConfoundsConfig = field(default_factory=ConfoundsConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="brainmm"))

    def validate(self) -> None:
        """Checks that need no files: threads, and the fields the pipeline sets itself (tracking, evaluate's run)."""
        if self.threads < 0:
            raise BrainmmError(f"pipeline config field 'threads': expected 0 (torch's default) or a positive integer, got "
                               f"{self.threads}")
        from brainmm.pipeline.brain_inputs import BRAIN_INPUTS

        bad = [x for x in self.brain_inputs if x not in BRAIN_INPUTS]
        if bad or not self.brain_inputs or len(set(self.brain_inputs)) != len(self.brain_inputs):
            raise BrainmmError(f"pipeline config field 'brain_inputs': expected distinct entries of {list(BRAIN_INPUTS)}, "
                               f"got {self.brain_inputs}")
        if self.brain_fc_pca < 1:
            raise BrainmmError(f"pipeline config field 'brain_fc_pca': expected an integer >= 1, got {self.brain_fc_pca}")
        if not self.output_dir:
            raise BrainmmError("pipeline config field 'output_dir': expected a folder, got nothing")
        default = TrackingConfig()
        for section in ("pretrain", "align"):
            stage_tracking = getattr(self, section).tracking
            for key in ("uri", "experiment", "artifact_location"):
                if getattr(stage_tracking, key) != getattr(default, key):
                    raise BrainmmError(
                        f"pipeline config field '{section}.tracking.{key}': set by the pipeline from 'tracking.{key}' "
                        "(every stage logs to one backend and experiment); set it there")
        for key, value in (("evaluate.run_id", self.evaluate.run_id), ("evaluate.align_dir", self.evaluate.align_dir),
                           ("evaluate.tracking_uri", self.evaluate.tracking_uri)):
            if value:
                raise BrainmmError(f"pipeline config field '{key}': set by the pipeline (the align stage's run); "
                                   "leave it empty, or run `brainmm evaluate` on its own")
        for section in ("align", "evaluate"):
            if getattr(self, section).confounds != ConfoundsConfig():
                raise BrainmmError(f"pipeline config field '{section}.confounds': set by the pipeline from 'confounds' "
                                   "(align and evaluate adjust for the same confounds); set it there")
        if self.evaluate.mlflow_run != "nested":
            raise BrainmmError("pipeline config field 'evaluate.mlflow_run': the pipeline logs the evaluation as a "
                               f"child of the align run ('nested'), got {self.evaluate.mlflow_run!r}")
