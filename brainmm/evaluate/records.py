"""The evaluation's tidy records: MLflow metric names, the metric table (one row per metric, with CI and chance)
and the flat {name: value} dict that is logged."""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from alignment.stats import stat_name
from brainmm.errors import BrainmmError
from brainmm.tracking import sanitize_metric_name

# Columns of the metric table, in order. `name` is the MLflow metric name of `value`; the fields in FIELDS are
# logged next to it as `<name>_<field>` when they are finite.
COLUMNS = (
    "name", "section", "split", "model", "direction", "representation", "target", "task", "level", "metric",
    "value", "ci_low", "ci_high", "chance", "perm_mean", "perm_std", "p_value", "n", "n_candidates", "n_dropped",
    "variant",
)
FIELDS = ("ci_low", "ci_high", "chance", "perm_mean", "perm_std", "p_value")
MAX_NAME = 250  # MLflow's key length limit


def metric_part(value: Any, where: str) -> str:
    """A user-supplied name (e.g. a phenotype column) as one MLflow-safe name component; BrainmmError when it
    cannot be made one (empty, a '/', '.' or '..', surrounding spaces)."""
    text = str(value)
    clean = sanitize_metric_name(text)
    if not clean.strip() or "/" in clean or clean in (".", "..") or clean != clean.strip() or len(clean) > 100:
        raise BrainmmError(
            f"{where} {text!r}: cannot be made a valid MLflow metric name component (expected 1-100 characters of "
            "letters, digits, '_', '-', '.', ':' or inner spaces, no '/', not '.' or '..')"
        )
    return clean


def metric_parts(values: Iterable[Any], where: str) -> dict[str, str]:
    """`metric_part` of each value; two values that become the same name are an error."""
    parts: dict[str, str] = {}
    seen: dict[str, str] = {}
    for value in values:
        clean = metric_part(value, where)
        if clean in seen and seen[clean] != str(value):
            raise BrainmmError(f"{where}: {seen[clean]!r} and {str(value)!r} both become the MLflow name {clean!r}; "
                               "rename one of them")
        seen[clean] = str(value)
        parts[str(value)] = clean
    return parts


def record_name(record: Mapping[str, Any]) -> str:
    """MLflow name of a record:
    retrieval/[<split>/]<direction>/[<level>/]<metric>  (split omitted for test, level for subject level),
    retrieval/<variant>/<direction>/<metric> (test split, confounds: unadjusted, within_site, ...),
    probe/<representation>/<target>/<metric>, baseline/<model>/<direction or modality>/[<level>/]<metric>."""
    section, level = record["section"], record.get("level")
    if section == "retrieval" and record.get("variant"):
        parts = ["retrieval", record["variant"], record["direction"], record["metric"]]
    elif section == "retrieval":
        split = None if record["split"] == "test" else record["split"]
        parts = ["retrieval", split, record["direction"], None if level == "subject" else level, record["metric"]]
    elif section == "probe":
        target = metric_part(record["target"], "probes.targets")
        parts = ["probe", record["representation"], target, record["metric"]]
    elif section == "baseline":
        parts = ["baseline", record["model"], record["direction"], None if level in (None, "subject") else level,
                 record["metric"]]
    else:
        raise ValueError(f"unknown record section {section!r}")
    return "/".join(str(p) for p in parts if p)


def metrics_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per metric (columns COLUMNS); duplicate names are an error."""
    rows = [{**{c: None for c in COLUMNS}, **{k: v for k, v in r.items() if k in COLUMNS}, "name": record_name(r)}
            for r in records]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("value", *FIELDS):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    dup = table["name"][table["name"].duplicated()].tolist()
    if dup:
        raise ValueError(f"evaluation records: duplicate metric names {dup[:5]}")
    return table


def flat_metrics(table: pd.DataFrame) -> dict[str, float]:
    """{name: value} plus `<name>_<field>` for every finite field; every name checked against MLflow's rules."""
    flat: dict[str, float] = {}
    for row in table.itertuples(index=False):
        flat[row.name] = float(row.value)
        for f in FIELDS:
            value = getattr(row, f)
            if value is not None and math.isfinite(value):
                flat[stat_name(row.name, f)] = float(value)
    for name in flat:
        check_metric_name(name)
    return flat


def flat_json(flat: dict[str, float]) -> dict[str, float | None]:
    """The MLflow metrics as strict JSON (`metrics_flat.json`): name -> value, non-finite values as null."""
    return {k: v if math.isfinite(v) else None for k, v in sorted(flat.items())}


def check_metric_name(name: str) -> str:
    """Raise BrainmmError when MLflow would reject `name` (characters, length, path-like forms)."""
    if sanitize_metric_name(name) != name or len(name) > MAX_NAME or posixpath.normpath(name) != name:
        raise BrainmmError(f"metric name {name!r}: MLflow would reject it (at most {MAX_NAME} characters of letters, "
                           "digits, '_', '-', '.', ':', ' ' and '/', no empty or '..' path parts)")
    return name
