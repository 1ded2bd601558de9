"""`brainmm run` refuses, before the first stage, what would fail later: a batch larger than the training subjects,
given input paths of the wrong kind (a pretrain run folder as embed.model, a folder of tables as one table, a CSV as
a dataset), and stage outputs that climb out of output_dir (issue 29)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stage_inputs import check_error, left_in, run
from test_pipeline import TINY

from brainmm.cli import main
from brainmm.config import load_config
from brainmm.data.splits import make_split, save_split
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.pipeline import PipelineConfig, make_plan
from brainmm.pipeline.preflight import check_plan

REPO = Path(__file__).resolve().parents[1]


def _inputs(root: Path, n: int = 30) -> dict[str, Path]:
    """Stand-ins of the right kind: a dataset folder (manifest + split), a BrainLM folder, two tables."""
    subjects = [f"s{i:02d}" for i in range(n)]
    ds = root / "fmri"
    ds.mkdir(parents=True)
    (ds / "manifest.json").write_text("{}")
    save_split(make_split(subjects, seed=0), ds / "split.csv")
    model = root / "pre" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    tables = root / "genetics"
    EmbeddingTable(subjects, np.zeros((n, 3)), {}).save(tables / "genotypes")
    EmbeddingTable(subjects, np.zeros((n, 3)), {}).save(root / "fc")
    return {"dataset": ds, "model": model, "genotypes": tables / "genotypes", "fc": root / "fc"}


def _plan(tmp_path: Path, **given: Path | str):
    overrides = [f"output_dir={tmp_path / 'run'}", f"data.fmri_dataset={given['dataset']}",
                 f"embed.model={given['model']}", f"align.data.genetics={{genotype: {given['genotypes']}}}",
                 f"evaluate.data.brain_fc={given['fc']}", "align.train.batch_size=8",
                 "evaluate.probes.targets=[]", "evaluate.figures.color_by="]
    return make_plan(load_config(PipelineConfig, None, overrides))


def test_inputs_of_the_right_kind_pass(tmp_path: Path) -> None:
    check_plan(_plan(tmp_path, **_inputs(tmp_path)))


def test_inputs_of_the_wrong_kind_are_named_together_before_any_stage(tmp_path: Path) -> None:
    good = _inputs(tmp_path)
    (tmp_path / "cohort.csv").write_text("subject_id,path\n")
    wrong = {"dataset": tmp_path / "cohort.csv", "model": tmp_path / "pre", "genotypes": tmp_path / "genetics",
             "fc": tmp_path / "missing_fc"}
    with pytest.raises(BrainmmError) as err:
        check_plan(_plan(tmp_path, **wrong))
    msg = str(err.value)
    assert "nothing was run" in msg
    assert f"data.fmri_dataset {tmp_path / 'cohort.csv'} is a file, expected an ingested fMRI dataset folder" in msg
    assert f"embed.model {tmp_path / 'pre'} is a pretrain run folder, expected its BrainLM checkpoint folder " \
           f"{good['model']}" in msg
    assert f"align.data.genetics.genotype {tmp_path / 'genetics'} is a folder" in msg and \
           f"e.g. {good['genotypes']}" in msg
    assert f"evaluate.data.brain_fc {tmp_path / 'missing_fc'} is not an embedding table" in msg
    assert not (tmp_path / "run").exists()


def test_a_batch_larger_than_the_training_subjects_is_refused_first(tmp_path: Path) -> None:
    given = _inputs(tmp_path)  # 30 subjects: 20 in train
    train = sum(1 for line in (given["dataset"] / "split.csv").read_text().splitlines() if line.endswith(",train"))
    plan = _plan(tmp_path, **given)
    plan.config.align.train.batch_size = train + 1
    with pytest.raises(BrainmmError, match=f"align.train.batch_size {train + 1} is larger than the {train} training "
                                           "subjects .*set align.train.batch_size <= "):
        check_plan(plan)
    plan.config.align.train.batch_size = train
    check_plan(plan)


def test_brainmm_demo_with_a_too_large_batch_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["demo", "--quiet", "--out", "out", *TINY, "align.train.batch_size=500"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nothing was run" in err and "align.train.batch_size 500 is larger than" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("field", ["align.output_dir", "evaluate.output_dir", "embed.out", "genetics.matrix.out"])
def test_a_relative_output_that_climbs_out_of_output_dir_is_refused(tmp_path: Path, field: str) -> None:
    with pytest.raises(BrainmmError, match=r"pipeline output path '\.\./\.\./x'.*outside it"):
        make_plan(load_config(PipelineConfig, None, [f"output_dir={tmp_path / 'a' / 'run'}", f"{field}=../../x"]))
    inside = make_plan(load_config(PipelineConfig, None, [f"output_dir={tmp_path / 'run'}", f"{field}=sub/../y"]))
    value = inside.config
    for key in field.split("."):
        value = getattr(value, key)
    assert Path(value).resolve() == tmp_path / "run" / "y"


def test_the_real_data_config_without_its_data_names_every_missing_input_at_once(tmp_path: Path) -> None:
    """A missing cohort table used to stop the check on its own ('table ...: file not found'), the rest unchecked."""
    cfg = load_config(PipelineConfig, REPO / "configs" / "pipeline_real_bgen.yaml", [f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(BrainmmError) as err:
        check_plan(make_plan(cfg))
    msg = str(err.value)
    for line in ("data.fmri_cohort /data/cohort/fmri.csv not found", "ingest.coords /data/atlas/parcel_coords.tsv "
                 "not found", "embed.model /models/brainlm/old_13M not found (expected a BrainLM checkpoint folder)",
                 "genetics.matrix.bgen /data/ukb/ukb22828_c22_b0_v3.bgen not found",
                 "genetics.matrix.sample /data/ukb/ukb22828_c22_b0_v3.sample not found"):
        assert line in msg, msg
    assert "nothing was run" in msg and not (tmp_path / "run").exists()


TINY_PIPELINE = [
    "simulate.brain.n_timepoints=200", "pretrain.train.max_steps=2", "pretrain.train.batch_size=4",
    "pretrain.eval.max_windows=4", "pretrain.model.arch.hidden_size=16", "pretrain.model.arch.intermediate_size=32",
    "pretrain.model.arch.decoder_hidden_size=16", "pretrain.model.arch.decoder_intermediate_size=32",
    "pretrain.model.arch.timepoint_patching_size=20", "genetics.genotype_mlp.hidden_sizes=[16]",
    "genetics.genotype_mlp.output_size=8", "align.train.epochs=2", "align.train.batch_size=4",
    "align.head.hidden_dim=16", "align.head.out_dim=8", "evaluate.retrieval.n_boot=50", "evaluate.retrieval.kway=0",
    "evaluate.probes.targets=[age]", "evaluate.probes.n_splits=2", "evaluate.probes.n_permutations=0",
    "evaluate.probes.n_boot=50", "evaluate.baselines.methods=[cca]", "evaluate.baselines.n_permutations=10",
    "evaluate.baselines.shuffled_pairs=true", "evaluate.baselines.shuffled_overrides=[train.epochs=1]",
    "evaluate.model.log=false", "evaluate.figures.enabled=false", "threads=1",
]


def test_a_small_cohort_works_the_first_time(mlflow_uri: str, tmp_path: Path, capsys, monkeypatch) -> None:
    """`brainmm demo` on 12 simulated subjects (8 train, 2 val, 2 test) runs every stage at the first attempt; the
    CCA baseline, which needs 3 test subjects, is skipped with a warning; the shuffled-pair baseline reports a
    Wilson interval, not a point."""
    monkeypatch.chdir(tmp_path)
    code, err = run(["-q", "demo", "--out", "small", "simulate.n_subjects=12", f"tracking.uri={mlflow_uri}",
                     *TINY_PIPELINE], capsys)
    assert code == 0, err
    assert "the evaluation will skip baselines ['cca'] (train 8, val 2, test 2)" in err, err
    assert "evaluate: baselines ['cca'] for 'genotype' skipped: test has 2 subjects" in err, err
    table = pd.read_csv(tmp_path / "small" / "evaluate" / "metrics.csv")
    assert not (table["model"] == "cca").any()
    shuffled = table[(table["model"] == "shuffled_pairs") & table["metric"].isin(["R_at_1", "mrr"])]
    assert len(shuffled) >= 2 and (shuffled["n"] == 2).all()
    assert (shuffled["ci_low"] < shuffled["ci_high"]).all(), shuffled  # honest at N = 2: not [x, x]
    assert (shuffled["ci_low"] < 0.5).all()


def test_an_impossible_size_is_one_message_before_any_stage(mlflow_uri: str, tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    work = tmp_path / "work"  # beside the test's mlflow.db
    work.mkdir()
    monkeypatch.chdir(work)
    code, err = run(["-q", "demo", "--out", "tiny", "simulate.n_subjects=5", "evaluate.probes.targets=[agee]",
                     f"tracking.uri={mlflow_uri}"], capsys)
    check_error(code, err, r"pipeline: the stages cannot run on this data \(subjects per split: train 3, val 1, test 1 "
                           r"from simulate\.n_subjects 5 .*; nothing was run\): val has 1 subject \(align .* needs >= 2, "
                           r"evaluate \(retrieval on val\) needs >= 2\); test has 1 subject \(evaluate \(retrieval on "
                           r"test\) needs >= 2\); evaluate\.probes\.targets .* \['agee'\], not columns of the cohort "
                           r"\(it has .*'age'.*\); this run needs at least 6 subjects in all \(train 2, val 2, test 2\); "
                           r".*ingest\.split_fractions .*ingest\.split_from")
    assert left_in(work) == []
