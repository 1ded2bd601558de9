"""The explain section of an evaluation (and `brainmm explain`): the align run's inputs and shared spaces turned
into link-score tables of variants, genes, edges, parcels and networks (brainmm.explain), figures, metrics and a
short top-k summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from brainmm.evaluate.config import EvaluateConfig
from brainmm.evaluate.inputs import EvalInputs, Side
from brainmm.evaluate.preflight import skip_warning
from brainmm.explain.compute import MODEL, Features, Space, explain_features, top_rows

LOG = logging.getLogger("brainmm.evaluate")


@dataclass
class ExplainOutput:
    """Tables (name -> frame, written as explain/<name>.tsv), figures (path -> figure), metrics, summary text."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    summary: str = ""


def _held_out(inputs: EvalInputs, m: str, splits: list[str], need: list[Side]) -> dict[str, list[str]]:
    """Per held-out split, its paired subjects that also have a row in every table of `need`."""
    out = {}
    for split in splits:
        subjects = [s for s in inputs.subjects(split, m) if all(s in side.subject_set for side in need)]
        if subjects:
            out[split] = subjects
    return out


def _too_small(inputs: EvalInputs, m: str, brain: Side | None) -> list[str]:
    """Why a CCA baseline on `brain` cannot be explained for `m` (the evaluation's baseline needs); empty if it can."""
    from brainmm.preflight import BASELINE_NEEDS, shortfalls

    if brain is None:
        return ["no table to fit it on (set data.brain_fc to a connectivity table, data.brain for cca)"]
    counts = {s: len(inputs.subjects(s, m, shared=False, brain=brain)) for s in ("train", "test")}
    return shortfalls(counts, BASELINE_NEEDS)


def _rows(side: Side, held: dict[str, list[str]]) -> np.ndarray:
    return np.vstack([side.subject_level(s, False) for s in held.values()]).astype(np.float64)


def _model_space(inputs: EvalInputs, m: str, held: dict[str, list[str]]) -> Space:
    _, b_train, g_train = inputs.pairs("train", m)
    b = np.vstack([inputs.shared[split]["brain"].subject_level(s, True) for split, s in held.items()])
    g = np.vstack([inputs.shared[split][m].subject_level(s, True) for split, s in held.items()])
    return Space(b_train.astype(np.float64), g_train.astype(np.float64), b.astype(np.float64), g.astype(np.float64))


def _cca_space(inputs: EvalInputs, cfg: EvaluateConfig, m: str, brain: Side, held: dict[str, list[str]]) -> Space:
    """PCA -> CCA on train (sizes chosen on val, as the `cca` baseline of the evaluation), held-out rows projected."""
    from alignment.baselines import CCABaseline, select_cca

    _, b_train, g_train = inputs.pairs("train", m, shared=False, brain=brain)
    _, b_val, g_val = inputs.pairs("val", m, shared=False, brain=brain)
    k = cfg.baselines.n_components
    model = (select_cca("cca", b_train, g_train, b_val, g_val, k) if len(b_val) >= 3
             else CCABaseline("cca", n_components=k).fit(b_train, g_train))
    u_train, v_train = model.transform(b_train, g_train)
    u, v = model.transform(_rows(brain, held), _rows(inputs.genetics[m], held))
    return Space(u_train, v_train, u, v, model.affine_map(1, g_train.shape[1], b_train.shape[1])[0])


def _head_table(inputs: EvalInputs) -> Side | None:
    """The brain table the align run's brain head was trained on (its data.brain, e.g. the pipeline's [BrainLM, FC
    PCA] table), else the evaluation's when its width matches the head; None without one."""
    from pathlib import Path

    from brainmm.evaluate.inputs import read_side

    path = inputs.run.config.data.brain
    if inputs.brain is not None and Path(inputs.brain.path) == Path(path or ""):
        return inputs.brain
    if path and Path(f"{path}.json").is_file():
        return read_side(path, "the align run's data.brain")
    width = getattr(inputs.projectors["brain"], "in_dim", None)
    return inputs.brain if inputs.brain is not None and inputs.brain.table.dim == width else None


def _fc_source(inputs: EvalInputs) -> Side | None:
    """The connectivity table whose columns are edges: data.brain_fc, or the brain input table when it is one."""
    if inputs.brain_fc is not None:
        return inputs.brain_fc
    meta = inputs.brain.table.meta if inputs.brain is not None else {}
    return inputs.brain if meta.get("kind") == "connectivity" and not meta.get("pca") else None


def _is_edges(side: Side) -> bool:
    """Whether a table's columns are the V(V-1)/2 edges of a connectivity matrix."""
    v = int(round((1 + np.sqrt(1 + 8 * side.table.dim)) / 2))
    return v * (v - 1) // 2 == side.table.dim and not side.table.meta.get("pca")


def _genetic_features(inputs: EvalInputs, cfg: EvaluateConfig, m: str, held: dict[str, list[str]]) -> Features:
    from brainmm.explain.features import assign_genes, read_genes, variant_columns

    side = inputs.genetics[m]
    table = variant_columns(side.path, side.table.meta, side.table.dim)
    name = ("variants" if len(inputs.modalities) == 1 else f"variants_{m}") if table is not None else f"{m}_features"
    units = {}
    if table is None:
        table = pd.DataFrame({"feature": np.arange(side.table.dim)})
    elif cfg.explain.genes:
        from alignment.attribution import units_from_labels

        table.insert(4, "gene", assign_genes(table, read_genes(cfg.explain.genes)).to_numpy())
        first = table["gene"].str.split(",").str[0].replace("", None).tolist()
        names, member = units_from_labels(first)
        if names:
            units["genes" if name == "variants" else f"genes_{m}"] = (pd.DataFrame({"gene": names}), member)
    train = sorted(s for s in side.subject_set if inputs.split_of.get(s) == "train")
    mean = side.subject_level(train, False).mean(axis=0).astype(np.float64) if train else None
    return Features(name, "genetics", _rows(side, held), table, units, inputs.projectors[m], mean)


def _edge_features(inputs: EvalInputs, cfg: EvaluateConfig, fc: Side, held: dict[str, list[str]]) -> Features:
    from alignment.attribution import units_from_labels, units_from_members
    from brainmm.explain.features import edge_parcels, parcel_table

    i, j, v = edge_parcels(fc.table.dim)
    dataset = fc.table.meta.get("dataset") or inputs.cohort_path or ""
    parcels = parcel_table(dataset, v, cfg.explain.networks)
    labels = parcels["label"].astype(str).to_numpy()
    edges = pd.DataFrame({"parcel_i": i, "parcel_j": j, "label_i": labels[i], "label_j": labels[j]})
    units = {"parcels": (parcels, units_from_members([np.flatnonzero((i == p) | (j == p)) for p in range(v)],
                                                     len(i)))}
    if "network" in parcels:
        net = parcels["network"].astype(str).to_numpy()
        edges["network_i"], edges["network_j"] = net[i], net[j]
        within = [a if a == b else None for a, b in zip(net[i], net[j])]
        names, member = units_from_labels(within)
        units["networks"] = (pd.DataFrame({"network": names}), member)
    projector = inputs.projectors["brain"] if fc is inputs.brain else None
    return Features("edges", "brain", _rows(fc, held), edges, units, projector)


def compute_explain(inputs: EvalInputs, cfg: EvaluateConfig) -> ExplainOutput:
    """Every table of the explain section for each genetics modality (one modality's tables are unprefixed)."""
    from brainmm.evaluate.baselines import fc_reduced

    e = cfg.explain
    out = ExplainOutput()
    fc = _fc_source(inputs)
    for m in inputs.modalities:
        brain = _head_table(inputs)
        brain = brain if brain is not None and brain is not fc else None
        need = [inputs.genetics[m]] + [s for s in (brain, fc) if s is not None]
        need += [inputs.brain] if "cca" in e.baselines and inputs.brain is not None else []
        held = _held_out(inputs, m, e.splits, need)
        n = sum(len(s) for s in held.values())
        if n < 4:
            skip_warning(f"explain for {m!r}", [f"{e.splits} have {n} subjects with every input table and shared-"
                                                f"space embeddings (need >= 4)"])
            continue
        spaces = {MODEL: _model_space(inputs, m, held)}
        for name, table in (("cca", inputs.brain), ("fc_cca", fc)):
            if name in e.baselines and (why := _too_small(inputs, m, table)):
                skip_warning(f"explain baseline {name} for {m!r}", why)
            elif name in e.baselines:  # fc_cca on the train-fitted FC PCA (as the evaluation's): no [N, edges] fit
                reduced = fc_reduced(inputs, cfg) if name == "fc_cca" and inputs.brain_fc is not None else table
                spaces[name] = _cca_space(inputs, cfg, m, reduced, held)
        feature_sets = [_genetic_features(inputs, cfg, m, held)]
        if fc is not None and _is_edges(fc):
            feature_sets.append(_edge_features(inputs, cfg, fc, held))
        elif fc is not None:  # e.g. PCA scores of connectivity: columns without parcels
            feature_sets.append(Features("fc_features", "brain", _rows(fc, held),
                                         pd.DataFrame({"feature": np.arange(fc.table.dim)})))
        if brain is not None:
            train = sorted(s for s in brain.subject_set if inputs.split_of.get(s) == "train")
            train_brain = brain.subject_level(train, False).mean(axis=0).astype(np.float64)
            feature_sets.append(Features("brain_features", "brain", _rows(brain, held),
                                         pd.DataFrame({"feature": np.arange(brain.table.dim)}), {},
                                         inputs.projectors["brain"], train_brain))
        suffix = "" if len(inputs.modalities) == 1 else f"_{m}"
        for feat in feature_sets:
            LOG.info("explain: %s (%d columns) on %d held-out subjects, methods %s", feat.name, feat.x_test.shape[1],
                     n, list(spaces))
            for name, table in explain_features(feat, spaces, e, cfg.seed).items():
                key = name if feat.side == "genetics" or not suffix else f"{name}{suffix}"
                out.tables[key] = table
        out.metrics[f"explain/{m}/held_out_subjects"] = float(n)
    for name, table in out.tables.items():
        for method in ["", *[b for b in e.baselines]]:
            col = f"{method}_q" if method else "q"
            if col in table:
                label = method or MODEL
                out.metrics[f"explain/{name}/{label}/n_significant"] = float((table[col] <= e.fdr).sum())
        out.metrics[f"explain/{name}/n"] = float(len(table))
    out.figures = _figures(out.tables, e.top_edges) if cfg.figures.enabled else {}
    out.summary = explain_summary(out.tables, e.top_k, e.fdr, e.splits)
    return out


def _figures(tables: dict[str, pd.DataFrame], k: int) -> dict[str, Any]:
    from brainmm.explain import figures as F

    figs: dict[str, Any] = {}
    for name, table in tables.items():
        if name.startswith("variants"):
            figs[f"explain/manhattan{name.removeprefix('variants')}.png"] = F.manhattan(
                table, f"{name}: score p-values (held-out subjects); red: BH-significant")
    for name, parcels in tables.items():
        if name.startswith("parcels") and parcels[["x", "y", "z"]].notna().all().all():
            figs[f"explain/{name}_map.png"] = F.parcel_markers(parcels, "parcel link score (mean over its edges)")
            edges = tables.get(name.replace("parcels", "edges"))
            if edges is not None:
                figs[f"explain/{name.replace('parcels', 'edges')}_top.png"] = F.top_edges(
                    edges, parcels, k, f"top {k} edges by link score")
    return figs


def _label(row: pd.Series) -> str:
    if "variant_id" in row:
        ident = row["rsid"] if row.get("rsid", ".") not in (".", "") else row["variant_id"]
        gene = f" ({row['gene']})" if row.get("gene") else ""
        return f"{ident} {row['chrom']}:{row['pos']}{gene}"
    for key in ("label_i", "label", "network", "gene"):
        if key in row:
            return f"{row['label_i']} - {row['label_j']}" if key == "label_i" else str(row[key])
    return f"feature {row['feature']}"


def explain_summary(tables: dict[str, pd.DataFrame], k: int, fdr: float, splits: list[str]) -> str:
    """Markdown: per table, how many rows are BH-significant (model and baselines) and the model's top k."""
    lines = [f"## What carries the link (explain: {', '.join(splits)} subjects, BH q <= {fdr})", ""]
    for name, table in tables.items():
        counts = [f"{c.removesuffix('_q') or 'model'} {int((table[c] <= fdr).sum())}"
                  for c in table.columns if c == "q" or c.endswith("_q")]
        lines.append(f"**{name}** ({len(table)}; significant: {', '.join(counts)})")
        lines.append("")
        for _, row in top_rows(table, 0 if name.endswith("features") else k).iterrows():
            lines.append(f"- {_label(row)}: score {row['score']:.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}], "
                         f"q {row['q']:.2g}")
        lines.append("")
    return "\n".join(lines)


def write_explain(out: ExplainOutput, folder: Any) -> None:
    """explain/<table>.tsv for every table (every row), under `folder` (a staging folder: no atomic rename here)."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in out.tables.items():
        table.to_csv(folder / f"{name}.tsv", sep="\t", index=False, float_format="%.6g")


def run_explain(cfg: EvaluateConfig) -> tuple[Any, str, str]:
    """`brainmm explain`: the explain section alone for an align run, written to `cfg.output_dir` (default
    <align_dir>/explain) and logged to MLflow as a child run of the align run; returns (folder, run id, summary)."""
    from pathlib import Path

    import mlflow

    from brainmm import tracking
    from brainmm.config import save_config
    from brainmm.evaluate.confounds import prepare_confounds
    from brainmm.evaluate.inputs import load_inputs, resolve_align_run
    from brainmm.io import atomic_dir, atomic_file, atomic_write_text, run_lock

    run = resolve_align_run(cfg)
    inputs = load_inputs(cfg, run)
    prepare_confounds(cfg, inputs)  # the inputs the align run saw (residualised when it had confounds)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else run.run_dir / "explain"
    with run_lock(out_dir), atomic_dir(out_dir, overwrite=True) as stage:
        out = compute_explain(inputs, cfg)
        write_explain(out, stage)
        for path, fig in out.figures.items():
            with atomic_file(stage / path.removeprefix("explain/"), suffix=".png") as tmp:
                fig.savefig(tmp, format="png", dpi=100)
        atomic_write_text(stage / "summary.md", out.summary)
        save_config(cfg, stage / "config.yaml")
        tcfg = tracking.TrackingConfig(uri=run.tracking_uri, experiment=run.experiment)
        client = mlflow.MlflowClient(run.tracking_uri)
        before = client.get_run(run.run_id).info  # reopening the align run must not change its status
        try:
            with tracking.start_run(tcfg, run_id=run.run_id), tracking.start_run(
                    tcfg, run_name="explain", nested=True,
                    tags={"brainmm.stage": "explain", "brainmm.align_run_id": run.run_id}) as child:
                tracking.log_metrics(out.metrics)
                mlflow.log_artifacts(str(stage), "explain")
                run_id = child.info.run_id
        finally:
            if before.status != "RUNNING":
                client.set_terminated(run.run_id, status=before.status, end_time=before.end_time)
    return out_dir, run_id, out.summary
