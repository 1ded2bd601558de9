"""Confound adjustment: residualiser vs a float64 least-squares oracle, train-only fitting, bad covariates,
per-stratum scale and merged strata, the confounds-only baseline, within-stratum retrieval and its chance level, ancestry clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.metrics import adjusted_rand_score

from alignment.confounds import (
    ConfoundSpace,
    CovariateDesign,
    Residualiser,
    StratumScaler,
    confounds_only_records,
    merged_strata,
)
from alignment.errors import AlignmentInputError
from alignment.retrieval import chance_metrics, pair_ranks, rank_metrics, retrieval_report
from alignment.stratified import AncestryClusters, stratum_chance, within_stratum_report


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.uniform(20, 80, n),
        "sex": rng.choice(["F", "M"], n),
        "site": rng.choice(["a", "b", "c"], n),
        "fd": rng.gamma(2.0, 0.1, n),
    })


def test_residuals_match_a_float64_least_squares_oracle_fitted_on_train() -> None:
    rng = np.random.default_rng(1)
    train, test = _table(200, 1), _table(50, 2)
    table = pd.concat([train, test], ignore_index=True)
    raw = pd.get_dummies(table[["age", "fd", "sex", "site"]], columns=["sex", "site"], drop_first=True)
    raw = raw.assign(age2=table["age"] ** 2).to_numpy(np.float64)
    feats = raw @ rng.normal(size=(raw.shape[1], 6)) + rng.normal(size=(250, 6))
    cov = table.assign(age2=table["age"] ** 2)
    res = Residualiser(["age", "age2", "fd", "sex", "site"]).fit(feats[:200], cov.iloc[:200])
    # Residuals do not depend on how the design is parametrised (standardised vs raw, reference level).
    oracle = LinearRegression().fit(raw[:200], feats[:200])
    expected = feats - oracle.predict(raw)
    scale = np.abs(feats).max() * np.linalg.cond(np.c_[np.ones(200), raw[:200]]) * np.finfo(np.float64).eps
    np.testing.assert_allclose(res.transform(feats, cov), expected, atol=100 * scale)
    # Training residuals are orthogonal to the design; the fit never saw the test rows.
    design = res.design.transform(cov.iloc[:200])
    assert np.abs(np.c_[np.ones(200), design].T @ res.transform(feats[:200], cov.iloc[:200])).max() < 1e-6
    moved = feats.copy()
    moved[200:] += 100.0
    again = Residualiser(["age", "age2", "fd", "sex", "site"]).fit(moved[:200], cov.iloc[:200])
    np.testing.assert_array_equal(again.coef_, res.coef_)
    assert res.design.names == ["age", "age2", "fd", "sex=M", "site=b", "site=c"] and 0.5 < res.r2_ < 1


def test_numeric_columns_can_be_declared_categorical_and_dicts_work() -> None:
    cov = {"site": np.array([1, 2, 3, 1, 2, 3, 1, 2]), "age": np.linspace(20, 60, 8)}
    design = CovariateDesign(["site", "age"], categorical=["site"]).fit(cov)
    assert design.names == ["site=2", "site=3", "age"]
    x = design.transform(cov)
    assert x.shape == (8, 3) and np.allclose(x[:, 2].mean(), 0) and np.allclose(x[:, 2].std(), 1)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.drop(columns="site"), r"confound column 'site': not in the covariate table"),
        (lambda t: t.assign(site="a"), r"confound column 'site': constant over the training rows"),
        (lambda t: t.assign(fd=0.2), r"confound column 'fd': constant over the training rows"),
        (lambda t: t.assign(fd=t["fd"].where(t.index != 3)), r"confound column 'fd': 1 of 30 rows have a missing"),
        (lambda t: t.assign(site=t["site"].where(t.index != 4)), r"confound column 'site': 1 of 30 rows"),
    ],
)
def test_bad_covariates_name_the_column(change, message) -> None:  # type: ignore[no-untyped-def]
    table = _table(30)
    with pytest.raises(AlignmentInputError, match=message):
        Residualiser(["age", "fd", "site"]).fit(np.ones((30, 2)) + np.arange(30)[:, None], change(table))


def test_unseen_level_and_shape_errors() -> None:
    train = _table(30)
    res = Residualiser(["age", "site"]).fit(np.random.default_rng(0).normal(size=(30, 3)), train)
    test = _table(5, 1).assign(site=["a", "b", "d", "e", "a"])
    with pytest.raises(AlignmentInputError, match=r"confound column 'site': levels \['d', 'e'\] do not occur"):
        res.transform(np.zeros((5, 3)), test)
    with pytest.raises(AlignmentInputError, match="features to residualise: 4 rows but the covariates have 5"):
        res.transform(np.zeros((4, 3)), _table(5, 1))
    with pytest.raises(AlignmentInputError, match="features to residualise: 2 columns, fitted on 3"):
        res.transform(np.zeros((5, 2)), _table(5, 1))
    with pytest.raises(AlignmentInputError, match="categorical: \\['x'\\] are not among"):
        Residualiser(["age"], categorical=["x"])
    with pytest.raises(AlignmentInputError, match="need more rows than columns"):
        Residualiser(["age", "site"]).fit(np.zeros((3, 1)), _table(3))


def _confounded(n: int, seed: int, link: float = 0.0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Brain and genetics that share only a 3-level group (plus `link` x a subject-level signal)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)
    onehot = np.eye(3)[group]
    shared = rng.normal(size=(n, 4))
    brain = 3 * onehot @ rng.normal(size=(3, 16)) + link * shared @ rng.normal(size=(4, 16)) + rng.normal(size=(n, 16))
    genes = 3 * onehot @ rng.normal(size=(3, 12)) + link * shared @ rng.normal(size=(4, 12)) + rng.normal(size=(n, 12))
    return brain, genes, pd.DataFrame({"group": [f"g{g}" for g in group]})


def test_residualising_removes_group_driven_retrieval_and_keeps_a_real_link() -> None:
    for link, adjusted_above_chance in ((0.0, False), (3.0, True)):
        brain, genes, cov = _confounded(400, 0, link)
        tr, te = slice(0, 300), slice(300, 400)
        raw = retrieval_report(brain[te], genes[te] @ np.linalg.lstsq(genes[tr], brain[tr], rcond=None)[0],
                               kway=None, n_boot=200)
        adj_b = Residualiser(["group"]).fit(brain[tr], cov.iloc[tr])
        adj_g = Residualiser(["group"]).fit(genes[tr], cov.iloc[tr])
        rb, rg = adj_b.transform(brain, cov), adj_g.transform(genes, cov)
        mapped = rg[te] @ np.linalg.lstsq(rg[tr], rb[tr], rcond=None)[0]  # linear map fitted on train only
        adj = retrieval_report(rb[te], mapped, kway=None, n_boot=200)
        unadj_mrr = next(r for r in raw.records if r["metric"] == "mrr" and r["direction"] == "brain_to_genetics")
        adj_mrr = next(r for r in adj.records if r["metric"] == "mrr" and r["direction"] == "brain_to_genetics")
        assert unadj_mrr["ci_low"] > unadj_mrr["chance"]  # the shared group alone lifts retrieval
        assert (adj_mrr["ci_low"] > adj_mrr["chance"]) == adjusted_above_chance
        if not adjusted_above_chance:
            assert adj_mrr["ci_low"] <= adj_mrr["chance"] <= adj_mrr["ci_high"]


def test_merged_strata_fall_back_from_the_finest_level_with_enough_training_rows() -> None:
    # cells a|x (30 train rows), a|y (5), b|x (4), b|y (1 train + 1 other), c|x (1 other); coarser level: a / b / c
    fine = np.array(["a|x"] * 30 + ["a|y"] * 5 + ["b|x"] * 4 + ["b|y"] * 2 + ["c|x"])
    coarse = np.array([c.split("|")[0] for c in fine])
    train = np.ones(len(fine), dtype=bool)
    train[[40, 41]] = False
    got = merged_strata([fine, coarse], train, min_rows=5)
    assert (got[:30] == "0:a|x").all() and (got[30:35] == "0:a|y").all()  # both a cells have >= 5 train rows
    assert (got[35:41] == "1:b").all()  # b|x (4) and b|y (1) merge at the coarser level: 5 train rows
    assert got[41] == "0:a|x"  # group c has no training row: the largest stratum
    # too few rows at every level: left-over rows never mix coarse groups; they join their own group's largest
    # stratum, else form their group's own stratum (>= 2 train rows)
    got = merged_strata([fine, coarse], train, min_rows=20)
    assert (got[:35] == "0:a|x").all() and (got[35:41] == "1:b").all() and got[41] == "0:a|x"
    assert (merged_strata([fine], np.ones(len(fine), dtype=bool), min_rows=100) == [f"0:{f}" for f in fine]).all()
    with pytest.raises(AlignmentInputError, match="strata level 0: expected 42 labels"):
        merged_strata([fine[:-1]], train)


def test_stratum_scaler_matches_per_stratum_sd_ratios_and_leaves_unseen_strata() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b"], 200)
    x = rng.normal(size=(400, 3)) * np.where(labels == "a", 1.0, 3.0)[:, None]
    x[:, 2] = np.where(labels == "a", 0.0, x[:, 2])  # constant within stratum a: left at its scale there
    train = np.arange(400) % 2 == 0
    scaler = StratumScaler().fit(x[train], labels[train])
    out = scaler.transform(x, labels)
    pooled = x[train].std(0)
    for lab in ("a", "b"):
        rows = train & (labels == lab)
        sd = x[rows].std(0)
        expected = np.where(sd > 0, pooled / np.where(sd > 0, sd, 1), 1.0)
        np.testing.assert_allclose(out[labels == lab], x[labels == lab] * expected, rtol=1e-12)
    # on the training rows both strata now have the pooled SD in every column that varies within them
    np.testing.assert_allclose(out[train & (labels == "a")][:, :2].std(0), pooled[:2], rtol=1e-12)
    np.testing.assert_allclose(out[train & (labels == "b")].std(0), pooled, rtol=1e-12)
    np.testing.assert_array_equal(scaler.transform(x[:5], ["c"] * 5), x[:5])  # unseen stratum: unchanged
    with pytest.raises(AlignmentInputError, match="call fit"):
        StratumScaler().transform(x, labels)
    with pytest.raises(AlignmentInputError, match="expected 400 labels"):
        StratumScaler().fit(x, labels[:10])


def test_confounds_only_baseline_scores_what_the_confounds_explain() -> None:
    brain, genes, cov = _confounded(300, 1)
    records = confounds_only_records(brain[:200], genes[:200], cov.iloc[:200], brain[200:], genes[200:],
                                     ["group"], kway=None, n_boot=200)
    mean_rank = next(r for r in records if r["metric"] == "mean_rank" and r["direction"] == "brain_to_genetics")
    assert mean_rank["model"] == "confounds_only" and mean_rank["ci_high"] < 0.8 * mean_rank["chance"]
    # Modalities that carry no confound: predictions are noise, retrieval stays at chance.
    rng = np.random.default_rng(2)
    noise_b, noise_g = rng.normal(size=(300, 16)), rng.normal(size=(300, 12))
    space = ConfoundSpace(["group"]).fit(noise_b[:200], noise_g[:200], cov.iloc[:200])
    fwd, _ = pair_ranks(*space.transform(noise_b[200:], noise_g[200:]))
    assert abs(fwd.mean() + 1 - 50.5) < 3 * 29 / np.sqrt(100)  # mean rank at chance (N + 1) / 2


def test_stratum_chance_matches_the_full_pool_formula_and_brute_force() -> None:
    for n in (1, 2, 7, 50):
        ours, full = stratum_chance(np.full(10, n)), chance_metrics(n)
        assert ours == pytest.approx(full, rel=1e-12)
    sizes = np.array([2, 2, 5, 5, 5, 5, 5, 9])
    ranks = np.concatenate([np.arange(s) for s in (2, 5, 9)])  # every rank position of each stratum, equally often
    weights = np.concatenate([np.full(s, w / s) for s, w in ((2, 2), (5, 5), (9, 1))])
    expected_r1 = float(np.mean(1 / sizes))
    chance = stratum_chance(sizes)
    assert chance["R_at_1"] == pytest.approx(expected_r1, rel=1e-12)
    assert chance["mrr"] == pytest.approx(weights @ (1 / (ranks + 1)) / weights.sum(), rel=1e-12)
    assert chance["mean_rank"] == pytest.approx(weights @ (ranks + 1) / weights.sum(), rel=1e-12)


def test_within_stratum_retrieval_ranks_only_inside_the_stratum() -> None:
    brain, _, cov = _confounded(240, 3)
    strata = cov["group"].to_numpy()
    other = brain + 2.0 * np.random.default_rng(4).normal(size=brain.shape)
    report = within_stratum_report(brain, other, strata, name="site", n_boot=100)
    for g in np.unique(strata):
        idx = np.flatnonzero(strata == g)
        fwd, bwd = pair_ranks(brain[idx], other[idx])
        np.testing.assert_array_equal(report.ranks[("brain_to_genetics", "within_site")][idx], fwd)
        np.testing.assert_array_equal(report.ranks[("genetics_to_brain", "within_site")][idx], bwd)
    rec = {(r["direction"], r["metric"]): r for r in report.records}
    sizes = np.bincount(np.unique(strata, return_inverse=True)[1])
    assert rec[("brain_to_genetics", "R_at_1")]["chance"] == pytest.approx(np.sum(sizes * (1 / sizes)) / 240)
    assert rec[("brain_to_genetics", "R_at_1")]["value"] == rank_metrics(report.ranks[("brain_to_genetics", "within_site")])[
        "R_at_1"]
    assert "brain_to_genetics/within_site/R_at_1_chance" in report.flat()
    # Embeddings that encode only the group: above chance over the full pool, at chance within the group.
    onehot = pd.get_dummies(strata).to_numpy(float) + 1e-3 * np.random.default_rng(0).normal(size=(240, 3))
    onehot2 = pd.get_dummies(strata).to_numpy(float) + 1e-3 * np.random.default_rng(1).normal(size=(240, 3))
    within = {(r["direction"], r["metric"]): r for r in within_stratum_report(onehot, onehot2, strata).records}
    mrr = within[("brain_to_genetics", "mrr")]
    assert abs(mrr["value"] - mrr["chance"]) < mrr["ci_high"] - mrr["ci_low"]  # within ~2 standard errors
    full = next(r for r in retrieval_report(onehot, onehot2, kway=None).records
                if r["metric"] == "mrr" and r["direction"] == "brain_to_genetics")
    assert full["ci_low"] > full["chance"]


def test_within_stratum_excludes_singletons_and_checks_inputs() -> None:
    x = np.random.default_rng(0).normal(size=(7, 4))
    report = within_stratum_report(x, x, ["a", "a", "a", "b", "b", "c", "d"], n_boot=10)
    r1 = next(r for r in report.records if r["metric"] == "R_at_1")
    assert r1["n_excluded"] == 2 and r1["n_queries"] == 5 and r1["n_strata"] == 2 and r1["value"] == 1.0
    with pytest.raises(AlignmentInputError, match=r"strata \(site\): expected 7 labels"):
        within_stratum_report(x, x, ["a"] * 6, name="site")
    with pytest.raises(AlignmentInputError, match="no stratum holds 2 or more"):
        within_stratum_report(x, x, list("abcdefg"))


def test_ancestry_clusters_chosen_by_silhouette_on_train() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [6, 0], [0, 6]])
    truth = rng.integers(0, 3, 150)
    pcs = centres[truth] + rng.normal(size=(150, 2))
    model = AncestryClusters(max_clusters=6).fit(pcs[:100])
    assert max(model.silhouettes_, key=model.silhouettes_.__getitem__) == 3
    assert adjusted_rand_score(truth[100:], model.predict(pcs[100:])) > 0.95
    assert len(np.unique(AncestryClusters(n_clusters=2).fit(pcs[:100]).predict(pcs))) == 2
    with pytest.raises(AlignmentInputError, match="genetic PCs: 3 columns, fitted on 2"):
        model.predict(np.zeros((4, 3)))
