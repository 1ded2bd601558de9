"""Evaluate at scale: fc_* baselines on train-fitted connectivity PCA, control trainings' epochs, cost section."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml
from sklearn.decomposition import PCA
from test_evaluate import align, evaluate_config, make_inputs

from brainmm.embeddings import EmbeddingTable
from brainmm.evaluate import run_evaluate
from brainmm.evaluate.baselines import fc_reduced
from brainmm.evaluate.inputs import Side


def _fc_inputs(vectors: np.ndarray, split: list[str]) -> SimpleNamespace:
    ids = [f"s{i}" for i in range(len(vectors))]
    side = Side(EmbeddingTable(ids, vectors.astype(np.float32), {"kind": "connectivity", "pca": None}), ids, "fc")
    return SimpleNamespace(brain_fc=side, split_of=dict(zip(ids, split)), fc_pca=None)


def test_fc_reduced_is_pca_fitted_on_train_rows_only() -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(60, 6)) * [8, 5, 3, 2, 1, 0.5]) @ rng.normal(size=(6, 200)) + 0.1 * rng.normal(size=(60, 200))
    split = ["train"] * 40 + ["val"] * 10 + ["test"] * 10
    cfg = SimpleNamespace(baselines=SimpleNamespace(fc_pca=4), seed=0)
    inputs = _fc_inputs(x, split)
    reduced = fc_reduced(inputs, cfg)
    assert reduced.table.dim == 4 and reduced.table.meta["pca"]["fitted_on"] == "train"
    assert fc_reduced(inputs, cfg) is reduced  # baselines and explain share the fit
    ref = PCA(n_components=4, svd_solver="full").fit(x[:40].astype(np.float32).astype(np.float64))
    scores = ref.transform(x.astype(np.float32).astype(np.float64))
    signs = np.sign((reduced.table.vectors * scores).sum(0))
    np.testing.assert_allclose(reduced.table.vectors * signs, scores, rtol=0, atol=1e-4 * np.abs(scores).max())
    changed = x.copy()
    changed[50:] = rng.normal(size=(10, 200)) * 50  # other test rows: the training rows' scores do not move
    again = fc_reduced(_fc_inputs(changed, split), cfg)
    np.testing.assert_allclose(again.table.vectors[:50], reduced.table.vectors[:50], rtol=0, atol=1e-5)
    assert fc_reduced(_fc_inputs(x, split), SimpleNamespace(baselines=SimpleNamespace(fc_pca=0), seed=0)).table.dim == 200


def test_fc_baselines_on_pca_controls_to_best_epoch_and_cost(tmp_path: Path, mlflow_uri: str) -> None:
    paths = make_inputs(tmp_path, n=120)
    aligned = align(paths, tmp_path / "align", mlflow_uri, "train.epochs=6", "train.patience=2")
    brain = EmbeddingTable.load(paths["brain"])
    subjects = sorted(set(brain.meta["subject_id"].values()))
    genetics = EmbeddingTable.load(paths["dna"])
    z = np.stack([genetics.vectors[genetics.ids.index(s)] for s in subjects])[:, :4]
    rng = np.random.default_rng(1)
    EmbeddingTable(subjects, z @ rng.normal(size=(4, 40)) + 0.3 * rng.normal(size=(len(subjects), 40)),
                   {"kind": "connectivity"}).save(tmp_path / "fc")
    result = run_evaluate(evaluate_config(
        f"align_dir={aligned.run_dir}", "baselines.methods=[fc_cca, fc_ridge]", "figures.enabled=false",
        "model.log=false", "retrieval.splits=[test]", f"data.brain_fc={tmp_path / 'fc'}", "baselines.fc_pca=6",
        "baselines.shuffled_pairs=true", "explain.enabled=false", f"output_dir={tmp_path / 'e'}"))
    m = result.metrics
    for model in ("fc_cca", "fc_ridge_brain_to_dna"):
        assert m[f"baseline/{model}/brain_to_dna/mrr"] > m[f"baseline/{model}/brain_to_dna/mrr_chance"] + 0.2, model
    best = json.loads((aligned.run_dir / "metrics.json").read_text())["best_epoch"]
    control = yaml.safe_load((tmp_path / "e" / "shuffled_pairs" / "align" / "config.yaml").read_text())
    assert control["train"]["epochs"] == max(1, best) and control["train"]["shuffle_pairs"]
    seconds = json.loads((tmp_path / "e" / "result.json").read_text())["seconds"]
    assert {"retrieval", "baselines", "control: shuffled-pair alignment"} <= set(seconds)
    assert "## Cost" in result.summary and "| control: shuffled-pair alignment |" in result.summary


def test_weighted_r2_equals_r2_score_on_resampled_rows() -> None:
    from sklearn.metrics import r2_score

    from alignment.stats import bootstrap_weights
    from brainmm.evaluate.baselines import weighted_r2

    rng = np.random.default_rng(2)
    true = rng.normal(size=(40, 6))
    true[:, 5] = 1.5  # a constant target: sklearn scores it 1 (perfect) or 0
    pred = true + 0.7 * rng.normal(size=(40, 6))
    pred[::2, 5] = 1.5
    weights = np.asarray(list(bootstrap_weights(np.arange(40), 30, 0)), np.float64)
    ref = [r2_score(true[np.repeat(np.arange(40), w.astype(int))], pred[np.repeat(np.arange(40), w.astype(int))])
           for w in weights]
    np.testing.assert_allclose(weighted_r2(true, pred, weights, batch=7), ref, rtol=1e-10, atol=1e-12)
