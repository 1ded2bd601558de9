"""The cost plan (`brainmm.pipeline.cost`): work units from the shapes, the linear rate model, rendering, the long-stage
warning with its knobs, refinement during a run, and the CPU BrainLM rule in `make_plan`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainmm.config import load_config
from brainmm.pipeline import PipelineConfig, make_plan
from brainmm.pipeline import cost as C

REPO = Path(__file__).resolve().parents[1]
UKB = ["simulate.brain.n_parcels=424", "simulate.brain.n_timepoints=490", "simulate.n_subjects=200",
       "pretrain.train.device=cpu", "embed.device=cpu", "align.train.device=cpu"]
ONE = C.Rate(s_per_unit=1e-6, base_s=2.0, mb_per_unit=1e-6, base_mb=100.0, bytes_per_unit=4.0)


def _cfg(tmp_path: Path, *overrides: str) -> PipelineConfig:
    return load_config(PipelineConfig, REPO / "configs" / "demo.yaml", [f"output_dir={tmp_path / 'out'}", *overrides])


@pytest.fixture
def unit_rates(monkeypatch: pytest.MonkeyPatch) -> dict[str, C.Rate]:
    """Every stage at the same made-up rate on the CPU (the tests check the model, not the measured table)."""
    rates = {s: ONE for s in C.KNOBS}
    monkeypatch.setitem(C.RATES, "cpu", rates)
    return rates


def test_measured_rate_table_covers_every_stage_on_cpu() -> None:
    assert set(C.RATES["cpu"]) == set(C.KNOBS)
    assert all(r.s_per_unit > 0 for r in C.RATES["cpu"].values())
    assert "benchmarks/" in C.RATES_SOURCE["cpu"]


def test_units_follow_the_shapes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, *UKB)
    s = C.data_shapes(cfg)
    assert (s.subjects, s.recordings, s.parcels, s.timepoints, s.window, s.variants) == (200, 200, 424, 490, 200, 128)
    work, size = C.stage_units("connectivity", cfg, s)
    assert work == 200 * 424 * 424 * 490 and size == 200 * 424 * 423 / 2
    double = C.Shapes(**{**vars(s), "subjects": 400, "recordings": 400})
    for stage in ("simulate", "ingest", "connectivity", "embed", "genetics", "align", "evaluate"):
        assert C.stage_units(stage, cfg, double)[0] == pytest.approx(2 * C.stage_units(stage, cfg, s)[0]), stage
    # pretraining does not grow with the cohort: steps x batch x tokens
    assert C.stage_units("pretrain", cfg, double) == C.stage_units("pretrain", cfg, s)
    arch = dict(num_brain_voxels=10, num_timepoints_per_voxel=40, timepoint_patching_size=20, mask_ratio=0.5,
                hidden_size=4, intermediate_size=8, num_hidden_layers=1, decoder_hidden_size=4,
                decoder_intermediate_size=8, decoder_num_hidden_layers=1)
    # per layer over n tokens: (4 h^2 + 2 h i) n + 2 n^2 h; encoder n = 0.5 * 20 + 1 = 11, decoder and embedding 21
    assert C.pretrain_units(arch, 3) == 6 * 3 * ((128 * 11 + 2 * 121 * 4) + (128 * 21 + 2 * 441 * 4))
    assert C.embed_units(arch) == 2 * (128 * 21 + 2 * 441 * 4)
    assert C.checkpoint_bytes(arch) == 28 * 2 * 128
    assert C.stage_units("connectivity", cfg, C.Shapes(subjects=10)) is None  # parcels unknown before ingest


def test_estimate_render_and_warning(tmp_path: Path, unit_rates: dict) -> None:
    cfg = _cfg(tmp_path, *UKB, "brain_inputs=[connectivity]")
    plan = C.estimate(cfg, ["simulate", "connectivity", "align"])
    work, size = C.stage_units("connectivity", cfg, plan.shapes)
    fc = plan.stages["connectivity"]
    assert fc.seconds == pytest.approx(2.0 + 1e-6 * work) and fc.peak_mb == pytest.approx(100 + 1e-6 * size)
    assert fc.disk_bytes == pytest.approx(4 * size)
    text = C.render(plan)
    assert "200 subjects" in text and "424 parcels x 490 TRs" in text and "total" in text
    assert C.human_time(fc.seconds) in text
    long = [c.stage for c in plan.long_stages()]
    assert long == ["connectivity"]  # 17.6e9 units x 1e-6 s: ~4.9 h
    (line,) = C.warnings(plan)
    assert "connectivity" in line and "connectivity.kind" in line and "over 30 minutes" in line


def test_stage_without_rates_is_unknown_not_guessed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(C.RATES, "cpu", {})
    plan = C.estimate(_cfg(tmp_path, *UKB), ["ingest"])
    assert plan.stages["ingest"].seconds is None and "no rates measured for cpu" in C.render(plan)
    assert not C.warnings(plan)


def test_refine_rescales_the_remaining_stages_from_the_table(tmp_path: Path, unit_rates: dict) -> None:
    plan = C.estimate(_cfg(tmp_path, *UKB), ["ingest", "connectivity", "genetics", "align"])
    table = {k: c.table_seconds for k, c in plan.stages.items()}
    assert C.refine(plan, {"ingest": 3 * table["ingest"]}) == pytest.approx(3)
    assert plan.stages["align"].seconds == pytest.approx(3 * table["align"])
    ratio = C.refine(plan, {"ingest": 3 * table["ingest"], "connectivity": table["connectivity"]})
    assert ratio == pytest.approx(2)  # median of 3 and 1, against the table (no compounding)
    assert plan.stages["align"].seconds == pytest.approx(2 * table["align"])


def test_cpu_without_checkpoint_goes_fc_only_unless_pretraining_is_asked(tmp_path: Path, unit_rates: dict) -> None:
    unit_rates["pretrain"] = C.Rate(s_per_unit=1e-9)  # UKB shape, 100 steps: ~2.4 h; demo shape, 1 step: ~10 s
    plan = make_plan(_cfg(tmp_path, *UKB))
    assert "pretrain" not in plan.stages and "embed" not in plan.stages
    assert plan.config.brain_inputs == ["connectivity"]
    (note,) = plan.notes
    assert "FC-only path" in note and "stages.pretrain=true" in note and "424 parcels" in note
    asked = make_plan(_cfg(tmp_path, *UKB, "stages.pretrain=true"))
    assert "pretrain" in asked.stages and not asked.notes
    assert asked.config.brain_inputs == ["brainlm", "connectivity"]
    small = make_plan(_cfg(tmp_path, "pretrain.train.device=cpu", "pretrain.train.max_steps=1",
                           "simulate.n_subjects=60"))
    assert "pretrain" in small.stages and not small.notes  # a cheap pretraining keeps BrainLM


def test_shapes_of_real_inputs(tmp_path: Path) -> None:
    dataset = tmp_path / "fmri"
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps({
        "num_subjects": 7, "num_recordings": 9, "num_parcels": 424, "num_timepoints": 200,
        "timepoints_per_recording": {"min": 300, "max": 490}}))
    bim = tmp_path / "g.bim"
    bim.write_text("".join(f"1\trs{i}\t0\t{i + 1}\tA\tG\n" for i in range(37)))
    s = C.data_shapes(_cfg(tmp_path, f"data.fmri_dataset={dataset}", f"genetics.matrix.bed={tmp_path / 'g.bed'}"))
    assert (s.subjects, s.recordings, s.parcels, s.timepoints, s.window, s.variants) == (7, 9, 424, 490, 200, 37)
    bgen = tmp_path / "g.bgen"
    bgen.write_bytes((20).to_bytes(4, "little") + (20).to_bytes(4, "little") + (12345).to_bytes(4, "little")
                     + (7).to_bytes(4, "little") + b"\0" * 8)
    assert C.data_shapes(_cfg(tmp_path, f"genetics.matrix.bgen={bgen}")).variants == 12345


def test_shapes_of_a_cohort_table(tmp_path: Path) -> None:
    import numpy as np

    coords = tmp_path / "coords.tsv"
    coords.write_text("x\ty\tz\n" + "".join(f"{i}\t0\t0\n" for i in range(5)))
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", np.zeros((30, 5)))
    (tmp_path / "cohort.csv").write_text("subject_id,path\ns1,a.npy\ns2,b.npy\n")
    s = C.data_shapes(_cfg(tmp_path, f"data.fmri_cohort={tmp_path / 'cohort.csv'}", f"ingest.coords={coords}"))
    assert (s.subjects, s.recordings, s.parcels, s.timepoints, s.source) == (2, 2, 5, 30, "cohort table")
