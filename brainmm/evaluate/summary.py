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


def _p(row: pd.Series | None) -> str:
    """A permutation p-value cell ('–' when none was computed)."""
    if row is None or row.get("p_value") is None or not math.isfinite(float(row["p_value"])):
        return "–"
    return f"{float(row['p_value']):.3g}"


def _pick(rows: pd.DataFrame, **match: Any) -> pd.Series | None:
    for key, value in match.items():
        rows = rows[rows[key] == value]
    return rows.iloc[0] if len(rows) else None


def _retrieval_table(rows: pd.DataFrame, ks: list[int]) -> list[str]:
    """One line per (direction, level): R@k, MRR and median rank with CI and chance, and the K-way top-1."""
    head = ["direction", "level", "N", *[f"R@{k} [95% CI] (chance)" for k in ks], "MRR [95% CI] (chance)",
            "median rank (chance)", "p R@1 / MRR (permutation)"]
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
        cells += [f"{_ci(mrr)} ({_num(mrr['chance'])})", f"{_num(med['value'], 0)} ({_num(med['chance'], 0)})",
                  f"{_p(_pick(group, metric='R_at_1'))} / {_p(mrr)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


ALPHA = 0.05


def verdict_lines(table: pd.DataFrame, modalities: list[str]) -> list[str]:
    """One verdict per modality from the test split's permutation p-values (never from an interval's end): the
    first held-out correlation and MRR in both directions, Bonferroni over those three tests."""
    test = table[(table["section"] == "retrieval") & table["variant"].isna() & (table["split"] == "test")
                 & (table["model"] == "aligned")]
    lines = []
    for m in modalities:
        r1 = _pick(test, direction=f"brain_{m}", metric="canonical_corr_1")
        mrrs = [_pick(test, direction=d, level="subject", metric="mrr") for d in (f"brain_to_{m}", f"{m}_to_brain")]
        ps = [float(x["p_value"]) for x in [r1, *mrrs] if x is not None and math.isfinite(float(x["p_value"]))]
        if not ps:
            continue
        p_min = min(1.0, len(ps) * min(ps))
        n = int((r1 if r1 is not None else mrrs[0])["n"])
        detail = (f"r = {_ci(r1)}, p = {_p(r1)}; " if r1 is not None else "") + "MRR " + ", ".join(
            f"{x['direction']} {_num(x['value'])} (chance {_num(x['chance'])}, p = {_p(x)})"
            for x in mrrs if x is not None)
        if p_min < ALPHA:
            lines.append(f"- **{m}: held-out association** (test, N = {n}): {detail}; Bonferroni p = {p_min:.3g}.")
        else:
            lines.append(f"- **{m}: no detectable link at this N** (test, N = {n}, Bonferroni p = {p_min:.3g}): "
                         f"{detail}.")
    if not lines:
        return []
    return ["", "## Verdict (test split)", "",
            f"A link is claimed only when a permutation test over test pairings (shuffled within site x ancestry "
            f"cells when confounds are set) rejects at {ALPHA} after Bonferroni over the first held-out canonical "
            "correlation and MRR in both directions; intervals describe size, not significance.", "", *lines]


def correlation_lines(table: pd.DataFrame) -> list[str]:
    """Held-out correlation of each paired dimension: the model (CCA of its train projections) and the baselines."""
    rows = table[table["metric"].astype(str).str.startswith("canonical_corr_") & (table["split"] == "test")
                 & table["variant"].isna()]
    if not len(rows):
        return []
    lines = ["", "## Held-out correlation of paired dimensions (test split)", "",
             "The model: CCA fitted on the train subjects' shared-space projections (size chosen on val); CCA / PLS "
             "baselines: their own canonical pairs. p: one-sided permutation p-value of the test pairing.", "",
             "| model | sides | metric | r [95% CI] | p (permutation) |", "|---|---|---|---|---|"]
    for row in rows.itertuples(index=False):
        lines.append(f"| {row.model} | {row.direction} | {row.metric} | {_ci(pd.Series(row._asdict()))} | "
                     f"{_p(pd.Series(row._asdict()))} |")
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
             "| retrieval | direction | R@1 [95% CI] | chance | MRR [95% CI] | chance | p MRR |",
             "|---|---|---|---|---|---|---|"]
    for (variant, direction), group in pd.concat([adjusted, variants, only]).groupby(["variant", "direction"],
                                                                                     sort=False):
        r1, mrr = _pick(group, metric="R_at_1"), _pick(group, metric="mrr")
        if r1 is not None and mrr is not None:
            lines.append(f"| {variant} | {direction} | {_ci(r1)} | {_num(r1['chance'])} | {_ci(mrr)} | "
                         f"{_num(mrr['chance'])} | {_p(mrr)} |")
    return lines


def render_summary(table: pd.DataFrame, counts: dict[str, Any], context: dict[str, Any], ks: list[int]) -> str:
    """Markdown summary: data sizes, retrieval per split, probes and baselines (values with CI and chance)."""
    level_pct = round(100 * context["level"])
    lines = [
        f"# brainmm evaluation of align run `{context['align_run_id']}`", "",
        f"Align folder `{context['align_dir']}`; genetics modalities: {', '.join(context['modalities'])}. "
        f"Intervals are {level_pct}% CIs: for retrieval a bootstrap over test subjects drawn on both sides (queries "
        "and gallery, ranks recomputed in each resample), for the rest a percentile bootstrap over subjects; chance is "
        "the exact expectation of each metric under a random ranking (retrieval) or a majority/mean predictor "
        "(probes). Whether a value is above chance is decided by the permutation p-value over test pairings, not by "
        "an interval's end.", "",
        "## Data", "", "| split | subjects | brain rows | " + " | ".join(
            f"{m} subjects | paired with {m}" for m in context["modalities"]) + " |",
        "|" + "---|" * (3 + 2 * len(context["modalities"])),
    ]
    for split in ("train", "val", "test"):
        cells = [split, str(counts.get(f"{split}/subjects", 0)), str(counts.get(f"{split}/brain_rows", 0))]
        for m in context["modalities"]:
            cells += [str(counts.get(f"{split}/{m}_subjects", 0)), str(counts.get(f"{split}/paired_{m}", 0))]
        lines.append("| " + " | ".join(cells) + " |")

    lines += verdict_lines(table, list(context["modalities"]))
    retrieval = table[(table["section"] == "retrieval") & table["variant"].isna() & table["level"].notna()]
    for split in dict.fromkeys(retrieval["split"]):
        selection = (" The val split chose the model (best epoch, early stopping): its numbers are optimistic; "
                     "report the test split." if split == "val" else "")
        lines += ["", f"## Retrieval ({split} split{', used for model selection' if split == 'val' else ''}, shared "
                      "space, cosine similarity)", "",
                  selection.lstrip() + (" " if selection else "") + "Subject level: recordings of a subject averaged, one candidate per subject. Recording level: every "
                  "recording is a query (brain_to_*), a hit is any recording of the subject (*_to_brain). "
                  "K-way: top-1 among K random subjects, mean over repeats.", ""]
        lines += _retrieval_table(retrieval[retrieval["split"] == split], ks)

    lines += correlation_lines(table)
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
                  "| model | direction | R@1 [95% CI] | chance | MRR [95% CI] | chance | median rank (chance) | p MRR |",
                  "|---|---|---|---|---|---|---|---|"]
        for (model, direction), group in rows.groupby(["model", "direction"], sort=False):
            r1, mrr, med = (_pick(group, metric=k) for k in ("R_at_1", "mrr", "median_rank"))
            if r1 is None or mrr is None or med is None:
                continue
            lines.append(f"| {model} | {direction} | {_ci(r1)} | {_num(r1['chance'])} | {_ci(mrr)} | "
                         f"{_num(mrr['chance'])} | {_num(med['value'], 0)} ({_num(med['chance'], 0)}) | {_p(mrr)} |")
        other = baselines[baselines["level"].isna() & ~baselines["metric"].astype(str).str.startswith("canonical_corr_")]
        if len(other):
            lines += ["", "| model | sides | metric | value [95% CI] | chance | p (permutation) |",
                      "|---|---|---|---|---|---|"]
            for row in other.itertuples(index=False):
                lines.append(f"| {row.model} | {row.direction} | {row.metric} | {_ci(pd.Series(row._asdict()))} | "
                             f"{_num(row.chance)} | {_num(row.p_value)} |")
    return "\n".join(lines) + "\n"
