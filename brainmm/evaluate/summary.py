"""The Markdown summary of an evaluation (summary.md): data sizes, retrieval, probes and baselines, each value with
its 95% CI and its chance level."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from brainmm.evaluate.figures import MAIN_PROBE_METRIC


def _num(x: Any, digits: int = 3) -> str:
    if x is None or not math.isfinite(float(x)):
        return "–"
    return f"{float(x):.{digits}f}"


def _ci(row: pd.Series) -> str:
    return f"{_num(row['value'])} [{_num(row['ci_low'])}, {_num(row['ci_high'])}]"


def _pick(rows: pd.DataFrame, **match: Any) -> pd.Series | None:
    for key, value in match.items():
        rows = rows[rows[key] == value]
    return rows.iloc[0] if len(rows) else None


def _retrieval_table(rows: pd.DataFrame, ks: list[int]) -> list[str]:
    """One line per (direction, level): R@k, MRR and median rank with CI and chance, and the K-way top-1."""
    head = ["direction", "level", "N", *[f"R@{k} [95% CI] (chance)" for k in ks], "MRR [95% CI] (chance)",
            "median rank (chance)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (direction, level), group in rows.groupby(["direction", "level"], sort=False):
        if level.endswith("way"):
            top1 = _pick(group, metric="top1")
            lines.append(f"| {direction} | {level} top-1 | {int(top1['n'])} | {_ci(top1)} ({_num(top1['chance'])})"
                         + " |" * (len(head) - 3))
            continue
        cells = [direction, level, str(int(group["n"].iloc[0]))]
        for k in ks:
            r = _pick(group, metric=f"R_at_{k}")
            cells.append(f"{_ci(r)} ({_num(r['chance'])})")
        mrr, med = _pick(group, metric="mrr"), _pick(group, metric="median_rank")
        cells += [f"{_ci(mrr)} ({_num(mrr['chance'])})", f"{_num(med['value'], 0)} ({_num(med['chance'], 0)})"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def confound_lines(table: pd.DataFrame) -> list[str]:
    """Adjusted vs unadjusted test retrieval, within-stratum retrieval and `confounds_only` (confounds set)."""
    variants = table[(table["section"] == "retrieval") & table["variant"].notna()]
    if not len(variants):
        return []
    adjusted = table[(table["section"] == "retrieval") & table["variant"].isna() & (table["split"] == "test")
                     & (table["level"] == "subject")].assign(variant="adjusted")
    only = table[(table["model"] == "confounds_only") & (table["level"] == "subject")].assign(variant="confounds_only")
    lines = ["", "## Confounds (test split, subject level)", "",
             "Adjusted: inputs residualised on the confounds (fitted on train) before alignment; unadjusted: the same "
             "alignment trained without adjustment; within_<stratum>: candidates restricted to the query's stratum "
             "(chance = mean 1/stratum size); confounds_only: retrieval from what each modality reveals about the "
             "confounds.", "",
             "| retrieval | direction | R@1 [95% CI] | chance | MRR [95% CI] | chance |", "|---|---|---|---|---|---|"]
    for (variant, direction), group in pd.concat([adjusted, variants, only]).groupby(["variant", "direction"],
                                                                                     sort=False):
        r1, mrr = _pick(group, metric="R_at_1"), _pick(group, metric="mrr")
        if r1 is not None and mrr is not None:
            lines.append(f"| {variant} | {direction} | {_ci(r1)} | {_num(r1['chance'])} | {_ci(mrr)} | "
                         f"{_num(mrr['chance'])} |")
    return lines


def render_summary(table: pd.DataFrame, counts: dict[str, Any], context: dict[str, Any], ks: list[int]) -> str:
    """Markdown summary: data sizes, retrieval per split, probes and baselines (values with CI and chance)."""
    level_pct = round(100 * context["level"])
    lines = [
        f"# brainmm evaluation of align run `{context['align_run_id']}`", "",
        f"Align folder `{context['align_dir']}`; genetics modalities: {', '.join(context['modalities'])}. "
        f"Intervals are {level_pct}% percentile bootstrap CIs over subjects; chance is the exact expectation of "
        "each metric under a random ranking (retrieval) or a majority/mean predictor (probes).", "",
        "## Data", "", "| split | subjects | brain rows | " + " | ".join(
            f"{m} subjects | paired with {m}" for m in context["modalities"]) + " |",
        "|" + "---|" * (3 + 2 * len(context["modalities"])),
    ]
    for split in ("train", "val", "test"):
        cells = [split, str(counts.get(f"{split}/subjects", 0)), str(counts.get(f"{split}/brain_rows", 0))]
        for m in context["modalities"]:
            cells += [str(counts.get(f"{split}/{m}_subjects", 0)), str(counts.get(f"{split}/paired_{m}", 0))]
        lines.append("| " + " | ".join(cells) + " |")

    retrieval = table[(table["section"] == "retrieval") & table["variant"].isna()]
    for split in dict.fromkeys(retrieval["split"]):
        selection = (" The val split chose the model (best epoch, early stopping): its numbers are optimistic; "
                     "report the test split." if split == "val" else "")
        lines += ["", f"## Retrieval ({split} split{', used for model selection' if split == 'val' else ''}, shared "
                      "space, cosine similarity)", "",
                  selection.lstrip() + (" " if selection else "") + "Subject level: recordings of a subject averaged, one candidate per subject. Recording level: every "
                  "recording is a query (brain_to_*), a hit is any recording of the subject (*_to_brain). "
                  "K-way: top-1 among K random subjects, mean over repeats.", ""]
        lines += _retrieval_table(retrieval[retrieval["split"] == split], ks)

    lines += confound_lines(table)
    probes = table[table["section"] == "probe"]
    if len(probes):
        lines += ["", f"## Linear probes (subjects of {probes['split'].iloc[0]}; grouped cross-validation)", "",
                  "| target | task | representation | metric | value [95% CI] | chance | permuted labels (mean ± sd) | "
                  "n (dropped) |", "|---|---|---|---|---|---|---|---|"]
        for row in probes.itertuples(index=False):
            if row.metric != MAIN_PROBE_METRIC[row.task]:
                continue
            lines.append(f"| {row.target} | {row.task} | {row.representation} | {row.metric} | "
                         f"{_ci(pd.Series(row._asdict()))} | {_num(row.chance)} | {_num(row.perm_mean)} ± "
                         f"{_num(row.perm_std)} | {int(row.n)} ({int(row.n_dropped or 0)}) |")

    baselines = table[table["section"] == "baseline"]
    if len(baselines):
        aligned = retrieval[(retrieval["split"] == "test") & (retrieval["level"] == "subject")]
        rows = pd.concat([aligned, baselines[baselines["level"] == "subject"]])
        lines += ["", "## Baselines (fitted on train, scored on test; subject level)", "",
                  "| model | direction | R@1 [95% CI] | chance | MRR [95% CI] | chance | median rank (chance) |",
                  "|---|---|---|---|---|---|---|"]
        for (model, direction), group in rows.groupby(["model", "direction"], sort=False):
            r1, mrr, med = (_pick(group, metric=k) for k in ("R_at_1", "mrr", "median_rank"))
            if r1 is None or mrr is None or med is None:
                continue
            lines.append(f"| {model} | {direction} | {_ci(r1)} | {_num(r1['chance'])} | {_ci(mrr)} | "
                         f"{_num(mrr['chance'])} | {_num(med['value'], 0)} ({_num(med['chance'], 0)}) |")
        other = baselines[baselines["level"].isna()]
        if len(other):
            lines += ["", "| model | sides | metric | value [95% CI] | chance | p (permutation) |",
                      "|---|---|---|---|---|---|"]
            for row in other.itertuples(index=False):
                lines.append(f"| {row.model} | {row.direction} | {row.metric} | {_ci(pd.Series(row._asdict()))} | "
                             f"{_num(row.chance)} | {_num(row.p_value)} |")
    return "\n".join(lines) + "\n"
