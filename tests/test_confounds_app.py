"""Confound adjustment in the application (issue 14): the `confounds` config section, train-fitted residualisation of
both modalities' inputs in `brainmm align`, bad covariate columns (one-line CLI errors, nothing written), and the
acceptance scenario (strong population confounding, no / default genetic effect) over 5 seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from brainmm.align import AlignConfig, ConfoundsConfig, covariate_table, run_align
from brainmm.config import load_config
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError

CONFOUNDING = ["population.n_groups=3", "population.fst=0.1", "population.site_association=0.9",
               "population.brain_effect=1.0", "sites.n_sites=3"]
COVARIATES = ["age", "sex", "site"]


def build_inputs(folder: Path, seed: int, effect: float, n_subjects: int = 200, n_pcs: int = 5,
                 confounding: list[str] = CONFOUNDING) -> dict[str, Any]:
    """A simulated cohort and the app's inputs: split, brain feature table (per-parcel log-variance + Fisher-z FC),
    genotype matrix (`genetics matrix`, train-fitted QC), genetic PCs (`genetics pca`, fitted on train)."""
    from brainmm.data.genetics import run_matrix
    from brainmm.data.genetics.config import GeneticPcaConfig, GenotypeMatrixConfig
    from brainmm.data.genetics.pca import run_pca
    from brainmm.data.simulate import SimulationConfig, simulate_cohort
    from brainmm.data.simulate.power import recording_features
    from brainmm.data.splits import make_split

    sim = load_config(SimulationConfig, None, [f"seed={seed}", f"n_subjects={n_subjects}", "brain.n_timepoints=400", "genotypes.n_blocks=16", "factors.h2=0.9", "factors.n_causal=2",
                                                f"effects.effect_size={effect}", *confounding])
    cohort_dir = simulate_cohort(sim, folder / "cohort")
    cohort = pd.read_csv(cohort_dir / "cohort.csv", dtype={"subject_id": str, "site": str, "family": str})
    split = make_split(cohort["subject_id"], cohort["family"], (0.6, 0.2, 0.2), seed=seed)
    split.to_csv(folder / "split.csv", index=False)
    brain = np.stack([recording_features(np.load(cohort_dir / f)) for f in cohort["file"]])
    EmbeddingTable(cohort["subject_id"].tolist(), brain, {"kind": "brain_features"}).save(folder / "brain")
    vcf = str(cohort_dir / "genotypes.vcf.gz")
    run_matrix(GenotypeMatrixConfig(vcf=vcf, split=str(folder / "split.csv"), out=str(folder / "genotypes")))
    run_pca(GeneticPcaConfig(vcf=vcf, split=str(folder / "split.csv"), n_pcs=n_pcs, out=str(folder / "pcs")))
    return {"folder": folder, "cohort": str(cohort_dir / "cohort.csv"), "split": str(folder / "split.csv"),
            "brain": str(folder / "brain"), "genotype": str(folder / "genotypes"), "pcs": str(folder / "pcs"),
            "n_pcs": n_pcs}


# The acceptance runs use the app's kind of head (brainmm.pipeline: linear, started from the train-fitted PCA -> CCA
# solution, CLIP fine-tuning, best epoch on validation) on standardised features (the brain table here mixes log
# variances and FC, unscaled), with a shorter schedule than the demo's 200 epochs.
APP_HEADS = ["head.kind=linear", "head.init=cca", "head.out_dim=512", "head.dropout=0.3", "head.standardize=true",
             "train.epochs=40", "train.patience=20"]


def align_config(inputs: dict[str, Any], adjusted: bool, uri: str, epochs: int = 60, name: str = "",
                 extra: list[str] | tuple[str, ...] = ()) -> AlignConfig:
    """Heads-only alignment (brain table <-> genotype-matrix table), confounds on or off; `extra` overrides last."""
    confounds = []
    if adjusted:
        confounds = [f"confounds.covariates=[{','.join(COVARIATES)}]", f"confounds.genetic_pcs={inputs['n_pcs']}",
                     f"confounds.pcs={inputs['pcs']}", f"confounds.cohort={inputs['cohort']}"]
    out = inputs["folder"] / (name or ("adjusted" if adjusted else "unadjusted"))
    return load_config(AlignConfig, None, [
        f"output_dir={out}", f"data.brain={inputs['brain']}", f"data.genetics={{genotype: {inputs['genotype']}}}",
        f"data.split={inputs['split']}", f"train.epochs={epochs}", "train.batch_size=32", "train.warmup_steps=10",
        "train.patience=20", "train.checkpoint_every=100000", "head.hidden_dim=256", "head.out_dim=64",
        "head.dropout=0.3", "train.precision=fp32", f"tracking.uri={uri}", *confounds, *extra])


def test_ranks(result: Any) -> np.ndarray:
    """0-based brain -> genotype ranks of the test subjects in the shared space."""
    from alignment.retrieval import pair_ranks

    brain = EmbeddingTable.load(result.embeddings["test"]["brain"])
    genes = EmbeddingTable.load(result.embeddings["test"]["genotype"]).subset(brain.ids)
    return pair_ranks(brain.vectors, genes.vectors)[0]


test_ranks.__test__ = False  # a helper, not a test


# ------------------------------------------------------------------------------------------- small inputs


def small_inputs(folder: Path, n: int = 40, seed: int = 0) -> dict[str, Any]:
    """Random tables (brain features, dosages), a split, a cohort table whose site shifts the brain features."""
    rng = np.random.default_rng(seed)
    subjects = [f"s{i:02d}" for i in range(n)]
    site = np.array(["A", "B"])[np.arange(n) % 2]
    age = rng.uniform(20, 80, n)
    brain = rng.normal(size=(n, 6)) + 3.0 * (site == "B")[:, None] + 0.05 * age[:, None]
    dosages = rng.integers(0, 3, size=(n, 10)).astype(np.float32)
    EmbeddingTable(subjects, brain, {"kind": "brain_features"}).save(folder / "brain")
    EmbeddingTable(subjects, dosages, {"kind": "genotype_matrix"}).save(folder / "genotypes")
    split = np.where(np.arange(n) < 0.6 * n, "train", np.where(np.arange(n) < 0.8 * n, "val", "test"))
    pd.DataFrame({"subject_id": subjects, "group": subjects, "split": split}).to_csv(folder / "split.csv", index=False)
    cohort = pd.DataFrame({"subject_id": subjects, "site": site, "age": age, "scanner": "X", "motion": age / 100})
    cohort.loc[3, "motion"] = np.nan
    cohort.to_csv(folder / "cohort.csv", index=False)
    return {"folder": folder, "cohort": str(folder / "cohort.csv"), "split": str(folder / "split.csv"),
            "brain": str(folder / "brain"), "genotype": str(folder / "genotypes"), "subjects": subjects,
            "site": site, "age": age, "brain_x": brain}


def test_align_residualises_both_inputs_on_train_fitted_confounds(tmp_path: Path, mlflow_uri: str) -> None:
    inputs = small_inputs(tmp_path)
    cfg = align_config(inputs, False, mlflow_uri, epochs=2)
    cfg.train.batch_size = 8
    cfg.confounds = ConfoundsConfig(covariates=["site", "age"], cohort=inputs["cohort"])
    result = run_align(cfg)
    r2 = result.metrics["counts"]["confounds_r2"]
    assert r2["brain"] > 0.5 and 0 <= r2["genotype"] < 0.5  # the site shift dominates the brain features
    # the adjustment is a least-squares fit on the 24 train subjects only, then each site's residuals are scaled
    # to the pooled SD (both fitted on train; float64 reference)
    train = np.arange(24)
    x = np.column_stack([np.ones(40), (inputs["site"] == "B").astype(float), inputs["age"]])
    beta = np.linalg.lstsq(x[train], inputs["brain_x"][train], rcond=None)[0]
    expected = inputs["brain_x"] - x @ beta
    pooled = expected[train].std(0)
    for site in ("A", "B"):
        expected[inputs["site"] == site] *= pooled / expected[train][inputs["site"][train] == site].std(0)
    from brainmm.align import load_align_data
    from brainmm.align.confounds import input_adjuster  # noqa: PLC0415 (the hook run_align installs)

    data = load_align_data(cfg.data, adjust=input_adjuster(cfg.confounds, {}))
    got = np.concatenate([data.splits[s].brain.numpy() for s in ("train", "val", "test")])
    order = np.concatenate([[int(s[1:]) for s in data.splits[s].subjects] for s in ("train", "val", "test")])
    np.testing.assert_allclose(got, expected[order], atol=1e-5 * np.abs(expected).max())
    assert abs(np.corrcoef(got[: len(train)][:, 0], x[order[: len(train)], 1])[0, 1]) < 1e-6
    genes = data.splits["train"].genetics["genotype"].numpy()
    assert genes.min() >= 0 and genes.max() <= 2  # dosages for a genotype tower stay in [0, 2]
    card = (result.run_dir / "model_card.md").read_text()
    assert "confounds: inputs residualised on site, age" in card


@pytest.mark.parametrize(("covariate", "message"), [
    ("height", r"confound column 'height' \(confounds.covariates\): not in the cohort table .*cohort.csv"),
    ("scanner", r"confound column 'scanner': constant \('X'\) over the 40 subjects"),
    ("motion", r"confound column 'motion': 1 subject\(s\) have a missing value, e.g. \['s03'\]"),
])
def test_bad_confound_column_is_one_line_and_writes_nothing(tmp_path: Path, mlflow_uri: str, capsys: Any,
                                                            covariate: str, message: str) -> None:
    from stage_inputs import check_error

    from brainmm.cli import main

    inputs = small_inputs(tmp_path)
    (tmp_path / "align.yaml").write_text("train: {epochs: 1, batch_size: 8}\n")
    out = tmp_path / "run"
    capsys.readouterr()
    code = main(["-q", "align", "--config", str(tmp_path / "align.yaml"), f"output_dir={out}",
                 f"data.brain={inputs['brain']}", f"data.genetics={{genotype: {inputs['genotype']}}}",
                 f"data.split={inputs['split']}", f"tracking.uri={mlflow_uri}", f"confounds.covariates=[{covariate}]",
                 f"confounds.cohort={inputs['cohort']}"])
    check_error(code, capsys.readouterr().err, message)
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


def test_confounds_config_checks() -> None:
    with pytest.raises(BrainmmError, match="'confounds.categorical': \\['x'\\] are not in confounds.covariates"):
        load_config(AlignConfig, None, ["confounds.covariates=[age]", "confounds.categorical=[x]"])
    with pytest.raises(BrainmmError, match="'confounds.genetic_pcs': expected an integer >= 0"):
        load_config(AlignConfig, None, ["confounds.genetic_pcs=-1"])
    with pytest.raises(BrainmmError, match="clash with the genetic PC columns"):
        load_config(AlignConfig, None, ["confounds.covariates=[pc1]", "confounds.genetic_pcs=2"])
    cfg = ConfoundsConfig(covariates=["age"], genetic_pcs=2)
    with pytest.raises(BrainmmError, match="'confounds.cohort': confounds.covariates \\['age'\\] need the cohort"):
        covariate_table(cfg, ["s1"], "align")


def test_evaluate_reports_adjusted_unadjusted_confounds_only_and_within_stratum(tmp_path: Path,
                                                                                mlflow_uri: str) -> None:
    import mlflow

    from brainmm.evaluate import EvaluateConfig, run_evaluate

    inputs = small_inputs(tmp_path)
    pcs = np.random.default_rng(1).normal(size=(40, 3)) + 4.0 * (inputs["site"] == "B")[:, None]
    EmbeddingTable(inputs["subjects"], pcs, {"kind": "genetic_pcs"}).save(tmp_path / "pcs")
    cfg = align_config(inputs, False, mlflow_uri, epochs=2)
    cfg.train.batch_size = 8
    cfg.confounds = ConfoundsConfig(covariates=["site", "age"], genetic_pcs=2, pcs=str(tmp_path / "pcs"),
                                    cohort=inputs["cohort"])
    align = run_align(cfg)
    ev = load_config(EvaluateConfig, None, [f"align_dir={align.run_dir}", "retrieval.n_boot=50", "retrieval.kway=0",
                                            "baselines.methods=[cca]", "baselines.n_permutations=10",
                                            "model.log=false", "figures.enabled=false"])
    result = run_evaluate(ev)
    m, t = result.metrics, result.table.set_index("name")
    for d in ("brain_to_genotype", "genotype_to_brain"):
        for name in (f"retrieval/{d}/R_at_1", f"retrieval/unadjusted/{d}/R_at_1", f"retrieval/within_site/{d}/R_at_1",
                     f"retrieval/within_ancestry_cluster/{d}/R_at_1", f"retrieval/unadjusted/within_site/{d}/mrr",
                     f"baseline/confounds_only/{d}/R_at_1", f"baseline/cca/{d}/R_at_1"):
            assert name in m and f"{name}_chance" in m and f"{name}_ci_low" in m, name
        # p-values: adjusted retrieval shuffled within site x ancestry cells, within-site shuffled within sites
        assert 0 < m[f"retrieval/{d}/mrr_p_value"] <= 1 and 0 < m[f"retrieval/within_site/{d}/mrr_p_value"] <= 1
    # within-site chance: 8 test subjects, 4 per site -> mean 1/4 (the whole test split: 1/8)
    assert m["retrieval/within_site/brain_to_genotype/R_at_1_chance"] == pytest.approx(0.25)
    assert m["retrieval/brain_to_genotype/R_at_1_chance"] == pytest.approx(1 / 8)
    assert t.loc["retrieval/unadjusted/brain_to_genotype/R_at_1", "model"] == "aligned_unadjusted"
    # the unadjusted comparison is its own align run, trained without confounds, tagged with the adjusted one
    client = mlflow.MlflowClient(mlflow_uri)
    unadjusted = client.get_run(result.unadjusted_run_id)
    assert unadjusted.data.tags["brainmm.unadjusted_of"] == align.run_id
    assert (result.output_dir / "unadjusted" / "align" / "config.yaml").read_text().count("covariates: []") == 1
    logged = client.get_run(result.run_id).data.metrics
    assert logged["retrieval/unadjusted/brain_to_genotype/R_at_1"] == pytest.approx(
        m["retrieval/unadjusted/brain_to_genotype/R_at_1"])
    summary = (result.output_dir / "summary.md").read_text()
    assert "## Confounds (test split, subject level)" in summary and "| within_site | brain_to_genotype |" in summary
    # evaluate's own confounds section must agree with the align run's
    bad = load_config(EvaluateConfig, None, [f"align_dir={align.run_dir}", "confounds.covariates=[age]",
                                             f"output_dir={tmp_path / 'other'}"])
    with pytest.raises(BrainmmError, match="'confounds': .* differs from the align run's"):
        run_evaluate(bad)
    assert not (tmp_path / "other").exists()


def test_pipeline_passes_confounds_and_computes_the_pcs(tmp_path: Path) -> None:
    from brainmm.pipeline import PipelineConfig, make_plan

    cfg = load_config(PipelineConfig, None, [f"output_dir={tmp_path}", "confounds.covariates=[site]",
                                             "confounds.genetic_pcs=5"])
    plan = make_plan(cfg)
    a, v = plan.config.align.confounds, plan.config.evaluate.confounds
    assert a == v and a.covariates == ["site"] and a.genetic_pcs == 5 and plan.genetic_pcs
    assert a.cohort == str(tmp_path / "fmri") and a.pcs == str(tmp_path / "genetics" / "genetic_pcs")
    with pytest.raises(BrainmmError, match="'align.confounds': set by the pipeline from 'confounds'"):
        load_config(PipelineConfig, None, ["align.confounds.genetic_pcs=2"])
    with pytest.raises(BrainmmError, match="'confounds.pcs': confounds.genetic_pcs needs genetic PCs"):
        make_plan(load_config(PipelineConfig, None, [f"output_dir={tmp_path}", "confounds.genetic_pcs=2",
                                                     "genetics.kind=dna", "genetics.dna.encoder.path=/x",
                                                     "simulate.write_sequences=true"]))


# ------------------------------------------------------------------------------------------- acceptance

SEEDS = range(5)


# Four interval checks (unadjusted R@1 and MRR above chance, adjusted R@1 and MRR at chance) share one family-wise
# 95 % level (Bonferroni): a check that an interval "holds chance" at 95 % alone fails 5 % of correct runs by
# construction.
LEVEL = 1 - 0.05 / 4
N_SUBJECTS = 1000  # about 200 test subjects per seed (chance R@1 0.005)


def pooled(ranks: list[np.ndarray], n_boot: int = 4000) -> dict[str, Any]:
    """R@1 and MRR of all seeds' test queries together, bootstrap CI (level LEVEL) over (seed, subject), chance =
    mean 1/N."""
    from alignment.retrieval import bootstrap_rank_metrics, rank_metrics

    r = np.concatenate(ranks)
    point, ci = rank_metrics(r), bootstrap_rank_metrics(r, None, n_boot=n_boot, seed=0, level=LEVEL)
    sizes = np.concatenate([np.full(len(x), len(x)) for x in ranks])
    from alignment.stratified import stratum_chance

    chance = stratum_chance(sizes)
    return {m: (point[m], *ci[m], chance[m]) for m in ("R_at_1", "mrr")}


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory: pytest.TempPathFactory, _migrated_mlflow_db: Path) -> dict[str, Any]:
    """Per effect (0: none, 1: default) and seed: a strongly confounded cohort (3 ancestry groups, F_ST 0.1, site
    association 0.9, group effect on the brain 1.0; N_SUBJECTS subjects), aligned by `brainmm align` with the app's
    heads (APP_HEADS) on unadjusted and on adjusted inputs (age, sex, site, 5 genetic PCs fitted on train)."""
    import shutil

    base = tmp_path_factory.mktemp("acceptance")
    shutil.copy(_migrated_mlflow_db, base / "mlflow.db")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    out: dict[str, Any] = {}
    for effect, kinds in ((0.0, (False, True)), (1.0, (True,))):
        for seed in SEEDS:
            inputs = build_inputs(base / f"e{effect}_s{seed}", seed, effect, n_subjects=N_SUBJECTS)
            for adjusted in kinds:
                ranks = test_ranks(run_align(align_config(inputs, adjusted, uri, extra=APP_HEADS)))
                out.setdefault((effect, adjusted), []).append(ranks)
    return {k: pooled(v) for k, v in out.items()}


@pytest.mark.slow
def test_confounding_alone_is_retrieved_unadjusted_and_adjusted_retrieval_holds_chance(acceptance: dict) -> None:
    """No genetic effect: the unadjusted pooled R@1 and MRR CIs lie above chance (population structure alone); the
    adjusted R@1 and MRR CIs both hold chance (linear covariates + per-stratum location and scale, docs/confounds.md;
    the calibration over sizes and strengths: benchmarks/confounds_null.md)."""
    for metric in ("R_at_1", "mrr"):
        value, low, high, chance = acceptance[(0.0, False)][metric]
        assert low > chance, (metric, value, low, chance)
        value, low, high, chance = acceptance[(0.0, True)][metric]
        assert low <= chance <= high, (metric, value, low, high, chance)


@pytest.mark.slow
def test_planted_genetic_effect_survives_adjustment_at_ten_times_chance(acceptance: dict) -> None:
    """Default effect, same confounding: the adjusted pooled R@1 CI lies above chance and R@1 >= 10x chance."""
    value, low, high, chance = acceptance[(1.0, True)]["R_at_1"]
    assert low > chance, (value, low, chance)
    assert value >= 10 * chance, (value, chance)


@pytest.mark.slow
def test_demo_with_confounds(tmp_path: Path, _migrated_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: Any) -> None:
    """`brainmm demo 'confounds.covariates=[site]' confounds.genetic_pcs=5` (shrunk to seconds): PCs computed in
    the genetics stage (fitted on train), adjusted and unadjusted rows in the printed summary and in MLflow."""
    import shutil

    import mlflow
    from test_pipeline import TINY

    from brainmm.cli import main

    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    assert main(["demo", "--quiet", "--out", "out", *TINY, "confounds.covariates=[site]",
                 "confounds.genetic_pcs=5"]) == 0
    stdout = capsys.readouterr().out
    assert "Confounds, test split" in stdout and "within_site" in stdout and "unadjusted" in stdout
    assert "confounds_only" in stdout
    pcs = EmbeddingTable.load(tmp_path / "out" / "genetics" / "genetic_pcs")
    assert pcs.dim == 5 and pcs.meta["fitted_on"] == "train"
    table = pd.read_csv(tmp_path / "out" / "evaluate" / "metrics.csv").set_index("name")
    for name in ("retrieval/brain_to_genotype/R_at_1", "retrieval/unadjusted/brain_to_genotype/R_at_1",
                 "retrieval/within_site/brain_to_genotype/R_at_1", "baseline/confounds_only/brain_to_genotype/R_at_1"):
        assert name in table.index, name
    align_cfg = (tmp_path / "out" / "align" / "config.yaml").read_text()
    assert "covariates:\n  - site" in align_cfg and "genetic_pcs: 5" in align_cfg
    state = __import__("json").loads((tmp_path / "out" / "pipeline.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(state["mlflow_run_id"]).data.metrics
    assert "retrieval/unadjusted/brain_to_genotype/R_at_1" in parent


def test_each_side_is_adjusted_for_its_own_covariates_and_the_shared_strata() -> None:
    """Brain: numeric covariates + strata (never the genetic PCs); genetics: PCs + strata (never age): a covariate
    regressed out of both sides would leave its train-fit error times each subject's own value in both."""
    from brainmm.align.confounds import STRATUM, design_columns, with_strata

    rng = np.random.default_rng(0)
    n = 300
    cov = pd.DataFrame({"age": rng.uniform(40, 80, n), "site": rng.choice(["a", "b"], n),
                        "pc1": np.r_[rng.normal(-3, 0.3, n // 2), rng.normal(3, 0.3, n - n // 2)],
                        "pc2": rng.normal(size=n)}, index=pd.Index([f"s{i}" for i in range(n)], name="subject_id"))
    cfg = ConfoundsConfig(covariates=["age", "site"], genetic_pcs=2)
    strata = with_strata(cfg, cov, set(cov.index[:200]))
    assert STRATUM in strata and strata[STRATUM].nunique() == 4  # 2 ancestry clusters x 2 sites
    assert design_columns(cfg, strata, "brain") == (["age", STRATUM], [STRATUM])
    assert design_columns(cfg, strata, "genetics") == (["pc1", "pc2", STRATUM], [STRATUM])
    # without strata (too few training rows to form two): the categorical covariates are the shared part
    plain = cov.copy()
    assert design_columns(cfg, plain, "brain") == (["age", "site"], ["site"])
    assert design_columns(cfg, plain, "genetics") == (["pc1", "pc2", "site"], ["site"])
    assert design_columns(ConfoundsConfig(covariates=["age"]), plain, "genetics") == ([], [])
