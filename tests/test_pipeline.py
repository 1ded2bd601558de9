"""`brainmm run` / `brainmm demo`: config composition and wiring, stage switches, the resolved config, the MLflow run
tree, the printed summary (a tiny pipeline, in-process through brainmm.cli.main)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from brainmm.cli import main
from brainmm.config import ConfigError, load_config, read_yaml, to_dict
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.pipeline import PipelineConfig, make_plan

REPO = Path(__file__).resolve().parents[1]
# The demo pipeline shrunk to seconds: every stage runs, on 60 subjects and tiny models.
TINY = [
    "simulate.n_subjects=60", "simulate.brain.n_timepoints=200",
    "pretrain.train.max_steps=2", "pretrain.train.batch_size=4", "pretrain.eval.max_windows=4",
    "pretrain.model.arch.hidden_size=16", "pretrain.model.arch.intermediate_size=32",
    "pretrain.model.arch.decoder_hidden_size=16", "pretrain.model.arch.decoder_intermediate_size=32",
    "pretrain.model.arch.timepoint_patching_size=20",
    "genetics.genotype_mlp.hidden_sizes=[16]", "genetics.genotype_mlp.output_size=8",
    "align.train.epochs=2", "align.train.batch_size=8", "align.head.hidden_dim=16", "align.head.out_dim=8",
    "evaluate.retrieval.n_boot=50", "evaluate.retrieval.kway=0", "evaluate.probes.targets=[age]",
    "evaluate.probes.n_splits=2", "evaluate.probes.n_permutations=0", "evaluate.probes.n_boot=50",
    "evaluate.baselines.methods=[cca,fc_cca,fc_pls,fc_ridge]", "evaluate.baselines.n_permutations=10", "evaluate.baselines.shuffled_pairs=false",
    "evaluate.model.log=false", "evaluate.figures.enabled=false",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, _migrated_mlflow_db: Path) -> dict:
    """One tiny demo pipeline (module-wide cost: ~15 s), run through the CLI in a fresh working folder."""
    import os
    import shutil

    work = tmp_path_factory.mktemp("pipeline")
    shutil.copy(_migrated_mlflow_db, work / "mlflow.db")
    cwd, env = Path.cwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(work)
    try:
        import contextlib
        import io

        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            rc = main(["demo", "--quiet", "--out", "out", *TINY, "threads=1"])
    finally:
        os.chdir(cwd)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env
    return {"rc": rc, "stdout": stdout.getvalue(), "work": work, "out": work / "out"}


# ------------------------------------------------------------------------------------------------- config


def test_demo_yaml_equals_the_builtin_defaults() -> None:
    written = read_yaml(REPO / "configs" / "demo.yaml")
    assert written == to_dict(PipelineConfig())  # every key is spelled out, with the default value
    assert load_config(PipelineConfig, REPO / "configs" / "demo.yaml") == PipelineConfig()


def test_composition_types_and_overrides(tmp_path: Path) -> None:
    cfg = load_config(PipelineConfig, None, ["pretrain.model.arch.hidden_size=32", "align.train.lr=1e-3",
                                             "simulate.effects.effect_size=0.5", "genetics.kind=dna"])
    assert cfg.pretrain.model.arch.hidden_size == 32 and cfg.align.train.lr == pytest.approx(1e-3)
    assert cfg.simulate.effects.effect_size == 0.5 and cfg.genetics.name == "dna"
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) 'modle' at section 'pretrain'; valid keys: .*model"):
        load_config(PipelineConfig, None, ["pretrain.modle.x=1"])
    with pytest.raises(ConfigError, match="'pretrain.train.max_steps': expected an integer"):
        load_config(PipelineConfig, None, ["pretrain.train.max_steps=many"])
    with pytest.raises(ConfigError, match="'genetics.kind': expected one of 'genotype_matrix', 'dna'"):
        load_config(PipelineConfig, None, ["genetics.kind=plink"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("align:\n  train:\n    epoch: 3\n")
    with pytest.raises(ConfigError, match="'epoch' at section 'align.train'; valid keys: .*epochs"):
        load_config(PipelineConfig, bad)
    # stage checks still apply inside the pipeline config
    with pytest.raises(BrainmmError, match="'model.mask_ratio'"):
        load_config(PipelineConfig, None, ["pretrain.model.mask_ratio=1.5"])
    # fields the pipeline sets itself are refused, naming the field to use instead
    with pytest.raises(BrainmmError, match="'align.tracking.uri': set by the pipeline from 'tracking.uri'"):
        load_config(PipelineConfig, None, ["align.tracking.uri=sqlite:///other.db"])
    with pytest.raises(BrainmmError, match="'evaluate.align_dir': set by the pipeline"):
        load_config(PipelineConfig, None, ["evaluate.align_dir=x"])


def test_plan_wires_every_stage_inside_the_output_folder(tmp_path: Path) -> None:
    cfg = load_config(PipelineConfig, None, [f"output_dir={tmp_path / 'run'}", "tracking.uri=sqlite:///rel.db"])
    plan = make_plan(cfg)
    out = tmp_path / "run"
    c = plan.config
    assert plan.stages == ["simulate", "ingest", "connectivity", "pretrain", "embed", "genetics", "align", "evaluate"]
    assert plan.tracking_uri == f"sqlite:///{Path('rel.db').resolve()}"  # absolute: stages agree whatever the cwd
    assert c.ingest.coords == out / "cohort" / "coords.tsv" and plan.fmri_cohort == out / "cohort" / "cohort.csv"
    assert c.pretrain.data.dataset == str(out / "fmri") and c.pretrain.output_dir == str(out / "pretrain")
    assert c.embed.model == str(out / "pretrain" / "model") and c.embed.out == str(out / "embed" / "brain")
    assert c.genetics.matrix.vcf == str(out / "cohort" / "genotypes.vcf.gz")
    assert c.genetics.matrix.split == str(out / "fmri" / "split.csv")
    assert c.align.data.split == str(out / "fmri" / "split.csv")
    assert c.align.data.genetics == {"genotype": str(out / "genetics" / "genotypes")}
    assert c.align.towers.genetics["genotype"].kind == "table"  # the CCA-initialised linear head sees the dosages
    assert c.align.data.brain == str(out / "embed" / "brain_inputs") and c.evaluate.data.brain == c.embed.out
    assert c.align.tracking.uri == c.pretrain.tracking.uri == plan.tracking_uri
    assert c.evaluate.align_dir == str(out / "align") and c.evaluate.data.cohort == str(out / "fmri")
    assert c.evaluate.data.brain_fc == str(out / "connectivity" / "fc")  # the fc_* baselines' table
    # neither fc_* baselines nor a connectivity brain input: no connectivity stage, no table
    plain = make_plan(load_config(PipelineConfig, None, [f"output_dir={out}", "evaluate.baselines.methods=[cca]",
                                                        "brain_inputs=[brainlm]"]))
    assert "connectivity" not in plain.stages and plain.config.evaluate.data.brain_fc == ""
    assert cfg.embed.model == "" and cfg.align.data.genetics == {}  # the user's config is left as it was


def test_real_data_config_skips_simulate_and_pretrain(tmp_path: Path) -> None:
    cfg = load_config(PipelineConfig, REPO / "configs" / "pipeline_real.yaml", [f"output_dir={tmp_path}"])
    plan = make_plan(cfg)
    assert plan.stages == ["ingest", "connectivity", "embed", "genetics", "align", "evaluate"]
    c = plan.config
    assert plan.fmri_cohort == Path(cfg.data.fmri_cohort).resolve()
    assert c.embed.model == str(Path(cfg.embed.model).resolve())  # the BrainLM checkpoint, no pretraining
    assert c.genetics.kind == "dna" and c.genetics.dna.encoder.path == str(Path(cfg.genetics.dna.encoder.path).resolve())
    assert c.align.data.genetics == {"dna": str(tmp_path / "genetics" / "dna")}
    assert c.genetics.dna.inputs.vcf == str(Path(cfg.genetics.dna.inputs.vcf).resolve())


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.fmri_cohort=c.csv", "stages.simulate=true"], "'stages.simulate': true, but data.fmri_cohort is given"),
    (["stages.simulate=false"], "'stages.simulate': false, so set data.fmri_cohort"),
    (["stages.pretrain=false"], "'stages.pretrain': false, so set embed.model"),
    (["stages.align=false"], "'stages.evaluate': the pipeline evaluates its own align run"),
    (["stages.connectivity=true", "evaluate.data.brain_fc=fc"], "'stages.connectivity': true, but evaluate.data.brain_fc"),
    (["brain_inputs=[connectivity]", "align.data.brain=b"], "'brain_inputs': \\['connectivity'\\] builds the align"),
    (["brain_inputs=[fc]"], "'brain_inputs': expected distinct entries"),
    (["genetics.kind=dna", "genetics.dna.encoder.path=m"], "'genetics.dna.inputs.vcf': required .*write_sequences: true"),
    (["genetics.kind=dna", "simulate.write_sequences=true"], "'genetics.dna.encoder.path': genetics.kind dna needs"),
    (["data.fmri_dataset=d", "embed.model=m"], "'genetics.matrix.vcf' / 'genetics.matrix.bed': give the genotypes"),
    (["pretrain.data.dataset=x"], "'pretrain.data.dataset': set by the pipeline"),
])
def test_inconsistent_switches_and_inputs_fail_before_any_work(overrides: list[str], message: str) -> None:
    with pytest.raises(BrainmmError, match=message):
        make_plan(load_config(PipelineConfig, None, overrides))


def test_cli_reports_config_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("brainmm: error: config file") and "not found" in err and "\n" not in err
    assert main(["demo", "pretrain.train.max_step=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown config key(s) 'max_step' at section 'pretrain.train'" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()  # nothing was written


# -------------------------------------------------------------------------------------------- tiny run


@pytest.mark.slow
def test_tiny_demo_run_tree_outputs_and_summary(tiny_run: dict) -> None:
    assert tiny_run["rc"] == 0
    out, work = tiny_run["out"], tiny_run["work"]
    stdout = tiny_run["stdout"]
    # the summary: retrieval with CI and chance, probes, baselines, timings, the exact mlflow ui command
    db = (work / "mlflow.db").resolve()
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in stdout
    assert "Retrieval, test split" in stdout and "brain -> genotype" in stdout and "(0.111)" in stdout
    assert "Linear probes" in stdout and "age" in stdout and "Baselines" in stdout and "cca" in stdout
    for fc in ("fc_cca", "fc_pls", "fc_ridge_brain_to_genotype", "fc_ridge_genotype_to_brain"):  # the classical pipeline
        assert f"\n{fc} " in stdout, fc
    # one folder per stage, the resolved pipeline config and the log inside the output folder
    for sub in ("cohort/cohort.csv", "fmri/manifest.json", "connectivity/fc.safetensors", "pretrain/model/config.json", "embed/brain.safetensors",
                "genetics/genotypes.safetensors", "align/heads.json", "evaluate/summary.md", "config.yaml",
                "summary.txt", "brainmm.log"):
        assert (out / sub).exists(), sub
    saved = load_config(PipelineConfig, out / "config.yaml")
    assert saved.output_dir == "out" and saved.align.train.epochs == 2 and saved.threads == 1
    state = json.loads((out / "pipeline.json").read_text())
    assert state["status"] == "finished" and sorted(state["stages"]) == sorted(state["records"])
    assert {r["status"] for r in state["records"].values()} == {"finished"}
    assert all(r["peak_rss_mb"] > 0 for r in state["records"].values())
    assert "[8/8] evaluate done" in (out / "brainmm.log").read_text()
    # the explain section runs by default: every variant, edge and parcel, and a top-k section in the summary
    for table in ("variants", "edges", "parcels"):
        assert (out / "evaluate" / "explain" / f"{table}.tsv").is_file(), table
    assert "What carries the link" in stdout and "**variants** (" in stdout

    # the MLflow run tree: pipeline -> pretrain, align -> evaluate
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    parent = client.get_run(state["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["brainmm.stage"] == "pipeline"
    assert parent.data.params["pretrain.train.max_steps"] == "2"  # the resolved config, flattened
    assert yaml.safe_load(Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="config.yaml", tracking_uri=f"sqlite:///{db}")).read_text()) == \
        read_yaml(out / "config.yaml")
    assert "retrieval/brain_to_genotype/R_at_1" in parent.data.metrics
    assert "baseline/fc_cca/brain_to_genotype/R_at_1" in parent.data.metrics
    assert parent.data.metrics["pipeline/time/total_s"] > 0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "summary.txt", "pipeline.json", "brainmm.log", "stages"} <= artifacts
    runs = {s: client.get_run(parent.data.tags[f"brainmm.run.{s}"]) for s in ("pretrain", "align", "evaluate")}
    for stage in ("pretrain", "align"):
        assert runs[stage].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert runs[stage].data.tags["brainmm.stage"] == stage
    assert runs["evaluate"].data.tags["mlflow.parentRunId"] == runs["align"].info.run_id
    assert all(r.data.tags["brainmm.pipeline_run_id"] == parent.info.run_id for r in runs.values())
    assert runs["align"].data.tags["brainmm.run_dir"] == str(out / "align")
    align_params = runs["align"].data.params
    assert align_params["data.brain"] == str(out / "embed" / "brain_inputs")  # the stage logged its wired config
    assert json.loads((out / "align" / "run.json").read_text())["tracking_uri"] == f"sqlite:///{db}"


def test_evaluate_by_run_id_works_from_another_folder(tiny_run: dict, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The align run's tag brainmm.run_dir is absolute: `brainmm evaluate --run ID` does not need the pipeline's cwd."""
    state = json.loads((tiny_run["out"] / "pipeline.json").read_text())
    align_id = mlflow.MlflowClient(state["tracking_uri"]).get_run(state["mlflow_run_id"]).data.tags["brainmm.run.align"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", state["tracking_uri"])
    fast = [o.removeprefix("evaluate.") for o in TINY if o.startswith("evaluate.") and "probes" not in o]
    assert main(["-q", "evaluate", "--run", align_id, f"output_dir={tmp_path / 'ev'}", *fast]) == 0
    assert (tmp_path / "ev" / "metrics.csv").is_file()


def test_shuffle_pairs_deranges_train_subjects_only(tmp_path: Path) -> None:
    import numpy as np

    from brainmm.align import AlignDataConfig, load_align_data
    from brainmm.data.splits import make_split, save_split
    from brainmm.embeddings import EmbeddingTable

    ids = [f"s{i:02d}" for i in range(40)]
    EmbeddingTable(ids, np.arange(40, dtype=np.float32)[:, None].repeat(3, 1), {}).save(tmp_path / "brain")
    EmbeddingTable(ids[::-1], np.arange(40, dtype=np.float32)[::-1, None].repeat(2, 1), {}).save(tmp_path / "g")
    save_split(make_split(ids, seed=0), tmp_path / "split.csv")
    cfg = AlignDataConfig(brain=str(tmp_path / "brain"), genetics={"g": str(tmp_path / "g")},
                          split=str(tmp_path / "split.csv"))
    true, shuffled = load_align_data(cfg), load_align_data(cfg, shuffle_seed=3)
    train_true, train_shuf = true.splits["train"].genetics["g"][:, 0], shuffled.splits["train"].genetics["g"][:, 0]
    brain = true.splits["train"].brain[:, 0]
    assert torch.equal(train_true, brain)  # the genetics value of a subject is its index, like its brain value
    assert not (train_shuf == brain).any()  # nobody keeps their own genetics
    assert sorted(train_shuf.tolist()) == sorted(brain.tolist())  # a permutation of the train subjects
    for split in ("val", "test"):
        assert torch.equal(true.splits[split].genetics["g"], shuffled.splits[split].genetics["g"])
    again = load_align_data(cfg, shuffle_seed=3).splits["train"].genetics["g"]
    assert torch.equal(again, shuffled.splits["train"].genetics["g"])  # seeded


@pytest.mark.slow
def test_rerun_refuses_the_folder_then_reuses_outputs_and_skips_stages(tiny_run: dict,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out, work = tiny_run["out"], tiny_run["work"]
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    assert main(["demo", "--out", "out", *TINY]) == 2
    assert "already exists" in capsys.readouterr().err
    reuse = [f"data.fmri_dataset={out / 'fmri'}", f"embed.model={out / 'pretrain' / 'model'}",
             f"align.data.genetics={{genotype: {out / 'genetics' / 'genotypes'}}}",
             f"evaluate.data.brain_fc={out / 'connectivity' / 'fc'}"]
    mixed = ["brain_inputs=[brainlm, connectivity]", "brain_fc_pca=4"]  # align on [BrainLM, FC PCA-4 (train fit)]
    assert main(["demo", "--quiet", "--out", "again", *TINY, *reuse, *mixed, "threads=1"]) == 0
    state = json.loads((work / "again" / "pipeline.json").read_text())
    assert state["stages"] == ["embed", "align", "evaluate"]
    table = EmbeddingTable.load(work / "again" / "embed" / "brain_inputs")
    emb = EmbeddingTable.load(work / "again" / "embed" / "brain")
    assert table.ids == emb.ids and table.dim == emb.dim + 4 and table.meta["connectivity_pca"]["fitted_on"] == "train"
    split = pd.read_csv(out / "fmri" / "split.csv", dtype={"subject_id": str})
    train = np.isin([table.meta["subject_id"][i] for i in table.ids], split["subject_id"][split["split"] == "train"])
    for block in (slice(0, emb.dim), slice(emb.dim, None)):  # block scaling fitted on the training rows
        x = np.asarray(table.vectors[:, block], dtype=np.float64)
        np.testing.assert_allclose(x[train].mean(0), 0, atol=1e-5)
        assert (x[train] ** 2).sum(1).mean() == pytest.approx(1, rel=1e-4)
    rms = table.meta["block_scaling"]["brainlm"]["rms"]
    centred = emb.vectors - emb.vectors[train].mean(0, dtype=np.float64)
    np.testing.assert_allclose(table.vectors[:, :emb.dim] * rms, centred, atol=1e-5 * rms)
    assert load_config(PipelineConfig, work / "again" / "config.yaml").brain_inputs == ["brainlm", "connectivity"]
    assert not (work / "again" / "pretrain").exists() and not (work / "again" / "cohort").exists()
    # a batch larger than the training set is refused before any stage (tests/test_pipeline_preflight.py)
    bad = main(["demo", "--quiet", "--out", "again", "--overwrite", *TINY, *reuse, "align.train.batch_size=500"])
    assert bad == 2 and "nothing was run" in capsys.readouterr().err
    assert json.loads((work / "again" / "pipeline.json").read_text())["status"] == "finished"
    # a failing stage leaves the parent run FAILED

    def failing_align(cfg, resume=False):
        raise BrainmmError("align: a stage failing after the preflight")

    monkeypatch.setattr("brainmm.align.run_align", failing_align)
    bad = main(["demo", "--quiet", "--out", "again", "--overwrite", *TINY, *reuse])
    assert bad == 2 and "a stage failing after the preflight" in capsys.readouterr().err
    state = json.loads((work / "again" / "pipeline.json").read_text())
    assert state["status"] == "failed" and state["records"]["align"]["status"] == "running"
    client = mlflow.MlflowClient(f"sqlite:///{(work / 'mlflow.db').resolve()}")
    assert client.get_run(state["mlflow_run_id"]).info.status == "FAILED"
