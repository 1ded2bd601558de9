"""The given input paths of a pipeline plan, checked for the kind of output each field expects (before any stage)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from brainmm.pipeline.plan import Plan

MATRIX_FILES = ("vcf", "bed", "pgen", "bgen", "sample", "variants", "regions", "cohort", "pgs_weights")
SEQUENCE_FILES = ("vcf", "bgen", "sample", "fasta", "regions", "cohort")
INGEST_FILES = ("atlas", "atlas_labels", "coords", "split_from")


def _table(path: str) -> str | None:
    """Why `path` is not an embedding table (`<stem>.safetensors` + `<stem>.json`), or None."""
    from brainmm.embeddings import _with, table_stem

    stem = table_stem(path)
    missing = [ext for ext in (".safetensors", ".json") if not _with(stem, ext).is_file()]
    if not missing:
        return None
    if stem.is_dir():
        found = sorted({p.name[: -len(".safetensors")] for p in stem.glob("*.safetensors")})
        hint = f" (it holds the tables {found[:5]}: name one, e.g. {stem / found[0]})" if found else ""
        return f"is a folder, expected an embedding table <stem>.safetensors + <stem>.json{hint}"
    return f"is not an embedding table ({' and '.join(str(_with(stem, e)) for e in missing)} not found)"


def _dataset(path: str) -> str | None:
    """Why `path` is not an ingested fMRI dataset folder (with manifest.json), or None."""
    p = Path(path)
    if (p / "manifest.json").is_file():
        return None
    if p.is_file():
        return "is a file, expected an ingested fMRI dataset folder (`brainmm fmri ingest`; a cohort table goes " \
               "in data.fmri_cohort)"
    return "is not an ingested fMRI dataset folder (no manifest.json; `brainmm fmri ingest` writes one)"


def _model(path: str) -> str | None:
    """Why `path` is not a BrainLM checkpoint folder (config.json), or None."""
    p = Path(path)
    if (p / "config.json").is_file():
        return None
    if (p / "model" / "config.json").is_file():
        return f"is a pretrain run folder, expected its BrainLM checkpoint folder {p / 'model'}"
    if not p.exists():
        return "not found (expected a BrainLM checkpoint folder)"
    return "is not a BrainLM checkpoint folder (no config.json)"


def _file(path: str) -> str | None:
    p = Path(path)
    if p.is_file():
        return None
    return "is a folder, expected a file" if p.is_dir() else "not found"


def _folder(path: str) -> str | None:
    p = Path(path)
    if p.is_dir():
        return None
    return "is a file, expected a model folder" if p.is_file() else "not found (expected a model folder)"


def _cohort(path: str) -> str | None:
    """A cohort: an fMRI dataset folder or a table file."""
    return None if Path(path).is_file() else _dataset(path)


def input_problems(plan: Plan) -> list[str]:
    """One line per given input path that is missing or not the kind of output its field expects."""
    cfg, runs = plan.config, plan.runs
    checks: list[tuple[str, str, Callable[[str], str | None]]] = []
    if not runs["ingest"]:
        checks.append(("data.fmri_dataset", str(plan.fmri_dataset), _dataset))
    elif not runs["simulate"] and plan.fmri_cohort is not None:
        checks.append(("data.fmri_cohort", str(plan.fmri_cohort), _file))
    if runs["ingest"] and not runs["simulate"]:  # (the simulated cohort brings its own coords.tsv)
        i = cfg.ingest
        checks += [(f"ingest.{k}", str(getattr(i, k)), _file) for k in INGEST_FILES if getattr(i, k)]
        if i.stats_from:
            checks.append(("ingest.stats_from", str(i.stats_from), _dataset))
    if not runs["pretrain"] and plan.brain_model is not None and (runs["embed"] or getattr(cfg.align.towers.brain, "checkpoint", "")):
        checks.append(("embed.model", str(plan.brain_model), _model))
    a, v = cfg.align, cfg.evaluate
    if a.data.brain and not runs["embed"] and cfg.brain_inputs == ["brainlm"]:
        checks.append(("align.data.brain", a.data.brain, _table))
    if not runs["genetics"]:
        checks += [(f"align.data.genetics.{m}", t, _table) for m, t in a.data.genetics.items()]
    elif cfg.genetics.kind == "genotype_matrix" and not runs["simulate"]:
        m = cfg.genetics.matrix
        checks += [(f"genetics.matrix.{k}", getattr(m, k), _file) for k in MATRIX_FILES if getattr(m, k)]
    elif cfg.genetics.kind == "dna":
        d = cfg.genetics.dna
        checks += [(f"genetics.dna.inputs.{k}", getattr(d.inputs, k), _file) for k in SEQUENCE_FILES
                   if getattr(d.inputs, k) and not (runs["simulate"] and cfg.simulate.write_sequences)]
        if d.encoder.path:
            checks.append(("genetics.dna.encoder.path", d.encoder.path, _folder))
    if a.data.split and Path(a.data.split) != plan.fmri_dataset / "split.csv":
        checks.append(("align.data.split", a.data.split, _file))
    if runs["evaluate"]:
        if v.data.brain_fc and not runs["connectivity"]:
            checks.append(("evaluate.data.brain_fc", v.data.brain_fc, _table))
        if v.data.brain and v.data.brain != cfg.embed.out:
            checks.append(("evaluate.data.brain", v.data.brain, _table))
        if v.data.cohort and Path(v.data.cohort) != plan.fmri_dataset:
            checks.append(("evaluate.data.cohort", v.data.cohort, _cohort))
    k = cfg.confounds
    if k.enabled:
        if k.cohort and Path(k.cohort) != plan.fmri_dataset:
            checks.append(("confounds.cohort", k.cohort, _cohort))
        if k.pcs and not plan.genetic_pcs:
            checks.append(("confounds.pcs", k.pcs, _table))  # a `brainmm genetics pca` table
    return [f"{field} {path} {why}" for field, path, check in checks if (why := check(path))]
