"""`brainmm run --resume` (stage markers, reuse only when config and inputs are unchanged) and `--dry-run` (the
cost plan, nothing written), on a tiny pipeline run in-process through brainmm.cli.main."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from brainmm.cli import main

# the demo pipeline shrunk to seconds; evaluate off (resume is about the stages before it)
TINY = [
    "simulate.n_subjects=60", "simulate.brain.n_timepoints=200",
    "pretrain.train.max_steps=1", "pretrain.train.batch_size=4", "pretrain.eval.max_windows=4",
    "pretrain.model.arch.hidden_size=16", "pretrain.model.arch.intermediate_size=32",
    "pretrain.model.arch.decoder_hidden_size=16", "pretrain.model.arch.decoder_intermediate_size=32",
    "pretrain.model.arch.timepoint_patching_size=20", "genetics.genotype_mlp.hidden_sizes=[16]",
    "genetics.genotype_mlp.output_size=8", "align.train.epochs=1", "align.train.batch_size=8",
    "align.head.hidden_dim=16", "align.head.out_dim=8", "brain_inputs=[brainlm]", "stages.evaluate=false",
    "threads=1",
]
WATCH = {"simulate": "cohort/cohort.csv", "ingest": "fmri/manifest.json", "pretrain": "pretrain/model/config.json",
         "embed": "embed/brain.safetensors", "genetics": "genetics/genotypes.safetensors", "align": "align/heads.json"}


def _mtimes(out: Path) -> dict[str, int]:
    return {stage: (out / path).stat().st_mtime_ns for stage, path in WATCH.items()}


def _statuses(out: Path) -> dict[str, str]:
    return {s: r["status"] for s, r in json.loads((out / "pipeline.json").read_text())["records"].items()}


@pytest.fixture
def work(tmp_path: Path, _migrated_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with its own MLflow DB (sqlite:///mlflow.db there)."""
    import shutil

    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_resume_reuses_finished_stages_and_reruns_changed_ones(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "out"
    assert main(["demo", "--quiet", "--out", "out", *TINY]) == 0
    for marker in ("cohort/stage.json", "fmri/stage.json", "pretrain/stage.json", "embed/brain.stage.json",
                   "genetics/genotypes.stage.json", "align/stage.json"):
        assert (out / marker).is_file(), marker
    first = _mtimes(out)
    printed = capsys.readouterr().out
    assert printed.index("plan (60 subjects") < printed.index("Stages (wall / CPU seconds)")  # the plan comes first
    assert "pretrain took" in (out / "brainmm.log").read_text()  # measured against the estimate, rest re-estimated

    # the folder is taken: the message names --resume and --overwrite, and no option `brainmm run` lacks
    assert main(["run", str(Path(__file__).parents[1] / "configs" / "demo.yaml"), "--quiet", "output_dir=out",
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and "--out" not in err.replace("--overwrite", "")

    # stopped after genetics (align's completion marker gone): resume reuses simulate..genetics, runs align
    (out / "align" / "stage.json").unlink()
    assert main(["demo", "--quiet", "--resume", "--out", "out", *TINY]) == 0
    again = _mtimes(out)
    assert {s: again[s] == first[s] for s in WATCH} == {**{s: True for s in WATCH}, "align": False}
    assert _statuses(out) == {**{s: "reused" for s in ("simulate", "ingest", "pretrain", "embed", "genetics")},
                              "align": "finished"}
    assert "pretrain reused" in (out / "brainmm.log").read_text()

    # a changed config value re-runs that stage and every stage after it
    assert main(["demo", "--quiet", "--resume", "--out", "out", *TINY, "pretrain.train.max_steps=2"]) == 0
    third = _mtimes(out)
    assert {s: third[s] == again[s] for s in WATCH} == {"simulate": True, "ingest": True, "pretrain": False,
                                                        "embed": False, "genetics": False, "align": False}

    # an input changed on disk after it was recorded (a stage's output edited) re-runs from that stage
    genotypes = out / "genetics" / "genotypes.json"
    os.utime(genotypes, ns=(genotypes.stat().st_atime_ns, genotypes.stat().st_mtime_ns + 10**9))
    assert main(["demo", "--quiet", "--resume", "--out", "out", *TINY, "pretrain.train.max_steps=2"]) == 0
    assert _statuses(out)["embed"] == "reused" and _statuses(out)["genetics"] == "finished"

    # nothing changed: every stage is reused, nothing is rewritten
    before = _mtimes(out)
    assert main(["demo", "--quiet", "--resume", "--out", "out", *TINY, "pretrain.train.max_steps=2"]) == 0
    assert _mtimes(out) == before and set(_statuses(out).values()) == {"reused"}


def test_resume_refuses_a_folder_that_is_not_a_pipeline_run(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "out").mkdir()
    (work / "out" / "notes.txt").write_text("mine")
    assert main(["demo", "--quiet", "--resume", "--out", "out", *TINY]) == 2
    assert "--resume continues a pipeline folder" in capsys.readouterr().err
    assert (work / "out" / "notes.txt").read_text() == "mine"


def test_dry_run_prints_the_plan_and_writes_nothing(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--dry-run", "--out", "out", *TINY]) == 0
    text = capsys.readouterr().out
    assert "60 subjects" in text and "48 parcels x 200 TRs" in text
    for stage in ("simulate", "ingest", "pretrain", "embed", "genetics", "align"):
        assert f"\n  {stage} " in text, stage
    assert "evaluate" not in text and "total" in text
    assert not (work / "out").exists()


def test_plan_warns_before_a_long_stage_naming_its_knobs(work: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from brainmm.pipeline import cost

    slow = dict(cost.RATES["cpu"], align=cost.Rate(s_per_unit=1.0))  # align estimated at days
    monkeypatch.setitem(cost.RATES, "cpu", slow)
    assert main(["demo", "--dry-run", "--out", "out", *TINY]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "stage align" in warnings[0] and "align.train.epochs" in warnings[0]


def test_digests_ignore_settings_at_their_defaults(tmp_path: Path) -> None:
    """A field a newer brainmm adds (at its default) or a default value written out explicitly keeps a finished
    stage's digest; a value that differs from the default changes it and every later stage's."""
    import dataclasses

    from brainmm.config import load_config
    from brainmm.pipeline import PipelineConfig
    from brainmm.pipeline.plan import make_plan
    from brainmm.pipeline.resume import digests, settings

    @dataclasses.dataclass
    class Old:
        lr: float = 1e-3
        layers: list[int] = dataclasses.field(default_factory=lambda: [64])

    @dataclasses.dataclass
    class New(Old):
        warmup: int = 0  # added later, at its default

    assert settings(Old(lr=0.01)) == settings(New(lr=0.01)) == {"lr": 0.01}
    assert settings(New(layers=[64])) == {} and settings(New(layers=[32])) == {"layers": [32]}

    def plan_digests(*overrides: str) -> dict[str, str]:
        return digests(make_plan(load_config(PipelineConfig, None, [f"output_dir={tmp_path}", *overrides])))

    base = plan_digests()
    default_steps = PipelineConfig().pretrain.train.max_steps
    assert plan_digests(f"pretrain.train.max_steps={default_steps}") == base
    changed = plan_digests(f"pretrain.train.max_steps={default_steps + 1}")
    stages = list(base)
    after = stages[stages.index("pretrain"):]
    assert {s: changed[s] != base[s] for s in stages} == {s: s in after for s in stages}
