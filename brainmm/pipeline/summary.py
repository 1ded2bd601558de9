"""The text summary `brainmm run` / `brainmm demo` print: retrieval with chance and CI, probes, baselines, timings,
and where the results are in MLflow."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from brainmm.pipeline.run import PipelineResult

RETRIEVAL_METRICS = ("R_at_1", "R_at_5", "R_at_10", "mrr", "median_rank")
CONFOUND_VARIANTS = ("unadjusted", "within_site", "within_ancestry_cluster")


def ui_command(uri: str) -> str:
    """The `mlflow ui` command for a tracking URI (a server URI is opened directly)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _cell(row: Any, digits: int = 3) -> str:
    """`value [ci_low, ci_high]`."""
    return f"{_fmt(row['value'], digits)} [{_fmt(row['ci_low'], digits)}, {_fmt(row['ci_high'], digits)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]]


def retrieval_lines(table: pd.DataFrame, modalities: list[str]) -> list[str]:
    """Test-split, subject-level retrieval of the trained model, both directions, with CI and chance."""
    t = table[(table["section"] == "retrieval") & (table["split"] == "test") & (table["level"] == "subject")
              & table["variant"].isna()]
    rows = []
    for m in modalities:
        for direction in (f"brain_to_{m}", f"{m}_to_brain"):
            d = t[t["direction"] == direction].set_index("metric")
            if d.empty:
                continue
            cells = []
            for metric in RETRIEVAL_METRICS:
                if metric in d.index:
                    r = d.loc[metric]
                    digits = 0 if metric == "median_rank" else 3
                    cells.append(f"{_cell(r, digits)} ({_fmt(r['chance'], digits)})")
                else:
                    cells.append("-")
            n = d.iloc[0]["n"]
            rows.append([direction.replace("_to_", " -> "), str(int(n)) if n == n else "-", *cells])
    return _table(["direction", "N", *RETRIEVAL_METRICS], rows)


def baseline_lines(table: pd.DataFrame, modalities: list[str]) -> list[str]:
    """R@1 and MRR on the test split: the trained model next to every baseline (brain -> genetics direction)."""
    rows = []
    for m in modalities:
        direction = f"brain_to_{m}"
        trained = table[(table["section"] == "retrieval") & (table["split"] == "test") & (table["level"] == "subject")
                        & (table["direction"] == direction) & table["variant"].isna()]
        base = table[(table["section"] == "baseline") & (table["direction"] == direction)]
        groups = [("trained model", trained)] + [(name, base[base["model"] == name])
                                                 for name in dict.fromkeys(base["model"])]
        for name, rows_of in groups:
            d = rows_of.set_index("metric")
            if "R_at_1" not in d.index:
                continue
            r1, mrr = d.loc["R_at_1"], d.loc["mrr"] if "mrr" in d.index else None
            rows.append([name, direction.replace("_to_", " -> "), _cell(r1), _fmt(r1["chance"]),
                         _cell(mrr) if mrr is not None else "-"])
    return _table(["model", "direction", "R@1 [95% CI]", "chance", "MRR [95% CI]"], rows)


def probe_lines(table: pd.DataFrame) -> list[str]:
    """Probe scores (balanced accuracy / R2) per target and representation, with chance and permuted labels."""
    t = table[(table["section"] == "probe") & table["metric"].isin(["balanced_accuracy", "r2"])]
    rows = [[r["target"], r["representation"], r["metric"], _cell(r), _fmt(r["chance"]), _fmt(r["perm_mean"])]
            for _, r in t.iterrows()]
    return _table(["target", "representation", "metric", "value [95% CI]", "chance", "permuted"], rows)


def confound_lines(table: pd.DataFrame) -> list[str]:
    """R@1 and MRR of the unadjusted and within-stratum retrieval variants (confounds set), with CI and chance."""
    t = table[(table["section"] == "retrieval") & table["variant"].notna()]
    rows = []
    for (variant, direction), group in t.groupby(["variant", "direction"], sort=False):
        d = group.set_index("metric")
        if "R_at_1" not in d.index or "mrr" not in d.index:
            continue
        r1, mrr = d.loc["R_at_1"], d.loc["mrr"]
        rows.append([variant, direction.replace("_to_", " -> "), _cell(r1), _fmt(r1["chance"]), _cell(mrr),
                     _fmt(mrr["chance"])])
    return _table(["retrieval", "direction", "R@1 [95% CI]", "chance", "MRR [95% CI]", "chance"], rows)


def headline_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The evaluation metrics copied to the pipeline's parent run: test retrieval and the baselines' R@1 / MRR."""
    keep = {}
    for name, value in metrics.items():
        head = name.split("/")
        if head[0] == "retrieval" and len(head) == 3 and \
                head[2].split("_ci")[0].split("_chance")[0].split("_p_value")[0] in RETRIEVAL_METRICS:
            keep[name] = value
        elif head[0] == "retrieval" and len(head) >= 4 and head[1] in CONFOUND_VARIANTS \
                and head[-1].split("_ci")[0].split("_chance")[0] in ("R_at_1", "mrr"):
            keep[name] = value
        elif head[0] == "baseline" and len(head) == 4 and head[3].startswith(("R_at_1", "mrr")):
            keep[name] = value
    return keep


def render_summary(result: PipelineResult) -> str:
    """The text printed at the end of `brainmm run` / `brainmm demo`."""
    lines = [f"brainmm pipeline: {result.output_dir}"]
    ev = result.evaluation
    if ev is not None:
        modalities = sorted({d.split("_to_")[-1] for d in ev.table["direction"].dropna() if d.startswith("brain_to_")})
        counts = ev.counts
        sizes = ", ".join(f"{s} {counts.get(f'{s}/subjects', 0)}" for s in ("train", "val", "test"))
        lines += ["", f"Subjects: {sizes}.",
                  "", "Retrieval, test split (subject level): value [95% CI] (chance)", *retrieval_lines(ev.table, modalities)]
        verdict = ev.summary.split("## Verdict (test split)", 1)  # from permutation tests (docs/evaluation.md)
        if len(verdict) == 2:
            lines += ["", "Verdict, test split (permutation tests over test pairings):",
                      *[x for x in verdict[1].split("\n## ")[0].splitlines() if x.startswith("- ")]]
        probes = probe_lines(ev.table)
        if len(probes) > 2:
            lines += ["", "Linear probes (val + test subjects, grouped CV): value [95% CI], chance, permuted-label mean",
                      *probes]
        lines += ["", "Baselines, test split (fitted on train)", *baseline_lines(ev.table, modalities)]
        confounds = confound_lines(ev.table)
        if len(confounds) > 2:
            lines += ["", "Confounds, test split: adjusted (inputs residualised, the rows above) vs unadjusted, "
                      "within-stratum retrieval", *confounds]
        explained = ev.summary.split("## What carries the link", 1)  # the explain section (docs/explain.md)
        if len(explained) == 2:
            lines += ["", "What carries the link" + explained[1].rstrip()]
    lines += ["", "Stages (wall / CPU seconds): " + ", ".join(
        f"{s} {r.seconds:.0f}/{r.cpu_seconds:.0f}" for s, r in result.stages.items())
        + f"; total {result.seconds:.0f}/{result.cpu_seconds:.0f}"]
    lines += ["", f"MLflow: experiment {result.experiment!r}, pipeline run {result.run_id} (stage runs nested under it)",
              f"  {ui_command(result.tracking_uri)}"]
    return "\n".join(lines)
