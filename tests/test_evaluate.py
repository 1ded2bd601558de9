"""`brainmm evaluate`: retrieval, probes and baselines of a tiny align run, read back from MLflow; chance behaviour;
bad inputs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from brainmm.align import AlignConfig, run_align
from brainmm.cli import main
from brainmm.config import load_config
from brainmm.data.splits import make_split, save_split
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import USER_ERRORS, BrainmmError
from brainmm.evaluate import EvaluateConfig, run_evaluate
from brainmm.evaluate.inputs import subject_mean
from brainmm.evaluate.records import metric_part, metric_parts

REPO = Path(__file__).resolve().parents[1]
FAST = ["retrieval.n_boot=200", "probes.n_boot=200", "probes.n_permutations=1", "probes.n_splits=3",
        "baselines.n_permutations=200"]


def make_inputs(root: Path, n: int = 80, related: bool = True) -> dict[str, str]:
    """Brain (1-2 recordings per subject) and two genetics tables that share a latent factor z (or, unrelated, an
    independent one), a split, and a cohort table (one row per recording) with phenotypes driven by z."""
    rng = np.random.default_rng(0)
    subjects = [f"s{i:03d}" for i in range(n)]
    z = rng.normal(size=(n, 4))
    zg = z if related else rng.normal(size=(n, 4))
    rec_ids, rows, subject_of = [], [], {}
    for i, s in enumerate(subjects):
        for r in range(2 if i % 3 == 0 else 1):
            rec_ids.append(f"{s}_run{r}")
            rows.append(i)
            subject_of[f"{s}_run{r}"] = s
    brain = z[rows] @ rng.normal(size=(4, 12)) + 0.3 * rng.normal(size=(len(rows), 12))
    EmbeddingTable(rec_ids, brain, {"model": "test-brain", "subject_id": subject_of}).save(root / "brain")
    EmbeddingTable(subjects, zg @ rng.normal(size=(4, 8)) + 0.3 * rng.normal(size=(n, 8)), {}).save(root / "dna")
    EmbeddingTable(subjects, zg @ rng.normal(size=(4, 6)) + 0.5 * rng.normal(size=(n, 6)), {}).save(root / "geno")
    split = make_split(subjects, seed=0)
    save_split(split, root / "split.csv")
    held_out = split.loc[split["split"] != "train", "subject_id"].tolist()
    age = 40 + 8 * z[:, 0] + rng.normal(size=n)
    missing = [subjects.index(s) for s in held_out[:3]]
    age[missing] = np.nan  # three held-out subjects without age: dropped from the age probe
    sex = np.where(z[:, 1] + 0.3 * rng.normal(size=n) > 0, "F", "M")
    cohort = pd.DataFrame({"recording_id": rec_ids, "subject_id": [subject_of[r] for r in rec_ids],
                           "age": age[rows], "sex": sex[rows], "score@1": z[rows, 2],
                           "constant": "X", "a/b": 1.0, "x@1": 2.0, "x_at_1": 3.0})
    cohort.to_csv(root / "cohort.csv", index=False)
    return {"brain": str(root / "brain"), "dna": str(root / "dna"), "geno": str(root / "geno"),
            "split": str(root / "split.csv"), "cohort": str(root / "cohort.csv"), "missing_age": str(len(missing))}


def align(paths: dict[str, str], out: Path, uri: str, *extra: str, modalities: tuple[str, ...] = ("dna",)):
    """A tiny CLIP alignment run (configs/align_clip.yaml shrunk)."""
    genetics = "{" + ", ".join(f"{m}: {paths[m]}" for m in modalities) + "}"
    cfg = load_config(AlignConfig, REPO / "configs" / "align_clip.yaml", [
        f"data.brain={paths['brain']}", f"data.genetics={genetics}", f"data.split={paths['split']}",
        f"output_dir={out}", "head.hidden_dim=16", "head.out_dim=8", "train.batch_size=16", "train.epochs=15",
        "train.warmup_steps=2", "train.lr=0.003", "train.device=cpu", "train.log_every=5", f"tracking.uri={uri}",
        "tracking.experiment=evaluate-test", *extra])
    return run_align(cfg)


def evaluate_config(*overrides: str) -> EvaluateConfig:
    return load_config(EvaluateConfig, REPO / "configs" / "evaluate.yaml", [*FAST, *overrides])


def download_text(run_id: str, path: str) -> str:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read_text()


@pytest.mark.slow
def test_planted_relation_end_to_end(tmp_path: Path, mlflow_uri: str) -> None:
    paths = make_inputs(tmp_path)
    aligned = align(paths, tmp_path / "align", mlflow_uri, modalities=("dna", "geno"))
    cfg = evaluate_config(f"align_dir={aligned.run_dir}", f"data.cohort={paths['cohort']}",
                          "probes.targets=[age, sex, 'score@1']", "baselines.shuffled_pairs=true",
                          "baselines.shuffled_overrides=[train.epochs=5]")
    result = run_evaluate(cfg)
    m = result.metrics

    # retrieval: well above chance, with exact chance levels and CIs, per modality, split and level
    n_test = result.counts["test/paired_dna"]
    assert n_test == 12 and m["retrieval/brain_to_dna/R_at_1_chance"] == pytest.approx(1 / n_test)
    for direction in ("brain_to_dna", "dna_to_brain", "brain_to_geno", "geno_to_brain"):
        name = f"retrieval/{direction}/mrr"
        assert m[name] > m[f"{name}_chance"] + 0.3, name
        assert m[f"{name}_p_value"] < 0.01, name  # above chance: the permutation test, not the interval's end
        assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"]
    assert m["retrieval/brain_to_dna/R_at_10_chance"] == pytest.approx(10 / n_test)
    assert m["retrieval/val/brain_to_dna/R_at_1"] > m["retrieval/val/brain_to_dna/R_at_1_chance"]
    assert m["retrieval/brain_to_dna/12way/top1_chance"] == pytest.approx(1 / 12)
    rec = result.table.set_index("name").loc["retrieval/brain_to_dna/recording/R_at_1"]
    assert rec["n"] == result.counts["test/brain_rows"] > n_test  # every recording is a query

    # baselines on the same test split: linear maps recover the planted relation
    for model in ("cca", "pls", "ridge_brain_to_dna", "ridge_dna_to_brain"):
        assert m[f"baseline/{model}/brain_to_dna/mrr"] > m[f"baseline/{model}/brain_to_dna/mrr_chance"] + 0.2
    assert m["baseline/cca/brain_dna/canonical_corr_1"] > 0.5 and m["baseline/cca/brain_dna/canonical_corr_1_p_value"] < 0.05
    assert m["baseline/ridge_brain_to_geno/brain_to_geno/r2_ci_low"] <= m["baseline/ridge_brain_to_geno/brain_to_geno/r2"]
    shuffled = "baseline/shuffled_pairs/brain_to_dna/mrr"
    assert m[f"{shuffled}_p_value"] > 0.01  # no link detected for the alignment trained on shuffled pairs
    assert m["retrieval/brain_dna/canonical_corr_1_p_value"] < 0.01  # the model's held-out correlation
    assert "held-out association" in result.summary and "p R@1 / MRR (permutation)" in result.summary
    assert "baseline/random_head/brain_to_dna/R_at_1" in m

    # probes: phenotypes readable from the inputs, chance and permutation baseline beside every score
    assert m["probe/brain/age/r2"] > 0.5 and m["probe/brain/age/r2_chance"] == 0.0
    assert m["probe/dna/sex/balanced_accuracy_chance"] == 0.5 and "probe/dna/sex/balanced_accuracy_perm_mean" in m
    assert {"probe/shared_brain/score_at_1/r2", "probe/concat_brain_geno/sex/auroc", "probe/shared_geno/age/mae"} <= set(m)
    n_probe = result.counts["probe/subjects"]
    assert result.counts["probe/age/dropped_missing"] == int(paths["missing_age"])
    age = result.table[(result.table["target"] == "age") & (result.table["representation"] == "brain")]
    assert (age["n"] == n_probe - int(paths["missing_age"])).all() and (age["n_dropped"] == 3).all()

    # MLflow: a child run of the align run holding exactly the returned metrics
    runs = mlflow.search_runs(experiment_names=["evaluate-test"], output_format="list",
                              filter_string="tags.`brainmm.stage` = 'evaluate'")
    assert [r.info.run_id for r in runs] == [result.run_id]
    run = runs[0]
    assert run.data.tags["mlflow.parentRunId"] == aligned.run_id
    parent = mlflow.get_run(aligned.run_id).info
    assert parent.status == "FINISHED" and parent.end_time <= run.info.start_time  # status and end time kept
    assert set(run.data.metrics) == set(m)
    for name, value in m.items():
        assert run.data.metrics[name] == pytest.approx(value, nan_ok=True), name

    # the metric table: local file == artifact (log_table JSON), CI and chance for every metric, values == metrics
    local = pd.read_json(result.output_dir / "metrics.json", orient="split")
    logged = pd.read_json(mlflow.artifacts.download_artifacts(run_id=result.run_id,
                                                              artifact_path="evaluation/metrics.json"),
                          orient="split")
    pd.testing.assert_frame_equal(local, logged)
    assert len(logged) == len(result.table) and logged["name"].is_unique
    assert logged[["ci_low", "ci_high", "chance"]].notna().all().all()
    for row in logged.itertuples():
        assert run.data.metrics[row.name] == pytest.approx(row.value, nan_ok=True)
        assert run.data.metrics[f"{row.name}_chance"] == pytest.approx(row.chance)
    csv = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id,
                                                          artifact_path="evaluation/metrics.csv"))
    assert csv["name"].tolist() == logged["name"].tolist()

    # figures and summary
    figures = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "evaluation/figures")}
    for name in ("recall_at_k_dna", "similarity_dna", "shared_pca_geno", "probes"):
        path = f"evaluation/figures/{name}.png"
        assert path in figures
        assert Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path=path)).read_bytes()[:4] \
            == b"\x89PNG"
        assert (result.output_dir / path.removeprefix("evaluation/")).is_file()
    summary = download_text(result.run_id, "evaluation/summary.md")
    assert summary == result.summary == (result.output_dir / "summary.md").read_text()
    r1 = m["retrieval/brain_to_dna/R_at_1"]
    assert "chance" in summary and f"{r1:.3f}" in summary and "shuffled_pairs" in summary and "| train | 56 |" in summary

    # the logged heads load and reproduce the stored shared-space projection
    test_brain = EmbeddingTable.load(aligned.embeddings["test"]["brain"])
    source = EmbeddingTable.load(paths["brain"]).subset(test_brain.ids)
    model = mlflow.pytorch.load_model(run.data.tags["evaluate.model.brain.uri"])
    with torch.no_grad():
        z = model(torch.from_numpy(source.vectors))
    assert np.allclose(np.asarray(z), test_brain.vectors, atol=1e-5)
    assert run.data.tags["evaluate.model.geno.id"] == result.models["geno"]["id"]

    # datasets: subject/split tables per context, ids only
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    assert json.loads(inputs["test"].profile)["num_rows"] == result.counts["test/subjects"]
    columns = {c["name"] for c in json.loads(inputs["train"].schema)["mlflow_colspec"]}
    assert columns == {"subject_id", "group", "split", "brain_rows", "has_dna", "has_geno"}

    # the shuffled-pair alignment is its own run, tagged with the run it is a baseline of
    shuffled_run = mlflow.get_run(run.data.tags["evaluate.shuffled_pairs_run_id"])
    assert shuffled_run.data.tags["brainmm.baseline_of"] == aligned.run_id
    assert Path(shuffled_run.data.tags["brainmm.run_dir"]) == (result.output_dir / "shuffled_pairs" / "align").resolve()
    assert (result.output_dir / "shuffled_pairs" / "align" / "heads.json").is_file()
    saved = json.loads((result.output_dir / "result.json").read_text())
    assert saved["mlflow_run_id"] == result.run_id and saved["models"] == result.models


def test_independent_data_sits_at_chance_cli_same_run(tmp_path: Path, mlflow_uri: str, capsys) -> None:
    paths = make_inputs(tmp_path, n=200, related=False)
    aligned = align(paths, tmp_path / "align", mlflow_uri, "train.epochs=6", "train.batch_size=32")
    args = ["evaluate", "--run", aligned.run_id, "--config", str(REPO / "configs" / "evaluate.yaml"), *FAST,
            "mlflow_run=same", "baselines.methods=[cca, ridge]", "figures.enabled=false", "model.log=false",
            "retrieval.splits=[test]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "## Retrieval (test split" in out and "(chance)" in out and f"align run {aligned.run_id}" in out

    metrics = mlflow.get_run(aligned.run_id).data.metrics  # logged into the align run itself
    n = int(round(1 / metrics["retrieval/brain_to_dna/R_at_1_chance"]))
    assert n == 30
    for model in ("retrieval", "baseline/cca", "baseline/ridge_brain_to_dna"):
        name = f"{model}/brain_to_dna/mrr"
        assert abs(metrics[name] - metrics[f"{name}_chance"]) < 0.1, (name, metrics[name])
    assert abs(metrics["baseline/cca/brain_dna/canonical_corr_1"]) < 0.5

    # a second evaluation into the same run is refused before any work (log_table would append to the table)
    assert main(args) == 2
    assert "already holds an evaluation" in capsys.readouterr().err


@pytest.mark.slow
def test_fc_baselines_read_the_connectivity_table(tmp_path: Path, mlflow_uri: str) -> None:
    paths = make_inputs(tmp_path, n=120)
    aligned = align(paths, tmp_path / "align", mlflow_uri, "train.epochs=2")
    brain = EmbeddingTable.load(paths["brain"])
    subjects = sorted(set(brain.meta["subject_id"].values()))
    rng = np.random.default_rng(1)
    genetics = EmbeddingTable.load(paths["dna"])
    z = np.stack([genetics.vectors[genetics.ids.index(s)] for s in subjects])[:, :4]  # tied to the genetics side
    EmbeddingTable(subjects, z @ rng.normal(size=(4, 30)) + 0.3 * rng.normal(size=(len(subjects), 30)),
                   {"kind": "connectivity"}).save(tmp_path / "fc")
    EmbeddingTable(subjects, rng.normal(size=(len(subjects), 30)), {"kind": "connectivity"}).save(tmp_path / "fc_null")
    base = [f"align_dir={aligned.run_dir}", "baselines.methods=[cca, fc_cca, fc_pls, fc_ridge]", "figures.enabled=false",
            "model.log=false", "retrieval.splits=[test]"]
    result = run_evaluate(evaluate_config(*base, f"data.brain_fc={tmp_path / 'fc'}", f"output_dir={tmp_path / 'e1'}"))
    m = result.metrics
    for model in ("fc_cca", "fc_pls", "fc_ridge_brain_to_dna", "fc_ridge_dna_to_brain"):
        assert m[f"baseline/{model}/brain_to_dna/mrr"] > m[f"baseline/{model}/brain_to_dna/mrr_chance"] + 0.2, model
    assert m["baseline/fc_cca/brain_dna/canonical_corr_1"] > 0.5
    assert "| fc_cca | brain_to_dna |" in result.summary
    # an unrelated connectivity table: fc_* at chance while cca (the input brain table) still finds the relation
    null = run_evaluate(evaluate_config(*base, f"data.brain_fc={tmp_path / 'fc_null'}",
                                        f"output_dir={tmp_path / 'e2'}")).metrics
    name = "baseline/fc_cca/brain_to_dna/mrr"
    assert null[f"{name}_ci_low"] <= null[f"{name}_chance"] <= null[f"{name}_ci_high"]
    assert null["baseline/cca/brain_to_dna/mrr"] == pytest.approx(m["baseline/cca/brain_to_dna/mrr"])
    # no connectivity table: the fc_* rows are left out, the others stay
    plain = run_evaluate(evaluate_config(*base, f"output_dir={tmp_path / 'e3'}")).metrics
    assert "baseline/cca/brain_to_dna/R_at_1" in plain and not any("/fc_" in k for k in plain)


def test_bad_inputs_raise_one_clear_error(tmp_path: Path, mlflow_uri: str, capsys) -> None:
    paths = make_inputs(tmp_path)
    aligned = align(paths, tmp_path / "align", mlflow_uri, "train.epochs=2")
    base = [f"align_dir={aligned.run_dir}", f"data.cohort={paths['cohort']}", "baselines.methods=[]",
            "figures.enabled=false", "model.log=false"]

    def error(*overrides: str) -> str:
        with pytest.raises(USER_ERRORS) as info:
            run_evaluate(evaluate_config(*base, *overrides))
        return str(info.value)

    msg = error("probes.targets=[height]")
    assert "'height'" in msg and "'age'" in msg and "'sex'" in msg  # lists the available columns
    assert "only one class" in error("probes.targets=[constant]")
    assert "fewer than n_splits=30" in error("probes.targets=[age]", "probes.n_splits=30")
    assert "cannot be made a valid MLflow metric name" in error("probes.targets=['a/b']")
    assert "both become the MLflow name 'x_at_1'" in error("probes.targets=['x@1', x_at_1]")

    nan_table = EmbeddingTable.load(paths["dna"])
    nan_table.vectors[3, 0] = np.nan
    nan_table.save(tmp_path / "dna_nan")
    msg = error(f"data.genetics={{dna: {tmp_path / 'dna_nan'}}}")
    assert "dna_nan" in msg and "1 rows contain NaN" in msg and "s003" in msg

    split = pd.read_csv(paths["split"], dtype=str)
    moved = split.loc[split["split"] == "test", "subject_id"].iloc[0]
    split.loc[split["subject_id"] == moved, "split"] = "train"  # its shared embeddings are in the test split
    split.to_csv(tmp_path / "leaky.csv", index=False)
    msg = error(f"data.split={tmp_path / 'leaky.csv'}")
    assert "split leakage" in msg and moved in msg
    doubled = pd.concat([split, split[split["subject_id"] == "s001"].assign(split="test")])
    doubled.to_csv(tmp_path / "doubled.csv", index=False)
    assert "'s001'" in error(f"data.split={tmp_path / 'doubled.csv'}")

    with pytest.raises(BrainmmError, match="not found in the MLflow backend"):
        run_evaluate(evaluate_config("run_id=0123456789abcdef", f"tracking_uri={mlflow_uri}"))
    capsys.readouterr()
    assert main(["evaluate", "--align-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("brainmm: error: align folder") and "does not exist" in err and "\n" not in err

    # nothing was written or logged by the failed evaluations
    assert not (aligned.run_dir / "evaluation").exists()
    assert mlflow.search_runs(experiment_names=["evaluate-test"], output_format="list",
                              filter_string="tags.`brainmm.stage` = 'evaluate'") == []


def test_config_and_metric_names() -> None:
    cfg = load_config(EvaluateConfig, REPO / "configs" / "evaluate.yaml")
    assert cfg.mlflow_run == "nested" and cfg.retrieval.splits == ["test", "val"] and cfg.model.serialization_format == "pt2"
    with pytest.raises(BrainmmError, match="unknown \\['svm'\\]"):
        load_config(EvaluateConfig, None, ["baselines.methods=[svm]"])
    with pytest.raises(BrainmmError, match="'probes.tasks'"):
        load_config(EvaluateConfig, None, ["probes.tasks={age: regression}"])
    with pytest.raises(BrainmmError, match="'retrieval.kway'"):
        load_config(EvaluateConfig, None, ["retrieval.kway=1"])
    assert metric_part("IQ@1 (fluid)", "probes.targets") == "IQ_at_1 _fluid_"
    for bad in ("", "..", "a/b", " age"):
        with pytest.raises(BrainmmError, match="cannot be made a valid MLflow metric name"):
            metric_part(bad, "probes.targets")
    assert metric_parts(["age", "sex"], "probes.targets") == {"age": "age", "sex": "sex"}

    # subject-level rows: plain means of the input rows; shared space: mean of normalised rows, renormalised
    x = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    order, plain = subject_mean(x, ["b", "a", "b", "c"], normalize=False)
    assert order == ["a", "b", "c"] and np.allclose(plain, [[0, 2], [2, 0], [0, 1]])
    _, shared = subject_mean(x, ["a", "a", "b", "b"], normalize=True)
    assert np.allclose(shared, [[np.sqrt(0.5), np.sqrt(0.5)], [np.sqrt(0.5), np.sqrt(0.5)]])


def test_verdict_comes_from_permutation_tests() -> None:
    """summary.md's verdict: 'held-out association' only when the Bonferroni-combined permutation p-value (first
    held-out correlation, MRR both ways) is below 0.05; a null table says 'no detectable link at this N'."""
    from alignment.retrieval import retrieval_report
    from alignment.significance import correlation_records
    from brainmm.evaluate.records import metrics_table
    from brainmm.evaluate.retrieval import library_record
    from brainmm.evaluate.summary import render_summary

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 8))
    context = {"align_run_id": "r", "align_dir": "d", "modalities": ["dna"], "level": 0.95}
    for y, expected in ((0.5 * x + rng.standard_normal((60, 8)), "dna: held-out association"),
                        (rng.standard_normal((60, 8)), "dna: no detectable link at this N")):
        recs = [library_record(r, "dna", section="retrieval", split="test", model="aligned")
                for r in retrieval_report(x, y, n_boot=50, n_perm=199, kway=None).records]
        recs += [library_record(r, "dna", section="retrieval", split="test", model="aligned", direction="brain_dna")
                 for r in correlation_records("aligned", x[:, :2], y[:, :2], n_perm=199, n_boot=50)]
        summary = render_summary(metrics_table(recs), {}, context, [1, 5, 10])
        assert expected in summary and "Bonferroni p = " in summary
        assert "| aligned | brain_dna | canonical_corr_1 |" in summary


def test_evaluate_writes_flat_metrics_and_one_line_per_baseline_table(tmp_path: Path, mlflow_uri: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    paths = make_inputs(tmp_path, n=80)
    aligned = align(paths, tmp_path / "align", mlflow_uri, "train.epochs=2")
    caplog.set_level(logging.INFO, logger="brainmm")
    result = run_evaluate(evaluate_config(f"align_dir={aligned.run_dir}", "baselines.methods=[cca, pls]",
                                          "figures.color_by=age", "model.log=false", "retrieval.splits=[test]",
                                          f"output_dir={tmp_path / 'ev'}", "probes.targets=[age]",
                                          f"data.cohort={paths['cohort']}"))
    flat = json.loads((tmp_path / "ev" / "metrics_flat.json").read_text())
    assert flat == {k: (v if math.isfinite(v) else None) for k, v in result.metrics.items()}
    assert flat["retrieval/brain_to_dna/R_at_1"] == result.metrics["retrieval/brain_to_dna/R_at_1"]
    logged = mlflow.MlflowClient().list_artifacts(result.run_id, "evaluation")
    assert "evaluation/metrics_flat.json" in [a.path for a in logged]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("baselines")]
    pls = [line for line in lines if " pls" in line]
    assert len(pls) == 1 and pls == [line for line in lines if " cca" in line], lines  # one line for the table
    assert pls[0].count("chosen on val") == 2, pls
    assert (tmp_path / "ev" / "figures" / "shared_pca_dna.png").is_file()
