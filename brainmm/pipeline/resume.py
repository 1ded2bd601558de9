"""`brainmm run --resume`: which finished stages can be reused, checked rather than assumed.

When a stage completes, `write_marker` records in its output (`<folder>/stage.json` or `<stem>.stage.json`) a
digest of its resolved config sections chained with the previous stage's digest, and the identities (size,
mtime) of its input files outside the output folder and of its own outputs. On resume, `reusable` walks the
planned stages in order and reuses each one whose marker still matches (same digest, inputs and outputs
unchanged); the first one that does not, and every stage after it, runs again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from brainmm.config import to_dict
from brainmm.io import atomic_write_json
from brainmm.pipeline.plan import BRAIN_TABLE, Plan

LOG = logging.getLogger("brainmm.pipeline")
MARKER_FORMAT = 2  # 2: digests of the non-default settings
# the config sections each stage reads (the wired copies in the plan: paths are absolute)
SECTIONS = {
    "simulate": ["simulate"], "ingest": ["ingest", "data"], "connectivity": ["connectivity"], "pretrain": ["pretrain"],
    "embed": ["embed"], "genetics": ["genetics", "confounds"],
    "align": ["align", "brain_inputs", "brain_fc_pca", "confounds"], "evaluate": ["evaluate"],
}
NOT_INPUTS = {"out", "output_dir", "cache_dir", "uri", "artifact_location", "tracking_uri", "align_dir"}


def _stem(path: str | Path) -> list[Path]:
    """The files of a table stem: `<stem>.*` and `<stem>_subjects.*` (the marker excluded)."""
    p = Path(path)
    found = [*p.parent.glob(p.name + ".*"), *p.parent.glob(p.name + "_subjects.*")]
    return sorted(f for f in found if f.is_file() and not f.name.endswith(".stage.json"))


def outputs(plan: Plan, stage: str) -> list[Path]:
    """What a stage writes: folders and table stems (a stem is a path without its suffix)."""
    c = plan.config
    if stage == "genetics":
        stems = [c.genetics.matrix.out if c.genetics.kind == "genotype_matrix" else c.genetics.dna.out]
        if plan.genetic_pcs:
            stems.append(c.confounds.pcs)
        return [Path(s) for s in stems]
    if stage == "align" and c.brain_inputs != ["brainlm"]:
        return [Path(c.align.output_dir), plan.out / BRAIN_TABLE]
    return [Path(p) for p in {
        "simulate": [plan.cohort_dir], "ingest": [plan.fmri_dataset, plan.out / "ingest.config.yaml"],
        "connectivity": [plan.connectivity], "pretrain": [c.pretrain.output_dir], "embed": [c.embed.out],
        "align": [c.align.output_dir], "evaluate": [c.evaluate.output_dir]}[stage]]


def marker(plan: Plan, stage: str) -> Path:
    """Where a stage's completion marker lives (in its first output)."""
    first = outputs(plan, stage)[0]
    return first / "stage.json" if stage in ("simulate", "ingest", "pretrain", "align", "evaluate") else \
        first.parent / f"{first.name}.stage.json"


def identity(path: Path) -> Any:
    """(size, mtime_ns) of a file; per-file identities of a folder or a table stem; None when missing."""
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.name != "stage.json")
    else:
        files = _stem(path)
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path if path.is_dir() else path.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _paths(value: Any, key: str = "") -> list[str]:
    """Absolute path strings in a config value (keys naming outputs, caches and tracking excluded)."""
    if key in NOT_INPUTS:
        return []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _paths(v, k)]
    if isinstance(value, list):
        return [p for v in value for p in _paths(v, key)]
    return [value] if isinstance(value, str) and value.startswith("/") else []


def inputs(plan: Plan, stage: str) -> dict[str, Any]:
    """Identities of the files a stage reads from outside the pipeline's folder (given inputs)."""
    c = plan.config
    values = {name: to_dict(getattr(c, name)) if hasattr(getattr(c, name), "__dataclass_fields__")
              else getattr(c, name) for name in SECTIONS[stage]}
    found = set(_paths(values))
    if stage == "ingest" and plan.fmri_cohort:
        found.add(str(plan.fmri_cohort))
    if stage == "align" and plan.connectivity and "connectivity" in c.brain_inputs:  # align's brain table reads it
        found.add(str(plan.connectivity))
    out = str(plan.out)
    return {p: identity(Path(p)) for p in sorted(found) if not (p == out or p.startswith(out + "/"))}


def settings(value: Any) -> Any:
    """A config value with every dataclass field still at its default left out (recursively), so a field added
    by a newer brainmm (at its default) does not make a finished stage look changed."""
    if not dataclasses.is_dataclass(value):
        return to_dict(value) if isinstance(value, (list, tuple, dict, Path)) else value
    out = {}
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if default is not dataclasses.MISSING and to_dict(v) == to_dict(default):
            continue
        v = settings(v)
        if not (isinstance(v, dict) and not v and dataclasses.is_dataclass(getattr(value, f.name))):
            out[f.name] = v
    return out


def digests(plan: Plan) -> dict[str, str]:
    """Per planned stage: SHA-256 of its config sections (values that differ from the defaults) chained with the
    previous stage's digest."""
    c, previous, result = plan.config, "", {}
    for stage in plan.stages:
        sections = {name: settings(getattr(c, name)) for name in SECTIONS[stage]}
        text = json.dumps({"format": MARKER_FORMAT, "previous": previous, "stage": stage, "config": sections},
                          sort_keys=True, default=str)
        previous = result[stage] = hashlib.sha256(text.encode()).hexdigest()
    return result


def write_marker(plan: Plan, stage: str, digest: str, record: dict[str, Any]) -> None:
    """Mark a finished stage (atomically, after its outputs are complete)."""
    atomic_write_json(marker(plan, stage), {
        "format": MARKER_FORMAT, "stage": stage, "digest": digest, "inputs": inputs(plan, stage),
        "outputs": {str(p): identity(p) for p in outputs(plan, stage)}, "record": record})


def _why_not(plan: Plan, stage: str, digest: str) -> tuple[str, dict[str, Any] | None]:
    """'' and the marker when the stage can be reused, else the reason."""
    path = marker(plan, stage)
    if not path.is_file():
        return "not finished", None
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"unreadable marker {path}", None
    if m.get("format") != MARKER_FORMAT or m.get("digest") != digest:
        return "its config (or an earlier stage's) changed", None
    for p, ident in m.get("inputs", {}).items():
        if identity(Path(p)) != ident:
            return f"input {p} changed", None
    for p, ident in m.get("outputs", {}).items():
        if identity(Path(p)) != ident:
            return f"output {p} changed or is missing", None
    return "", m


def reusable(plan: Plan) -> tuple[dict[str, dict[str, Any]], str]:
    """The leading finished stages whose marker matches ({stage: recorded record}), and why the next one runs."""
    found: dict[str, dict[str, Any]] = {}
    for stage, digest in digests(plan).items():
        why, m = _why_not(plan, stage, digest)
        if m is None:
            return found, f"{stage}: {why}"
        found[stage] = m["record"]
    return found, ""


def clear_outputs(plan: Plan, stage: str) -> None:
    """Remove a stage's earlier outputs inside the pipeline folder before it runs again (and its marker)."""
    out = plan.out.resolve()
    for p in outputs(plan, stage):
        if out not in Path(p).resolve().parents:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        elif p.is_file():
            p.unlink()
        else:
            for f in _stem(p):
                f.unlink()
    marker(plan, stage).unlink(missing_ok=True)
