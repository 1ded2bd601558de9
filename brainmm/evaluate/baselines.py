"""Baselines on the same test split as the trained model: CCA / PLS after PCA, ridge maps, random (untrained) heads,
and optionally a shuffled-pair alignment run (the same training on permuted train pairs)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.evaluate.baseline_registry import TABLE_PREFIX, baseline_needs, on_table
from brainmm.evaluate.config import EvaluateConfig
from brainmm.evaluate.inputs import EvalInputs, Side
from brainmm.evaluate.retrieval import Strata, library_record, modality_direction, retrieval_kwargs

LOG = logging.getLogger("brainmm.evaluate")


def _pairs(inputs: EvalInputs, split: str, modality: str,
           brain: Side | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    subjects, b, genetics = inputs.pairs(split, modality, shared=False, brain=brain)
    if len(subjects) < 3:
        what = "connectivity (data.brain_fc)" if brain is not None else "brain"
        raise BrainmmError(f"baselines: the {split} split has {len(subjects)} subjects with {what} and {modality!r} "
                           "input embeddings; need at least 3")
    return subjects, b, genetics


def _ridge_r2_ci(model: Any, brain: np.ndarray, genetics: np.ndarray, cfg: EvaluateConfig) -> tuple[float, float]:
    """Bootstrap CI (over test subjects) of a ridge map's held-out R^2 (the library reports no interval for it)."""
    from alignment.stats import bootstrap_weights, percentile_ci

    u, v = model.transform(brain, genetics)  # both sides centred on the same training mean: R^2 unchanged
    pred, true = (u, v) if model.direction == "brain_to_genetics" else (v, u)
    weights = np.asarray(list(bootstrap_weights(np.arange(len(true)), cfg.retrieval.n_boot, cfg.seed)), np.float64)
    low, high = percentile_ci(weighted_r2(true, pred, weights), cfg.level)
    return float(low), float(high)


def weighted_r2(true: np.ndarray, pred: np.ndarray, weights: np.ndarray, batch: int = 100) -> np.ndarray:
    """sklearn's r2_score (uniform average over targets) of each bootstrap draw, rows repeated `weights[b, i]` times,
    as weighted sums (three products per batch of draws, no resampled copy of a [n, 20,000] target); NaN for a draw
    whose targets are all constant."""
    sq_err, sq = (true - pred) ** 2, true**2
    out = np.empty(len(weights))
    for b in range(0, len(weights), batch):
        w = weights[b:b + batch]
        total = w.sum(axis=1, keepdims=True)
        sse, s1, s2 = w @ sq_err, w @ true, w @ sq
        sst = np.maximum(s2 - s1**2 / total, 0.0)
        constant = sst <= 1e-12 * np.maximum(s2, 1e-300)
        score = np.where(constant, np.where(sse <= 1e-12 * np.maximum(s2, 1e-300), 1.0, 0.0),
                         1.0 - sse / np.where(constant, 1.0, sst))
        out[b:b + batch] = np.where(constant.all(axis=1), np.nan, score.mean(axis=1))
    return out


def baseline_records(inputs: EvalInputs, cfg: EvaluateConfig, strata: Strata | None = None) -> list[dict[str, Any]]:
    """CCA, PLS, ridge and random-head records for every genetics modality (fitted on train, scored on test), on the
    input brain table, and fc_cca / fc_pls / fc_ridge on the connectivity table (data.brain_fc) when it is given.
    Permutation p-values shuffle the test pairing within `strata` (confounds set), as the model's."""
    methods = cfg.baselines.methods
    names = [n for b in on_table(methods, "brain") for n in b.fit]
    fc_names = [n for b in on_table(methods, "connectivity") for n in b.fit]
    records: list[dict[str, Any]] = []
    if names:
        records += _table_records(inputs, cfg, names, inputs.input_brain("baselines (baselines.methods)"),
                                  TABLE_PREFIX["brain"], strata)
    if fc_names and inputs.brain_fc is None:
        LOG.info("baselines: fc_* skipped: no connectivity table (set data.brain_fc to a `brainmm fmri connectivity` "
                 "table; the pipeline computes one)")
    elif fc_names:
        records += _table_records(inputs, cfg, fc_names, fc_reduced(inputs, cfg), TABLE_PREFIX["connectivity"], strata)
    return records


def fc_reduced(inputs: EvalInputs, cfg: EvaluateConfig) -> Side:
    """The connectivity table reduced to its first `baselines.fc_pca` principal components, fitted on the training
    subjects' rows only (streamed over row blocks above `pca_in_memory_gb`): no fc_* baseline holds [N, edges]
    targets. Unchanged when fc_pca is 0, the table is already PCA scores, or it has no more columns than that."""
    from brainmm.data.fmri.connectivity import ConnectivityConfig, fit_pca, pca_transform

    fc = inputs.brain_fc
    assert fc is not None
    if inputs.fc_pca is not None:  # baselines and explain share one fit
        return inputs.fc_pca
    k = cfg.baselines.fc_pca
    if not k or fc.table.meta.get("pca") or fc.table.dim <= k:
        return fc
    train = np.array([i for i, s in enumerate(fc.subjects) if inputs.split_of.get(s) == "train"], dtype=np.int64)
    if len(train) < 3:
        raise BrainmmError(f"baselines fc_*: the train split has {len(train)} subjects in the connectivity table "
                           f"(data.brain_fc {fc.path}); need at least 3")
    k = min(k, len(train) - 1, fc.table.dim)
    start = time.perf_counter()
    # streamed above 0.25 GB of float32 training rows: sklearn's in-memory PCA peaks at several float64 copies
    pca = fit_pca(fc.table.vectors, train, ConnectivityConfig(pca=k, seed=cfg.seed, pca_in_memory_gb=0.25))
    scores = pca_transform(fc.table.vectors, pca).astype(np.float32)
    explained = float(pca["explained_variance_ratio"].sum())
    LOG.info("baselines: fc_* on %d PCA components of the %d connectivity features (fitted on %d train subjects, "
             "%s solver, %.1f %% of their variance), %.1f s", k, fc.table.dim, len(train), pca["solver"],
             100 * explained, time.perf_counter() - start)
    meta = {**fc.table.meta, "pca": {"fitted_on": "train", "subjects": len(train), "components": k,
                                     "explained_variance": explained, "by": "evaluate baselines.fc_pca"}}
    inputs.fc_pca = Side(EmbeddingTable(list(fc.table.ids), scores, meta), fc.subjects, fc.path)
    return inputs.fc_pca


def _head_for(head: Any, rows: np.ndarray) -> Any:
    """The trained brain head when it takes these rows (random_head re-initialises it); else None (Gaussian random
    projections): data.brain may be another table than the one the heads were trained on (pipeline brain_inputs)."""
    return head if getattr(head, "in_dim", rows.shape[1]) == rows.shape[1] else None


def _table_records(inputs: EvalInputs, cfg: EvaluateConfig, names: list[str], brain: Side,
                   prefix: str, strata: Strata | None = None) -> list[dict[str, Any]]:
    """The library baselines `names` on one brain table, model names prefixed with `prefix`."""
    from alignment.baselines import run_baselines

    side = brain if prefix else None
    records: list[dict[str, Any]] = []
    from brainmm.evaluate.preflight import baseline_shortfall, skip_warning

    for m in inputs.modalities:
        if short := baseline_shortfall(inputs, m, baseline_needs(cfg.baselines.methods)):
            skip_warning(f"baselines {cfg.baselines.methods} for {m!r}", short)
            continue
        start = time.perf_counter()
        _, b_train, g_train = _pairs(inputs, "train", m, side)
        test_subjects, b_test, g_test = _pairs(inputs, "test", m, side)
        _, b_val, g_val = inputs.pairs("val", m, shared=False, brain=side)  # CCA/PLS sizes chosen on val (>= 3)
        val = (b_val, g_val) if len(b_val) >= 3 else (None, None)
        report = run_baselines(
            b_train, g_train, b_test, g_test, brain_val=val[0], genetics_val=val[1], baselines=names,
            n_components=cfg.baselines.n_components,
            n_permutations=cfg.baselines.n_permutations, brain_head=_head_for(inputs.projectors["brain"], b_train),
            genetics_head=inputs.projectors[m], out_dim=inputs.heads.embed_dim, seed=cfg.seed,
            retrieval_kw={**retrieval_kwargs(cfg), "strata": strata(test_subjects) if strata else None},
        )
        chosen = {name: f" (PCA {sel['pca_brain']:.0f} brain / {sel['pca_genetics']:.0f} {m}, "
                        f"{sel['n_components']:.0f} pairs, chosen on val: MRR {sel['val_mrr']:.3f})"
                  for name, fitted in report.models.items() if (sel := getattr(fitted, "selection_", None))}
        for r in report.records:
            if r["metric"] == "r2" and r.get("ci_low") is None:
                r = {**r, **dict(zip(("ci_low", "ci_high"), _ridge_r2_ci(report.models[r["model"]], b_test,
                                                                         g_test, cfg)))}
            model = prefix + modality_direction(r["model"], m)
            rec = library_record(r, m, section="baseline", split="test", model=model)
            if rec["direction"] is None:  # canonical correlations belong to the pair of sides
                rec["direction"] = f"brain_{m}"
            records.append(rec)
        LOG.info("baselines for %s in %.1f s: %s", m, time.perf_counter() - start,  # one line per table
                 ", ".join(prefix + n + chosen.get(n, "") for n in names))
    return records


def shuffled_pair_run(inputs: EvalInputs, cfg: EvaluateConfig, folder: Path) -> tuple[list[dict[str, Any]], str]:
    """Train the alignment again with `train.shuffle_pairs` (each train subject paired with another train subject's
    genetics: a seeded permutation without fixed points per modality; val and test untouched) and score its test
    embeddings.

    The run goes to `folder/align` (its own MLflow run in the align run's experiment, on the same input tables).
    Returns the records and that run's id.
    """
    from alignment.baselines import space_records
    from brainmm.align import AlignConfig, run_align, table_subjects
    from brainmm.config import apply_overrides, from_dict, to_dict

    data = to_dict(inputs.run.config)
    data["name"] = f"{inputs.run.config.name}-shuffled_pairs"
    data["output_dir"] = str(folder / "align")
    data["data"].update(genetics={m: inputs.genetics[m].path for m in inputs.modalities}, split=inputs.split_path)
    if inputs.brain is not None:
        data["data"]["brain"] = inputs.brain.path
    data["train"]["shuffle_pairs"] = True
    data["tracking"].update(uri=inputs.run.tracking_uri, experiment=inputs.run.experiment, run_name=None)
    apply_overrides(data, list(cfg.baselines.shuffled_overrides))
    LOG.info("baselines: training the shuffled-pair alignment in %s", folder / "align")
    result = run_align(from_dict(AlignConfig, data))

    import mlflow

    mlflow.MlflowClient(inputs.run.tracking_uri).set_tag(result.run_id, "brainmm.baseline_of", inputs.run.run_id)
    kw = retrieval_kwargs(cfg)
    records: list[dict[str, Any]] = []
    for m in inputs.modalities:
        test = result.embeddings["test"]
        if "brain" not in test or m not in test:
            raise BrainmmError(f"baselines.shuffled_pairs: the shuffled run wrote no test embeddings for {m!r}")
        sides = {k: Side(t, table_subjects(t, str(test[k])), str(test[k]))
                 for k, t in ((k, EmbeddingTable.load(test[k])) for k in ("brain", m))}
        subjects = sorted(sides["brain"].subject_set & sides[m].subject_set)
        b, g = (sides[k].subject_level(subjects, normalize=True) for k in ("brain", m))
        for r in space_records("shuffled_pairs", b, g, **kw):
            records.append(library_record(r, m, section="baseline", split="test", model="shuffled_pairs"))
    return records, str(result.run_id)


def control_inputs(inputs: EvalInputs, cfg: EvaluateConfig) -> EvalInputs:
    """`inputs` whose align run config trains the control alignments (unadjusted, shuffled pairs) for
    `baselines.control_epochs` epochs; 0: the main run's best epoch (its metrics.json), so a control costs at most
    the main run's training up to its selected model, without the early-stopping patience tail."""
    import copy
    import dataclasses
    import json

    epochs = cfg.baselines.control_epochs
    if not epochs:
        path = Path(inputs.run.run_dir) / "metrics.json"
        best = json.loads(path.read_text()).get("best_epoch", 0) if path.is_file() else 0
        epochs = max(1, int(best)) if best else inputs.run.config.train.epochs
    config = copy.deepcopy(inputs.run.config)
    config.train.epochs = int(epochs)
    LOG.info("baselines: control alignments train %d epochs (baselines.control_epochs; main run: %d max)",
             config.train.epochs, inputs.run.config.train.epochs)
    return dataclasses.replace(inputs, run=dataclasses.replace(inputs.run, config=config))


def main_align_seconds(inputs: EvalInputs) -> float | None:
    """Wall seconds of the main align run (its MLflow run's start to end), None when not recorded."""
    try:
        import mlflow

        info = mlflow.MlflowClient(inputs.run.tracking_uri).get_run(inputs.run.run_id).info
    except Exception:  # a missing or unreachable record only leaves the reference column empty
        return None
    if not info.end_time or not info.start_time:
        return None
    return (info.end_time - info.start_time) / 1000
