"""Which stages run and how they connect: `make_plan(cfg)` fills every wired field with an absolute path.

Rules (docs/pipeline.md): an empty input path means "the previous stage's output"; a relative output path
(`pretrain.output_dir`, `embed.out`, `embed.cache_dir`, `genetics.*.out`, `genetics.dna.cache_dir`,
`align.output_dir`, `evaluate.output_dir`; the connectivity table `connectivity/fc`) lies inside `output_dir`; input paths the user gives are taken as they
are (relative to the working folder). Every inconsistency is an error before any work.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainmm.align import tower_kind
from brainmm.errors import BrainmmError
from brainmm.evaluate.baseline_registry import connectivity_methods
from brainmm.pipeline.config import STAGES, PipelineConfig

COHORT_DIR = "cohort"  # the simulated cohort, inside output_dir
FMRI_DIR = "fmri"  # the ingested fMRI dataset, inside output_dir
PCS_OUT = "genetics/genetic_pcs"  # the confounds' genetic PCs, when the pipeline computes them
FC_TABLE = "connectivity/fc"  # the connectivity table (fc_* baselines), inside output_dir
BRAIN_TABLE = "embed/brain_inputs"  # align's brain table when brain_inputs is not [brainlm]


@dataclass
class Plan:
    """The wired stage configs (every path absolute) and the stages that run, in order."""

    config: PipelineConfig  # a deep copy of the user's config with every wired field filled
    out: Path
    tracking_uri: str
    runs: dict[str, bool] = field(default_factory=dict)
    fmri_cohort: Path | None = None  # the cohort table ingest reads
    fmri_dataset: Path | None = None
    brain_model: Path | None = None  # the BrainLM checkpoint folder embed reads
    # the connectivity table: the connectivity stage's output, or a given one (evaluate.data.brain_fc); the plan
    # hands it to align (brain_inputs with connectivity) and to evaluate (the connectivity baselines)
    connectivity: Path | None = None
    genetic_pcs: bool = False  # the genetics stage also computes the confounds' genetic PCs (confounds.pcs)
    notes: list[str] = field(default_factory=list)  # decisions the plan made for the user (printed with the plan)
    costs: Any = None  # brainmm.pipeline.cost.CostPlan, once estimated

    @property
    def stages(self) -> list[str]:
        """The stages that run, in order."""
        return [s for s in STAGES if self.runs[s]]

    @property
    def cohort_dir(self) -> Path:
        """Where the simulated cohort goes."""
        return self.out / COHORT_DIR


def absolute_uri(uri: str) -> str:
    """A tracking URI with a relative sqlite path made absolute (stages and `brainmm evaluate --run` agree)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def _inside(out: Path, path: str | os.PathLike | None) -> str:
    """An output path: absolute as given, relative ones inside `out` (one that climbs out of it is refused)."""
    p = Path(path or "")
    if p.is_absolute():
        return str(p)
    inside = Path(os.path.normpath(out / p))
    if inside != out and out not in inside.parents:
        raise BrainmmError(f"pipeline output path {str(p)!r}: a relative stage output lies inside output_dir {out}, "
                           f"but this one resolves to {inside}, outside it; remove the '..' (or give an absolute path)")
    return str(out / p)


def _given(path: Any) -> str:
    """A user-given input path, made absolute (relative to the working folder)."""
    return str(Path(path).expanduser().resolve())


def _switch(name: str, switch: bool | None, auto: bool, given: str, needed: str) -> bool:
    """Resolve one stage switch; `given` names the input that replaces the stage's output, `needed` what to set."""
    if switch is None:
        return auto
    if switch and not auto:
        raise BrainmmError(f"pipeline config field 'stages.{name}': true, but {given} is given, which replaces "
                           f"this stage's output; leave the switch null or remove that input")
    if not switch and auto:
        raise BrainmmError(f"pipeline config field 'stages.{name}': false, so {needed}")
    return switch


def make_plan(cfg: PipelineConfig) -> Plan:
    """Resolve the stage switches and fill every wired field (see the module docstring); raises before any work."""
    from brainmm.pipeline.cost import brainlm_cpu_rule
    from brainmm.tracking import resolve_tracking_uri

    cfg = copy.deepcopy(cfg)
    out = Path(cfg.output_dir).expanduser().resolve()
    uri = absolute_uri(resolve_tracking_uri(cfg.tracking.uri))
    plan = Plan(cfg, out, uri)
    kind = tower_kind(cfg.align.towers.brain.kind)
    plan.notes += brainlm_cpu_rule(cfg, not kind.has_model)  # may go FC-only
    sw, data = cfg.stages, cfg.data
    fmri_given = "data.fmri_cohort" if data.fmri_cohort else "data.fmri_dataset" if data.fmri_dataset else ""
    runs = plan.runs
    runs["simulate"] = _switch("simulate", sw.simulate, not fmri_given, fmri_given,
                               "set data.fmri_cohort (a cohort table) or data.fmri_dataset (an ingested dataset)")
    if data.fmri_cohort and data.fmri_dataset:
        raise BrainmmError("pipeline config fields 'data.fmri_cohort' and 'data.fmri_dataset': give one of them "
                           "(a dataset is already ingested)")
    runs["ingest"] = _switch("ingest", sw.ingest, not data.fmri_dataset, "data.fmri_dataset",
                             "set data.fmri_dataset (an ingested fMRI dataset folder)")
    fc_wanted = sw.evaluate and bool(connectivity_methods(cfg.evaluate.baselines.methods))
    if sw.connectivity and cfg.evaluate.data.brain_fc:
        raise BrainmmError("pipeline config field 'stages.connectivity': true, but evaluate.data.brain_fc is given, "
                           "which replaces this stage's output; leave the switch null or remove that input")
    fc_input = "connectivity" in cfg.brain_inputs
    if fc_input and sw.connectivity is False and not cfg.evaluate.data.brain_fc:
        raise BrainmmError("pipeline config field 'stages.connectivity': false, but brain_inputs has connectivity; "
                           "set evaluate.data.brain_fc (a connectivity table) or turn the stage on")
    runs["connectivity"] = ((fc_wanted or fc_input) and not cfg.evaluate.data.brain_fc if sw.connectivity is None
                            else sw.connectivity)
    if runs["connectivity"]:
        plan.connectivity = out / FC_TABLE
    elif cfg.evaluate.data.brain_fc:
        plan.connectivity = Path(_given(cfg.evaluate.data.brain_fc))
    table_tower = not kind.has_model
    fc_only = "brainlm" not in cfg.brain_inputs and not kind.pipeline_stages  # no BrainLM: no pretrain, no embed
    if fc_only:
        for stage in ("pretrain", "embed"):
            if getattr(sw, stage):
                raise BrainmmError(f"pipeline config field 'stages.{stage}': true, but brain_inputs "
                                   f"{cfg.brain_inputs} uses no BrainLM (the FC-only path); add brainlm to "
                                   "brain_inputs or leave the switch null")
        runs["pretrain"] = runs["embed"] = False
    else:
        runs["pretrain"] = _switch("pretrain", sw.pretrain, not cfg.embed.model, "embed.model",
                                   "set embed.model (a BrainLM checkpoint folder)")
        runs["embed"] = _switch("embed", sw.embed, not cfg.align.data.brain, "align.data.brain",
                                "set align.data.brain (a brain embedding table)" if table_tower else
                                "the evaluation needs evaluate.data.brain (a table of the tower's input features)")
    runs["genetics"] = _switch("genetics", sw.genetics, not cfg.align.data.genetics, "align.data.genetics",
                               "set align.data.genetics (name: embedding table)")
    runs["align"] = sw.align
    runs["evaluate"] = sw.evaluate
    if runs["evaluate"] and not runs["align"]:
        raise BrainmmError("pipeline config field 'stages.evaluate': the pipeline evaluates its own align run; with "
                           "stages.align false, run `brainmm evaluate --run RUN_ID` instead")

    # fMRI: simulated cohort -> ingest -> dataset
    if runs["simulate"]:
        plan.fmri_cohort = plan.cohort_dir / "cohort.csv"
        if cfg.ingest.coords is None and cfg.ingest.atlas is None:
            cfg.ingest.coords = plan.cohort_dir / "coords.tsv"
    elif data.fmri_cohort:
        plan.fmri_cohort = Path(_given(data.fmri_cohort))
    if runs["ingest"] and plan.fmri_cohort is None:
        raise BrainmmError("pipeline config field 'data.fmri_cohort': the ingest stage needs a cohort table "
                           "(subject_id, path, ...) or the simulated cohort (stages.simulate)")
    plan.fmri_dataset = out / FMRI_DIR if runs["ingest"] else Path(_given(data.fmri_dataset))
    dataset = str(plan.fmri_dataset)
    split = str(plan.fmri_dataset / "split.csv")

    # BrainLM: pretrain -> model -> embed
    p = cfg.pretrain
    if p.data.dataset and runs["pretrain"]:
        raise BrainmmError("pipeline config field 'pretrain.data.dataset': set by the pipeline (the fMRI dataset); "
                           "leave it empty and set data.fmri_dataset")
    p.data.dataset = dataset
    p.output_dir = _inside(out, p.output_dir)
    plan.brain_model = (Path(p.output_dir) / "model" if runs["pretrain"] else
                        Path(_given(cfg.embed.model)) if cfg.embed.model else None)
    e = cfg.embed
    if e.dataset and runs["embed"]:
        raise BrainmmError("pipeline config field 'embed.dataset': set by the pipeline (the fMRI dataset); leave it "
                           "empty and set data.fmri_dataset")
    e.model, e.dataset = str(plan.brain_model or ""), dataset
    e.out = _inside(out, e.out)
    if e.cache_dir is not None:
        e.cache_dir = _inside(out, e.cache_dir)

    # genetics
    g = cfg.genetics
    name = g.name
    if runs["genetics"]:
        if g.kind == "genotype_matrix":
            _wire_matrix(plan, split)
        else:
            _wire_dna(plan)
    g.matrix.out = _inside(out, g.matrix.out)
    g.dna.out = _inside(out, g.dna.out)
    if g.dna.cache_dir is not None:
        g.dna.cache_dir = _inside(out, g.dna.cache_dir)

    # align
    a = cfg.align
    a.output_dir = _inside(out, a.output_dir)
    mixed = cfg.brain_inputs != ["brainlm"]
    if fc_only and a.data.brain:
        raise BrainmmError(f"pipeline config field 'brain_inputs': {cfg.brain_inputs} builds the align stage's brain "
                           "table from the connectivity table (the FC-only path); leave align.data.brain empty")
    if mixed and not fc_only and (not table_tower or not runs["embed"]):
        raise BrainmmError(f"pipeline config field 'brain_inputs': {cfg.brain_inputs} builds the align stage's brain "
                           "table from the embed stage (a table brain tower, align.data.brain empty)")
    if mixed:
        a.data.brain = str(out / BRAIN_TABLE)
    elif runs["embed"] and table_tower:
        a.data.brain = e.out
    elif a.data.brain:
        a.data.brain = _given(a.data.brain)
    if runs["genetics"]:
        a.data.genetics = {name: g.matrix.out if g.kind == "genotype_matrix" else g.dna.out}
    else:
        a.data.genetics = {m: _given(t) for m, t in a.data.genetics.items()}
    if runs["genetics"] and g.kind == "genotype_matrix" and name not in a.towers.genetics:
        a.towers.genetics[name] = copy.deepcopy(g.genotype_mlp)
    a.data.split = _given(a.data.split) if a.data.split else split
    if not table_tower:  # the brain tower's kind takes the checkpoint and the fMRI dataset of earlier stages
        tower_kind(a.towers.brain.kind).pipeline_inputs(a.towers.brain, str(plan.brain_model), dataset, _given)
    a.tracking.uri, a.tracking.experiment = uri, cfg.tracking.experiment
    a.tracking.artifact_location = cfg.tracking.artifact_location
    p.tracking.uri, p.tracking.experiment = uri, cfg.tracking.experiment
    p.tracking.artifact_location = cfg.tracking.artifact_location
    a.validate()  # modality names, towers for modalities that exist

    # evaluate
    v = cfg.evaluate
    v.align_dir, v.tracking_uri = a.output_dir, uri
    v.output_dir = _inside(out, v.output_dir)
    v.data.cohort = _given(v.data.cohort) if v.data.cohort else dataset
    v.data.brain_fc = str(plan.connectivity or "")
    if (mixed or not table_tower) and not v.data.brain and runs["embed"]:
        v.data.brain = e.out  # the baselines and probes read the frozen model's features
    _wire_confounds(plan, dataset)
    return plan


def _wire_confounds(plan: Plan, dataset: str) -> None:
    """Copy `confounds` into align and evaluate: the cohort defaults to the fMRI dataset, and the genetic PCs are
    computed in the genetics stage (fitted on train) unless a `genetics pca` table is given."""
    cfg = plan.config
    k = copy.deepcopy(cfg.confounds)
    if not k.enabled:
        return
    k.cohort = _given(k.cohort) if k.cohort else dataset
    if k.pcs:
        k.pcs = _given(k.pcs)
    elif k.genetic_pcs:
        if not (plan.runs["genetics"] and cfg.genetics.kind == "genotype_matrix"):
            raise BrainmmError("pipeline config field 'confounds.pcs': confounds.genetic_pcs needs genetic PCs; the "
                               "pipeline computes them only in the genetics stage with genetics.kind "
                               "genotype_matrix, so give a `brainmm genetics pca` table here")
        k.pcs = _inside(plan.out, PCS_OUT)
        plan.genetic_pcs = True
    cfg.confounds = k
    cfg.align.confounds, cfg.evaluate.confounds = copy.deepcopy(k), copy.deepcopy(k)


def _wire_matrix(plan: Plan, split: str) -> None:
    m = plan.config.genetics.matrix
    if m.split:
        m.split = _given(m.split)
    else:
        m.split = split
    if not any((m.vcf, m.bed, m.pgen, m.bgen)):
        if not plan.runs["simulate"]:
            raise BrainmmError("pipeline config fields 'genetics.matrix.vcf' / 'genetics.matrix.bed': give the "
                               "genotypes (a VCF/BCF, a PLINK .bed or .pgen, or a BGEN) of the real cohort")
        m.vcf = str(plan.cohort_dir / "genotypes.vcf.gz")
    for key in ("vcf", "bed", "pgen", "bgen", "sample", "variants", "regions", "cohort", "pgs_weights"):
        if getattr(m, key):
            setattr(m, key, _given(getattr(m, key)))


def _wire_dna(plan: Plan) -> None:
    cfg = plan.config
    d = cfg.genetics.dna
    simulated = {"vcf": "haplotypes.vcf.gz", "fasta": "reference.fa", "regions": "regions.bed"}
    for key, filename in simulated.items():
        value = getattr(d.inputs, key)
        if value:
            setattr(d.inputs, key, _given(value))
        elif plan.runs["simulate"] and cfg.simulate.write_sequences:
            setattr(d.inputs, key, str(plan.cohort_dir / filename))
        else:
            hint = ("; the simulated cohort has one with simulate.write_sequences: true"
                    if plan.runs["simulate"] else "")
            raise BrainmmError(f"pipeline config field 'genetics.dna.inputs.{key}': required for genetics.kind dna"
                               f"{hint}")
    if not d.encoder.path:
        raise BrainmmError("pipeline config field 'genetics.dna.encoder.path': genetics.kind dna needs a local DNA "
                           "model folder")
    d.encoder.path = _given(d.encoder.path)
    if d.inputs.cohort:
        d.inputs.cohort = _given(d.inputs.cohort)
