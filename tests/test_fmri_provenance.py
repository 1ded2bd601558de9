"""`brainmm.data.fmri.provenance`: embedding val/test subjects that were in the model's pretraining train split
is refused (allowed with a warning by allow_split_mismatch); another split without such subjects only warns."""

from __future__ import annotations

import json
from pathlib import Path

from stage_inputs import WINDOW, World, check_error, left_in, pretrain, run

from brainmm.cli import main


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
