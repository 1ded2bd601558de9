"""Bad-input catalogue, round 2 (issue 19), application drivers: memory budgets, run-folder locks, output folders,
resume after a shape change, embedding-cache modes, pretraining split leakage, up-front minimum sizes (a small cohort
that works the first time) and small-N intervals end to end. docs/bad-inputs.md lists the cases."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_bad_inputs
from test_bad_inputs import (
    REPO,
    WINDOW,
    World,
    align_argv,
    check_error,
    embed,
    matrix,
    pretrain,
    write_fmri_cohort,
)

from brainmm.cli import main

world = test_bad_inputs.world  # the module-scoped fixture of the catalogue's valid inputs


def run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def left_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ------------------------------------------------------------------------------------------ memory budgets


def test_absurd_head_is_refused_before_allocation(world: World, tmp_path: Path, capsys) -> None:
    code, err = run(align_argv(world, tmp_path / "out" / "align", "head.hidden_dim=1000000000"), capsys)
    check_error(code, err, r"align config field 'head' \(hidden_dim 1000000000, out_dim 4\): [0-9,]{14,} parameters "
                           r"need about [0-9.,]+ (GB|TB) \(4 bytes x 4 copies\), more than this machine's available "
                           r"memory \([0-9.,]+ [kMGT]?B of [0-9.,]+ [kMGT]?B\)")
    assert left_in(tmp_path) == []


def test_absurd_pretrain_model_is_refused_before_allocation(world: World, tmp_path: Path, capsys) -> None:
    code, err = run(pretrain(world, tmp_path / "out" / "pre", "model.arch.hidden_size=10000000"), capsys)
    check_error(code, err, r"pretrain model \(model\.arch: hidden_size 10000000, num_hidden_layers 1, intermediate_size "
                           r"16\): [0-9,]{15,} parameters need about [0-9.,]+ (TB|PB) \(4 bytes x 4 copies\), more than "
                           r"this machine's available memory")
    assert left_in(tmp_path) == []


# ---------------------------------------------------------------------------------------------- locks


def _stage_argv(w: World, stage: str, out: Path) -> tuple[list[str], Path]:
    """(argv, locked output path) of a tiny run of `stage` writing into `out`."""
    if stage == "align":
        return align_argv(w, out / "align"), out / "align"
    if stage == "pretrain":
        return pretrain(w, out / "pre"), out / "pre"
    if stage == "embed":
        return embed(w, out, None, f"cache_dir={out / 'cache'}"), out / "brain"
    if stage == "evaluate":
        return ["-q", "evaluate", "--align-dir", str(w.root / "align"), f"output_dir={out / 'eval'}",
                "retrieval.n_boot=20", "retrieval.kway=0", "baselines.methods=[]", "figures.enabled=false",
                "model.log=false"], out / "eval"
    return ["-q", "demo", "--out", str(out / "pipe"), f"tracking.uri={w.uri}"], out / "pipe"


STAGES = ["align", "pretrain", "embed", "evaluate", "pipeline"]


def test_a_second_writer_of_a_run_folder_is_refused(world: World, tmp_path: Path, capsys) -> None:
    """Another process holds the lock of each stage's output (as a running `brainmm align` would): every stage is
    refused with one line naming that process, and writes nothing."""
    out = tmp_path / "out"
    locked = {stage: _stage_argv(world, stage, out) for stage in STAGES}
    paths = [str(p) for _, p in locked.values()]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import contextlib, sys, time; from brainmm.io import run_lock\n"
                               f"with contextlib.ExitStack() as s:\n [s.enter_context(run_lock(p)) for p in {paths!r}]\n"
                               " print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        for stage, (argv, path) in locked.items():
            code, err = run(argv, capsys)
            check_error(code, err, rf"output .*{path.name} is being written by another brainmm process "
                                   rf"\(pid {holder.pid}, lock .*\.{path.name}\.lock\)")
            assert not path.exists(), stage
    finally:
        holder.kill()
        holder.wait()
    assert main(_stage_argv(world, "align", out)[0]) == 0  # the holder is gone (killed): no stale lock
    assert (out / "align" / "metrics.json").is_file()


# --------------------------------------------------------------------------------------- output folders


def _output_argv(w: World, stage: str, target: Path) -> list[str]:
    if stage == "align":
        return align_argv(w, target)
    if stage == "pretrain":
        return pretrain(w, target)
    return ["-q", "evaluate", "--align-dir", str(w.root / "align"), f"output_dir={target}", "baselines.methods=[]",
            "figures.enabled=false", "model.log=false", "retrieval.n_boot=20"]


@pytest.mark.parametrize("stage", ["align", "pretrain", "evaluate"])
def test_output_dir_that_cannot_be_a_run_folder(world: World, stage: str, tmp_path: Path, capsys) -> None:
    monkey = tmp_path / "file"
    monkey.write_text("keep me")
    check_error(*run(_output_argv(world, stage, monkey), capsys),
                r"output folder .*file: is an existing file \(expected a folder path\)")
    assert monkey.read_text() == "keep me" and left_in(tmp_path) == ["file"]
    for special in ("/proc/brainmm-out/run", "/dev/null/run"):
        check_error(*run(_output_argv(world, stage, Path(special)), capsys),
                    rf"output folder {Path(special).parent}: cannot write there \(")


@pytest.mark.parametrize("stage", ["align", "pretrain", "evaluate"])
def test_output_dir_under_a_read_only_folder(world: World, stage: str, read_only_folder: Path, capsys) -> None:
    code, err = run(_output_argv(world, stage, read_only_folder / "run"), capsys)
    check_error(code, err, r"output folder .*ro: cannot write there \(Permission denied\)")


# ------------------------------------------------------------------------------------ resume after a change


def test_resume_after_the_model_shape_changed(world: World, tmp_path: Path, capsys, monkeypatch) -> None:
    from brainmm.embeddings import EmbeddingTable

    monkeypatch.chdir(tmp_path)
    tables = tmp_path / "tables"
    tables.mkdir()
    brain = EmbeddingTable.load(world.root / "tables" / "brain")
    brain.save(tables / "brain")
    out = tmp_path / "align"
    assert main(align_argv(world, out, "train.checkpoint_every=1", brain=tables / "brain")) == 0
    saved = out / "config.yaml"
    original = saved.read_text()
    saved.write_text(original.replace("hidden_dim: 8", "hidden_dim: 12"))  # the head size, edited in place
    code, err = run(["-q", "align", "--config", str(saved), "--resume"], capsys)
    check_error(code, err, r"align --resume \(.*checkpoints\): the checkpoint does not fit the model this run builds: "
                           r"tensor '.*' is \[.*8.*\] in the checkpoint, \[.*12.*\] now \(a model size in the config or "
                           r"the width of an input table changed")
    saved.write_text(original)
    EmbeddingTable(brain.ids, np.hstack([brain.vectors, brain.vectors[:, :1]]), brain.meta).save(tables / "brain")
    code, err = run(["-q", "align", "--config", str(saved), "--resume"], capsys)
    check_error(code, err, r"align --resume .*: tensor '.*' is \[.*6.*\] in the checkpoint, \[.*7.*\] now")


# ----------------------------------------------------------------------------------------- cache modes


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_embedding_cache_honours_the_umask(world: World, tmp_path: Path, umask: int, file_mode: int,
                                           dir_mode: int) -> None:
    before = os.umask(umask)
    try:
        assert main(embed(world, tmp_path, None, f"cache_dir={tmp_path / 'cache'}")) == 0
    finally:
        os.umask(before)
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    found = [entry, *entry.rglob("*")]
    assert len(found) > 3
    for p in found:
        assert stat.S_IMODE(p.stat().st_mode) == (dir_mode if p.is_dir() else file_mode), p


# ---------------------------------------------------------------------------------------- genetics via CLI


def test_ragged_pgs_weights_via_the_cli(world: World, tmp_path: Path, capsys) -> None:
    pgs = tmp_path / "pgs.tsv"
    pgs.write_text("variant_id\teffect_allele\tpgs1\n1:60:T:A\tA\t0.5\n1:90:G:C\tC\t0.1\t9\t9\n")
    code, err = run(matrix(world, tmp_path / "out", None, f"pgs_weights={pgs}"), capsys)
    check_error(code, err, r"PGS weights .*pgs\.tsv: not a readable table \(Error tokenizing data\. C error: "
                           r"Expected 3 fields in line 3, saw 5\)")
    assert left_in(tmp_path / "out") == []


def test_pickled_genotype_tower_via_the_cli(world: World, tmp_path: Path, capsys) -> None:
    import torch

    from encoders.genotype import GenotypeEncoder, GenotypeEncoderConfig

    folder = tmp_path / "tower"
    GenotypeEncoder(GenotypeEncoderConfig(n_snps=5, hidden_sizes=(4,), output_size=3)).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save({"weights": torch.ones(2), "payload": Path("/tmp")}, folder / "pytorch_model.bin")
    from brainmm.embeddings import EmbeddingTable

    ids = EmbeddingTable.load(world.root / "tables" / "dna").ids
    dosages = np.random.default_rng(0).integers(0, 3, size=(len(ids), 5)).astype(np.float32)
    EmbeddingTable(ids, dosages, {}).save(tmp_path / "dosages")
    argv = align_argv(world, tmp_path / "out" / "align", f"towers.genetics={{dna: {{kind: genotype_mlp, checkpoint: "
                                                         f"{folder}}}}}", dna=tmp_path / "dosages")
    code, err = run(argv, capsys)
    check_error(code, err, r"pytorch_model\.bin cannot be read as a PyTorch state dict with weights_only=True: .*"
                           r"\(it needs pathlib\.PosixPath\)")
    assert left_in(tmp_path / "out") == []


# ---------------------------------------------------------------------------- pretraining split leakage


def test_embedding_val_test_subjects_of_the_pretraining_train_split(world: World, tmp_path: Path, capsys) -> None:
    from brainmm.data.fmri import FmriDataset

    assert main(pretrain(world, tmp_path / "pre")) == 0
    model = tmp_path / "pre" / "model"
    record = json.loads((model / "brainmm_pretraining.json").read_text())
    ds = FmriDataset.load(world.root / "dataset")
    assert record["data_hash"] == ds.manifest["data_hash"] and len(record["split"]) == 8
    split = ds.split.copy()
    trained = split.loc[split["split"] == "train", "subject_id"].iloc[0]
    held_out = split.loc[split["split"] != "train", "subject_id"].iloc[0]

    def dataset(name: str, moved: str, to: str) -> Path:
        table = split.copy()
        table.loc[table["subject_id"] == moved, "split"] = to
        table.to_csv(tmp_path / f"{name}.csv", index=False)
        src = world.src
        argv = ["-q", "fmri", "ingest", "--cohort", str(src / "cohort.csv"), "--coords", str(src / "coords.tsv"),
                "--out", str(tmp_path / name), "--num-timepoints", str(WINDOW), "--split-from", str(tmp_path / f"{name}.csv")]
        assert main(argv) == 0
        return tmp_path / name

    def embed_argv(ds_path: Path, *extra: str) -> list[str]:
        return ["-q", "embed", f"model={model}", f"dataset={ds_path}", f"out={tmp_path / 'emb' / ds_path.name}",
                f"cache_dir={tmp_path / 'cache'}", "device=cpu", *extra]

    leaky = dataset("leaky", trained, "test")  # a pretraining train subject is now a test subject
    code, err = run(embed_argv(leaky), capsys)
    check_error(code, err, rf"embed: 1 val/test subject\(s\) of dataset .*leaky \(e\.g\. \['{trained}'\]\) were in the "
                           r"train split the model .* was pretrained on \(dataset .*, hash [0-9a-f]{12}\), so their "
                           r"embeddings are not held out; .* pass allow_split_mismatch=true \(--allow-split-mismatch\)")
    assert left_in(tmp_path / "emb") == []
    code, err = run([*embed_argv(leaky), "--allow-split-mismatch"], capsys)
    assert code == 0 and "allowed by allow_split_mismatch" in err, err
    clean = dataset("clean", held_out, "train")  # another split, but no held-out subject was trained on
    code, err = run(embed_argv(clean), capsys)
    assert code == 0 and "was pretrained on another dataset" in err and "none of this dataset's val/test" in err, err
    code, err = run(embed_argv(world.root / "dataset"), capsys)  # the pretraining dataset itself: silent
    assert code == 0 and "pretrained" not in err, err


# ------------------------------------------------------------------ minimum sizes: one message, up front


def test_size_message_lists_every_shortfall_and_the_fix() -> None:
    from brainmm.errors import BrainmmError
    from brainmm.preflight import ALIGN_NEEDS, BASELINE_NEEDS, check_sizes, retrieval_needs, split_sizes

    assert split_sizes(5) == {"train": 3, "val": 1, "test": 1} and split_sizes(12) == {"train": 8, "val": 2, "test": 2}
    with pytest.raises(BrainmmError) as err:
        check_sizes({"train": 3, "val": 1, "test": 1}, [*ALIGN_NEEDS, *retrieval_needs(["test"]), *BASELINE_NEEDS], "x")
    message = str(err.value)
    assert message.startswith("x: too few subjects (train 3, val 1, test 1): val has 1 subject (align")
    assert "test has 1 subject (evaluate (retrieval on test) needs >= 2, the baselines (scored on test) needs >= 3)" in message
    assert "at least 8 subjects in all (train 3, val 2, test 3)" in message and "--split-from" in message
    check_sizes({"train": 3, "val": 2, "test": 3}, [*ALIGN_NEEDS, *BASELINE_NEEDS], "x")  # enough: no error


def test_a_split_needs_three_subjects(tmp_path: Path, capsys) -> None:
    write_fmri_cohort(tmp_path / "fmri", n_subjects=2)
    src = tmp_path / "fmri"
    code, err = run(["-q", "fmri", "ingest", "--cohort", str(src / "cohort.csv"), "--coords", str(src / "coords.tsv"),
                     "--out", str(tmp_path / "out"), "--num-timepoints", str(WINDOW)], capsys)
    check_error(code, err, r"split: need at least 3 subjects/groups for train/val/test, got 2; add subjects, or give "
                           r"your own assignment with `brainmm fmri ingest --split-from SPLIT\.csv`")


def test_align_with_one_val_subject(world: World, tmp_path: Path, capsys) -> None:
    split = pd.read_csv(world.root / "tables" / "split.csv", dtype=str)
    val = split.index[split["split"] == "val"]
    split.loc[val[1:], "split"] = "train"
    split.to_csv(tmp_path / "split.csv", index=False)
    code, err = run(align_argv(world, tmp_path / "out" / "align", split=tmp_path / "split.csv"), capsys)
    check_error(code, err, r"align \(subjects with brain and genetics inputs in split table .*split\.csv\): too few "
                           r"subjects \(train \d+, val 1, test 4\): val has 1 subject \(align \(validation retrieval, "
                           r"used for model selection and early stopping\) needs >= 2\); this needs at least 4 subjects in "
                           r"all \(train 2, val 2\); .*--split-from SPLIT\.csv")
    assert left_in(tmp_path / "out") == []


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


def test_a_small_cohort_works_the_first_time(world: World, tmp_path: Path, capsys, monkeypatch) -> None:
    """`brainmm demo` on 12 simulated subjects (8 train, 2 val, 2 test) runs every stage at the first attempt; the
    CCA baseline, which needs 3 test subjects, is skipped with a warning; the shuffled-pair baseline reports a
    Wilson interval, not a point."""
    monkeypatch.chdir(tmp_path)
    code, err = run(["-q", "demo", "--out", "small", "simulate.n_subjects=12", f"tracking.uri={world.uri}",
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


def test_an_impossible_size_is_one_message_before_any_stage(world: World, tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run(["-q", "demo", "--out", "tiny", "simulate.n_subjects=5", "evaluate.probes.targets=[agee]",
                     f"tracking.uri={world.uri}"], capsys)
    check_error(code, err, r"pipeline: the stages cannot run on this data \(subjects per split: train 3, val 1, test 1 "
                           r"from simulate\.n_subjects 5 .*; nothing was run\): val has 1 subject \(align .* needs >= 2, "
                           r"evaluate \(retrieval on val\) needs >= 2\); test has 1 subject \(evaluate \(retrieval on "
                           r"test\) needs >= 2\); evaluate\.probes\.targets .* \['agee'\], not columns of the cohort "
                           r"\(it has .*'age'.*\); this run needs at least 6 subjects in all \(train 2, val 2, test 2\); "
                           r".*ingest\.split_fractions .*ingest\.split_from")
    assert left_in(tmp_path) == []


def test_evaluate_checks_every_retrieval_split_up_front(world: World, tmp_path: Path, capsys, monkeypatch) -> None:
    """An align run whose test split kept one subject: evaluate names it (and any other short split) in one line
    before any work, and writes nothing."""
    monkeypatch.chdir(tmp_path)
    split = pd.read_csv(world.root / "tables" / "split.csv", dtype=str)
    test = split.index[split["split"] == "test"]
    split.loc[test[1:], "split"] = "train"
    split.to_csv(tmp_path / "split.csv", index=False)
    assert main(align_argv(world, tmp_path / "align", split=tmp_path / "split.csv")) == 0
    code, err = run(["-q", "evaluate", "--align-dir", str(tmp_path / "align"), "retrieval.splits=[val,test]",
                     "baselines.methods=[cca]"], capsys)
    check_error(code, err, r"evaluate: too few subjects with shared-space brain and genetics embeddings: dna: test has 1 "
                           r"subject \(evaluate \(retrieval on test\) needs >= 2\) \(train \d+, val 4, test 1\); give the "
                           r"short split\(s\) more subjects: .*--split-from SPLIT\.csv.*, or evaluate fewer splits "
                           r"\(retrieval\.splits\)")
    assert not (tmp_path / "align" / "evaluation").exists()
    code, err = run(["-q", "evaluate", "--align-dir", str(tmp_path / "align"), "retrieval.splits=[val]",
                     "baselines.methods=[cca]", "retrieval.n_boot=20", "retrieval.kway=0", "figures.enabled=false",
                     "model.log=false"], capsys)
    assert code == 0 and "evaluate: baselines ['cca'] for 'dna' skipped: test has 1 subject" in err, err
