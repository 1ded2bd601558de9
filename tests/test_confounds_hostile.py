"""Confounds that fabricate signal (issue 29): a covariate equal to a feature column, probes of an adjusted
covariate, an adjustment that removes most of a modality's variance, a text cell in a numeric covariate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from stage_inputs import check_error
from test_confounds_app import align_config, small_inputs

from alignment.confounds import CovariateDesign, Residualiser
from alignment.probes import linear_probe
from brainmm.align import ConfoundsConfig, run_align
from brainmm.align.confounds import residualise_rows, to_dosage_range
from brainmm.config import load_config


def _cohort(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    cov = pd.DataFrame({"age": rng.uniform(40, 80, n), "sex": rng.choice(["F", "M"], n)})
    dosages = rng.binomial(2, rng.uniform(0.1, 0.5, 600), size=(n, 600)).astype(np.float32)
    return cov, dosages


def test_probe_of_an_adjusted_covariate_is_at_chance_with_in_fold_residuals() -> None:
    """Inputs adjusted on train subjects keep a sex-dependent shift in held-out ones (the train fit's error): a
    probe learns sex back from it although sex is random. Residualised inside each probe fold, it is at chance."""
    cov, dosages = _cohort(400, 0)
    train, held = np.arange(200), np.arange(200, 400)
    res = Residualiser(["age", "sex"]).fit(dosages[train], cov.iloc[train])
    adjusted = res.transform(dosages[held], cov.iloc[held])
    sex = cov["sex"].to_numpy()[held]
    kw: dict[str, Any] = {"task": "classification", "n_boot": 10, "n_permutations": 0, "seed": 0}
    raw = linear_probe(dosages[held], sex, **kw)[0]["value"]
    fabricated = linear_probe(adjusted, sex, **kw)[0]["value"]
    design = CovariateDesign(["age", "sex"]).fit(cov.iloc[train]).transform(cov.iloc[held])
    fixed = linear_probe(adjusted, sex, confounds=design, **kw)[0]["value"]
    # balanced accuracy of 200 random labels: SD about 0.035 around 0.5
    assert fabricated > 0.75 and raw < 0.62 and fixed < 0.62, (raw, fabricated, fixed)


def test_a_large_offset_column_with_a_small_real_spread_is_kept() -> None:
    """Rounding scales with a value's magnitude: a float32 column of 1000 +- 0.05 has 800 units of spread."""
    cov, dosages = _cohort(200, 9)
    column = (1000.0 + 0.05 * np.random.default_rng(10).normal(size=200)).astype(np.float32)
    fit = Residualiser(["age", "sex"]).fit(np.column_stack([dosages[:, :3], column]), cov)
    assert fit.degenerate_.tolist() == []


def test_a_covariate_equal_to_one_column_leaves_zero_not_stretched_noise() -> None:
    cov, dosages = _cohort(200, 1)
    cov["snp"] = dosages[:, 7].astype(np.float64)  # a covariate that is one SNP
    train = np.arange(120)
    res = Residualiser(["age", "sex", "snp"]).fit(dosages[train], cov.iloc[train])
    assert res.degenerate_.tolist() == [7]
    out = res.transform(dosages, cov)
    assert np.all(out[:, 7] == 0.0) and np.ptp(out[:, 6]) > 1
    is_train = np.isin(np.arange(200), train)
    scaled = to_dosage_range(out.astype(np.float32), is_train)
    assert np.ptp(scaled[:, 7]) == 0.0
    # without the guard the 1e-16 rounding noise is stretched onto the whole dosage range
    design = np.hstack([np.ones((200, 1)), res.design.transform(cov)])
    noise = dosages[:, 7] - design @ res.coef_[:, 7]
    assert np.abs(noise).max() < 1e-12 and np.ptp(to_dosage_range(noise[:, None], is_train)) > 1.5
    # near-equal: within 10 roundoff units of the input's float type it is noise; above it, a (small) residual
    for dtype, shift, degenerate in ((np.float32, 1e-7, True), (np.float32, 1e-4, False),
                                     (np.float64, 1e-14, True), (np.float64, 1e-10, False)):
        near = dosages.astype(np.float64)
        near[:, 3] = cov["snp"] + shift * np.random.default_rng(2).normal(size=200)
        fit = Residualiser(["age", "sex", "snp"]).fit(near[train].astype(dtype), cov.iloc[train])
        assert (3 in fit.degenerate_) is degenerate and 7 in fit.degenerate_, (dtype, shift)


def test_adjustment_warnings_name_the_modality_column_and_share(caplog: pytest.LogCaptureFixture) -> None:
    cov, dosages = _cohort(100, 3)
    cov.index = pd.Index([f"s{i}" for i in range(100)], name="subject_id")
    cov["snp"] = dosages[:, 2].astype(np.float64)
    vectors = dosages[:, :4] + 20.0 * (cov["sex"].to_numpy() == "M")[:, None]  # sex dominates
    cfg = ConfoundsConfig(covariates=["age", "sex", "snp"])
    with caplog.at_level(logging.WARNING, logger="brainmm"):
        fit = residualise_rows(cfg, cov, vectors.astype(np.float32), list(cov.index), set(cov.index[:60]),
                               "genotype inputs")
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "confounds (genotype inputs): 1 of 4 column(s) (0-based [2]; for a genotype matrix" in text
    assert f"confounds (genotype inputs): the adjustment removed {100 * fit.r2:.0f} % of the variance" in text
    assert fit.r2 > 0.9


def test_text_cell_in_a_numeric_covariate_names_the_cell(tmp_path: Path, mlflow_uri: str, capsys: Any) -> None:
    from brainmm.cli import main

    inputs = small_inputs(tmp_path)
    cohort = pd.read_csv(inputs["cohort"])
    cohort["age"] = cohort["age"].round(1).astype(object)
    cohort.loc[5, "age"] = "unknown"
    cohort.to_csv(inputs["cohort"], index=False)
    (tmp_path / "align.yaml").write_text("train: {epochs: 1, batch_size: 8}\n")
    out = tmp_path / "run"
    capsys.readouterr()
    code = main(["-q", "align", "--config", str(tmp_path / "align.yaml"), f"output_dir={out}",
                 f"data.brain={inputs['brain']}", f"data.genetics={{genotype: {inputs['genotype']}}}",
                 f"data.split={inputs['split']}", f"tracking.uri={mlflow_uri}", "confounds.covariates=[age]",
                 f"confounds.cohort={inputs['cohort']}"])
    check_error(code, capsys.readouterr().err, r"confound column 'age' in .*cohort\.csv: row 6 \(subject 's05'\) "
                                                r"has 'unknown', not a number.*confounds\.categorical")
    assert not out.exists() or not any(out.iterdir())
    cfg = ConfoundsConfig(covariates=["age"], categorical=["age"], cohort=inputs["cohort"])
    from brainmm.align import covariate_table

    assert covariate_table(cfg, inputs["subjects"][:6], "align")["age"].iloc[5] == "unknown"  # declared: accepted


def test_evaluate_probes_a_covariate_target_on_unadjusted_inputs_only(tmp_path: Path, mlflow_uri: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from dataclasses import fields

    from brainmm.evaluate import EvaluateConfig, run_evaluate

    inputs = small_inputs(tmp_path, n=60)
    cohort = pd.read_csv(inputs["cohort"])
    cohort["height"] = np.random.default_rng(4).normal(170, 10, len(cohort))
    cohort.to_csv(inputs["cohort"], index=False)
    cfg = align_config(inputs, False, mlflow_uri, epochs=2)
    cfg.train.batch_size = 8
    cfg.confounds = ConfoundsConfig(covariates=["site", "age"], cohort=inputs["cohort"])
    align = run_align(cfg)
    ev = load_config(EvaluateConfig, None, [
        f"align_dir={align.run_dir}", "retrieval.n_boot=20", "retrieval.kway=0", "baselines.methods=[]",
        "model.log=false", "figures.enabled=false", f"data.cohort={inputs['cohort']}", "probes.targets=[site,height]",
        "probes.splits=[train,val,test]", "probes.n_splits=3", "probes.n_boot=10", "probes.n_permutations=0",
        *(["explain.enabled=false"] if "explain" in {f.name for f in fields(EvaluateConfig)} else [])])
    with caplog.at_level(logging.WARNING, logger="brainmm"):
        table = run_evaluate(ev).table
    probes = table[table["section"] == "probe"]
    site = set(probes.loc[probes["target"] == "site", "representation"])
    height = set(probes.loc[probes["target"] == "height", "representation"])
    assert site == {"brain_unadjusted", "genotype_unadjusted", "concat_brain_genotype_unadjusted"}, site
    assert {"brain", "genotype", "brain_unadjusted", "genotype_unadjusted", "shared_brain"} <= height, height
    assert any("probe target(s) ['site'] are adjusted covariates" in r.getMessage() for r in caplog.records)


def test_a_covariate_constant_up_to_rounding_is_refused_not_standardised() -> None:
    from alignment.errors import AlignmentInputError

    cov, _ = _cohort(50, 5)
    cov["scanner_gain"] = 1.7 + np.random.default_rng(6).normal(scale=1e-15, size=50)  # 1.7 plus float noise
    assert np.ptp(cov["scanner_gain"]) > 0
    with pytest.raises(AlignmentInputError, match=r"confound column 'scanner_gain': constant over the training rows"):
        CovariateDesign(["age", "scanner_gain"]).fit(cov)
    cov["scanner_gain"] = 1.7 + np.random.default_rng(6).normal(scale=1e-6, size=50)  # small but real
    assert CovariateDesign(["age", "scanner_gain"]).fit(cov).stats_["scanner_gain"][1] > 0


def test_an_infinite_covariate_value_names_the_subject(tmp_path: Path) -> None:
    from brainmm.align import covariate_table
    from brainmm.errors import BrainmmError

    inputs = small_inputs(tmp_path)
    cohort = pd.read_csv(inputs["cohort"])
    cohort["age"] = cohort["age"].astype(str)
    cohort.loc[2, "age"] = "inf"  # pandas reads it as a float: not a text cell, not a missing value
    cohort.to_csv(inputs["cohort"], index=False)
    cfg = ConfoundsConfig(covariates=["age"], cohort=inputs["cohort"])
    with pytest.raises(BrainmmError, match=r"confound column 'age': 1 subject\(s\) have an infinite value, e\.g\. "
                                           r"\['s02'\] in .*cohort\.csv"):
        covariate_table(cfg, inputs["subjects"], "align")


def test_in_fold_residuals_need_more_rows_than_confound_columns() -> None:
    from alignment.errors import AlignmentInputError

    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(12, 3)), np.tile([0, 1], 6)
    with pytest.raises(AlignmentInputError, match=r"a probe fold has \d+ training rows for 13 confound columns"):
        linear_probe(x, y, task="classification", n_splits=2, n_boot=2, n_permutations=0,
                     confounds=rng.normal(size=(12, 12)))


def test_probe_targets_all_missing_or_of_mixed_types() -> None:
    from alignment.errors import AlignmentInputError
    from alignment.probes import probe_representations

    rng = np.random.default_rng(12)
    table = pd.DataFrame({"subject_id": [f"s{i}" for i in range(20)], "empty": [np.nan] * 20,
                          "mixed": [1, "x"] * 10})
    kw: dict[str, Any] = {"n_boot": 2, "n_permutations": 0, "n_splits": 2}
    with pytest.raises(AlignmentInputError, match=r"target 'empty': no row has a value \(all 20 missing\)"):
        probe_representations({"x": rng.normal(size=(20, 3))}, table, ["empty"], **kw)
    report = probe_representations({"x": rng.normal(size=(20, 3))}, table, ["mixed"], **kw)  # labels as text
    assert {r["task"] for r in report.records} == {"classification"}
