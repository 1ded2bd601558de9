"""The baselines of `brainmm evaluate`, each registered in one place: its `baselines.methods` name, what it fits
(`alignment.baselines` models, fitted on train and scored on test), the table it reads, the split sizes it needs
(preflight) and its docs row (tests/test_evaluate_baseline_registry.py checks configs/evaluate.yaml and
docs/evaluation.md against this list). The config, the baselines, the pipeline's plan, cost and preflight read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from brainmm.preflight import BASELINE_NEEDS, Need

Table = Literal["brain", "connectivity"]
TABLE_PREFIX = {"brain": "", "connectivity": "fc_"}  # model-name prefix of the records of each table


@dataclass(frozen=True)
class Baseline:
    """One baseline: `fit` names the library models it runs on `table` (brain: the input brain table; connectivity:
    `data.brain_fc`, which `brainmm run` computes in its connectivity stage)."""

    name: str
    fit: tuple[str, ...]
    table: Table
    doc: str  # its row in docs/evaluation.md (what it is)
    needs: tuple[Need, ...] = BASELINE_NEEDS


BASELINES: dict[str, Baseline] = {}


def register_baseline(baseline: Baseline) -> Baseline:
    """Add a baseline (its name must be new)."""
    if baseline.name in BASELINES:
        raise ValueError(f"baseline {baseline.name!r} is already registered")
    BASELINES[baseline.name] = baseline
    return baseline


RIDGE = ("ridge_brain_to_genetics", "ridge_genetics_to_brain")
for _name, _fit, _doc in (
        ("cca", ("cca",), "PCA -> CCA on the input tables (sizes chosen on val)"),
        ("pls", ("pls",), "PCA -> PLS on the input tables"),
        ("ridge", RIDGE, "ridge maps between the input tables, both directions"),
        ("random_head", ("random_head",), "the trained heads re-initialised (seeded)")):
    register_baseline(Baseline(_name, _fit, "brain", _doc))
for _name, _fit in (("cca", ("cca",)), ("pls", ("pls",)), ("ridge", RIDGE)):
    register_baseline(Baseline(f"fc_{_name}", _fit, "connectivity",
                               f"{_name} on the connectivity table (data.brain_fc), after a train-fitted PCA"))


def baseline_names() -> tuple[str, ...]:
    """Every registered name, in registration order (the default `baselines.methods`)."""
    return tuple(BASELINES)


def on_table(methods: Iterable[str], table: Table) -> list[Baseline]:
    """The baselines of `methods` that read `table`."""
    return [BASELINES[m] for m in methods if BASELINES[m].table == table]


def connectivity_methods(methods: Iterable[str]) -> list[str]:
    """The names in `methods` that need the connectivity table."""
    return [b.name for b in on_table(methods, "connectivity")]


def baseline_needs(methods: Iterable[str]) -> tuple[Need, ...]:
    """The split sizes the baselines `methods` need (each need once)."""
    return tuple(dict.fromkeys(n for m in methods for n in BASELINES[m].needs))
