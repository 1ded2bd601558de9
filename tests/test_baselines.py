"""Classical baselines: planted linear relations are found, independent data sit at chance, test rows never fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from alignment.baselines import (
    CCABaseline,
    RidgeMap,
    capped_pca,
    pca_components,
    random_head_embeddings,
    reinitialised,
    run_baselines,
    shuffled_pairs,
    space_records,
    truncated_pca,
)
from alignment.errors import AlignmentInputError

RETRIEVAL = {"n_boot": 100, "kway": 50, "kway_repeats": 5}


def _paired(n: int, planted: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = np.random.default_rng(99).normal(size=(4, 32)), np.random.default_rng(98).normal(size=(4, 24))
    z = rng.normal(size=(n, 4))
    brain = z @ a + rng.normal(size=(n, 32))
    genetics = (z if planted else rng.normal(size=(n, 4))) @ b + rng.normal(size=(n, 24))
    return brain, genetics


def _values(report, metric: str) -> dict[tuple[str, str | None], float]:
    return {
        (r["model"], r["direction"]): r["value"]
        for r in report.records
        if r["metric"] == metric and r.get("level") in (None, "recording")
    }


def test_planted_relation_beats_chance_and_independent_data_do_not() -> None:
    b_train, d_train = _paired(400, True, 0)
    b_test, d_test = _paired(200, True, 1)
    planted = run_baselines(b_train, d_train, b_test, d_test, n_permutations=200, retrieval_kw=RETRIEVAL)
    r1 = _values(planted, "R_at_1")
    for model in ("cca", "pls", "ridge_brain_to_genetics", "ridge_genetics_to_brain"):
        for direction in ("brain_to_genetics", "genetics_to_brain"):
            assert r1[(model, direction)] > 10 * (1 / 200), (model, direction)
    corr = [r for r in planted.records if r["model"] == "cca" and r["metric"].startswith("canonical_corr")]
    assert corr[0]["value"] > 0.9 and corr[0]["p_value"] < 0.01 and corr[0]["ci_low"] > 0.8
    assert _values(planted, "r2")[("ridge_brain_to_genetics", "brain_to_genetics")] > 0.4

    b_indep, d_indep = _paired(400, False, 2)
    b_indep_test, d_indep_test = _paired(200, False, 3)
    null = run_baselines(
        b_indep, d_indep, b_indep_test, d_indep_test, n_permutations=200, retrieval_kw=RETRIEVAL
    )
    mean_rank = {
        r["model"]: r
        for r in null.records
        if r["metric"] == "mean_rank" and r["level"] == "recording" and r["direction"] == "brain_to_genetics"
    }
    for model, rec in mean_rank.items():
        assert abs(rec["value"] - rec["chance"]) < 15, model  # chance 100.5; sd of the mean rank ~4
    null_corr = [r for r in null.records if r["model"] == "cca" and r["metric"] == "canonical_corr_1"]
    assert abs(null_corr[0]["value"]) < 0.3
    assert _values(null, "r2")[("ridge_brain_to_genetics", "brain_to_genetics")] < 0.05
    flat = null.flat("baselines")
    assert (
        "baselines/cca/canonical_corr_1_p_value" in flat
        and "baselines/ridge_genetics_to_brain/genetics_to_brain/r2" in flat
    )
    assert "baselines/random_head/brain_to_genetics/R_at_1_chance" in flat and not any("@" in k for k in flat)


def test_fitted_models_never_see_test_rows() -> None:
    b_train, d_train = _paired(300, True, 0)
    b_test, d_test = _paired(100, True, 1)
    first = run_baselines(
        b_train,
        d_train,
        b_test,
        d_test,
        baselines=("cca", "pls", "ridge_brain_to_genetics"),
        n_permutations=10,
        retrieval_kw=RETRIEVAL,
    )
    rng = np.random.default_rng(5)
    second = run_baselines(
        b_train,
        d_train,
        b_test * 10 + rng.normal(size=b_test.shape),
        d_test[::-1] + 3,
        baselines=("cca", "pls", "ridge_brain_to_genetics"),
        n_permutations=10,
        retrieval_kw=RETRIEVAL,
    )
    for name in ("cca", "pls"):
        a, b = first.models[name], second.models[name]
        np.testing.assert_array_equal(a.pca_brain_.components_, b.pca_brain_.components_)
        np.testing.assert_array_equal(a.pca_genetics_.mean_, b.pca_genetics_.mean_)
        np.testing.assert_array_equal(a.model_.x_weights_, b.model_.x_weights_)
        np.testing.assert_array_equal(a.std_[1], b.std_[1])
    np.testing.assert_array_equal(
        first.models["ridge_brain_to_genetics"].model_[-1].coef_,
        second.models["ridge_brain_to_genetics"].model_[-1].coef_,
    )
    # ...while refitting with changed training rows does change them (the comparison above can fail)
    moved = CCABaseline().fit(b_train + rng.normal(size=b_train.shape), d_train)
    assert not np.array_equal(moved.model_.x_weights_, first.models["cca"].model_.x_weights_)


def test_pca_components_are_chosen_on_train_and_capped() -> None:
    rng = np.random.default_rng(0)
    low_rank = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 40)) + 0.01 * rng.normal(size=(500, 40))
    assert pca_components(low_rank, variance=0.9) <= 3
    assert pca_components(rng.normal(size=(200, 64)), variance=0.99) == 20  # n_train // 10
    model = CCABaseline(n_components=8).fit(*_paired(60, True))
    assert model.model_.n_components <= 6
    # the selection's one fit per view, truncated, is the k-component fit (exact solver); x = 300 x 40: 'full'
    x = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40))
    k = pca_components(x, variance=0.9)
    cut, ref = truncated_pca(capped_pca(x), k), PCA(n_components=k, random_state=0).fit(x)
    assert 1 < k < capped_pca(x).n_components_ == 30
    np.testing.assert_allclose(cut.transform(x), ref.transform(x), rtol=0, atol=1e-9 * np.abs(x).max())
    # fits are reused by content (a copy of the rows hits, one changed value does not), and equal a fresh fit
    fit = capped_pca(x)
    assert capped_pca(x.copy()) is fit and capped_pca(np.asfortranarray(x)) is fit
    changed = x.copy()
    changed[7, 3] += 1e-9
    assert capped_pca(changed) is not fit and capped_pca(x, max_components=10) is not fit
    fresh = PCA(n_components=30, random_state=0).fit(x)
    np.testing.assert_array_equal(fit.components_, fresh.components_)


def test_ridge_map_spaces_and_random_heads() -> None:
    b, d = _paired(300, True)
    ridge = RidgeMap("genetics_to_brain").fit(b[:200], d[:200])
    brain_side, genetics_side = ridge.transform(b[200:], d[200:])
    assert brain_side.shape == genetics_side.shape == (100, 32)  # both in brain space
    np.testing.assert_allclose(brain_side, b[200:] - b[:200].mean(0))

    zb, zd = random_head_embeddings(b, d, out_dim=16, seed=3)
    assert zb.shape == zd.shape == (300, 16)
    np.testing.assert_array_equal(zb, random_head_embeddings(b, d, out_dim=16, seed=3)[0])
    head = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.LayerNorm(16))
    trained_weight = head[0].weight.detach().clone()
    fresh = reinitialised(head, seed=1)
    assert torch.equal(head[0].weight, trained_weight) and not torch.equal(fresh[0].weight, trained_weight)
    assert torch.equal(fresh[0].weight, reinitialised(head, seed=1)[0].weight)
    zb, zd = random_head_embeddings(b, d, brain_head=head, genetics_head=torch.nn.Linear(24, 16), seed=1)
    assert zb.shape == zd.shape == (300, 16)
    records = space_records("random_head", zb, zd, **RETRIEVAL)
    assert {r["model"] for r in records} == {"random_head"} and len(records) == 14


def test_shuffled_pairs_and_errors() -> None:
    perm = shuffled_pairs(50, seed=1)
    assert sorted(perm) == list(range(50)) and not (perm == np.arange(50)).any()
    b, d = _paired(40, True)
    with pytest.raises(AlignmentInputError, match="train split: 40 brain rows but 39 genetics rows"):
        run_baselines(b, d[:39], b, d)
    with pytest.raises(AlignmentInputError, match="unknown \\['lda'\\]"):
        run_baselines(b, d, b, d, baselines=("lda",))
    bad = b.copy()
    bad[0, 0] = np.nan
    with pytest.raises(AlignmentInputError, match="test brain embeddings: 1 of 40 rows contain NaN"):
        run_baselines(b, d, bad, d)


def test_cca_sizes_are_chosen_on_validation_rows() -> None:
    """A loud nuisance direction holds > 90 % of the brain variance and the shared signal sits in quiet ones: the
    fixed 90 %-variance PCA keeps only the nuisance (chance), the validation-selected CCA finds the signal."""

    def cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(n, 6))
        brain = np.c_[30 * rng.normal(size=(n, 1)), z + 0.5 * rng.normal(size=(n, 6)), rng.normal(size=(n, 9))]
        genetics = z @ np.random.default_rng(7).normal(size=(6, 20)) + rng.normal(size=(n, 20))
        return brain, genetics

    (b_tr, d_tr), (b_val, d_val), (b_te, d_te) = cohort(400, 0), cohort(100, 1), cohort(100, 2)
    fixed = run_baselines(b_tr, d_tr, b_te, d_te, baselines=["cca"], n_permutations=0, retrieval_kw=RETRIEVAL)
    chosen = run_baselines(b_tr, d_tr, b_te, d_te, brain_val=b_val, genetics_val=d_val, baselines=["cca"],
                           n_permutations=0, retrieval_kw=RETRIEVAL)
    assert fixed.models["cca"].pca_brain_.n_components_ == 1  # the nuisance alone
    assert _values(fixed, "R_at_1")[("cca", "brain_to_genetics")] < 0.05
    selection = chosen.models["cca"].selection_
    assert selection["pca_brain"] >= 7 and selection["n_components"] >= 4, selection
    assert _values(chosen, "R_at_1")[("cca", "brain_to_genetics")] > 0.3
    # the choice depends on the validation rows only: other test rows give the same fitted model
    again = run_baselines(b_tr, d_tr, b_te[:50], d_te[:50], brain_val=b_val, genetics_val=d_val, baselines=["cca"],
                          n_permutations=0, retrieval_kw=RETRIEVAL)
    assert again.models["cca"].selection_ == selection


def test_blockwise_loo_alpha_equals_ridge_cv_for_wide_targets() -> None:
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from alignment.baselines import RIDGE_ALPHAS, loo_ridge_alpha

    rng = np.random.default_rng(3)
    for noise in (0.3, 3.0, 30.0):  # different alphas win
        x = rng.normal(size=(200, 12))
        y = x @ rng.normal(size=(12, 700)) + noise * rng.normal(size=(200, 700)) + 5.0
        ref = RidgeCV(alphas=RIDGE_ALPHAS).fit(x, y)
        assert loo_ridge_alpha(x, y, RIDGE_ALPHAS, block=64) == ref.alpha_
        np.testing.assert_allclose(Ridge(alpha=ref.alpha_).fit(x, y).predict(x[:5]), ref.predict(x[:5]), rtol=1e-10)
    b = rng.normal(size=(300, 10))  # RidgeMap takes the blockwise path above WIDE_TARGET target columns
    g = b @ rng.normal(size=(10, 2500)) + 3 * rng.normal(size=(300, 2500))
    wide = RidgeMap("brain_to_genetics").fit(b, g)
    ref_map = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(b, g)
    assert isinstance(wide.model_[-1], Ridge) and wide.model_[-1].alpha == ref_map[-1].alpha_
    np.testing.assert_allclose(wide.model_.predict(b), ref_map.predict(b), rtol=0, atol=1e-9 * np.abs(g).max())


def test_wide_source_ridge_equals_ridge_cv_and_shares_one_gram_per_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from alignment import baselines
    from alignment.baselines import RIDGE_ALPHAS

    rng = np.random.default_rng(9)
    d = rng.binomial(2, rng.uniform(0.05, 0.5, 400), size=(120, 400)).astype(float)  # more variants than rows
    targets = []
    for noise in (0.3, 3.0, 30.0):  # different alphas win
        b = d[:, :20] @ rng.normal(size=(20, 6)) + noise * rng.normal(size=(120, 6)) + 4.0
        targets += [b, b @ rng.normal(size=(6, 40)) + rng.normal(size=(120, 40))]  # brain table and FC-like
    refs = [make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(d, t) for t in targets]
    assert len({r[-1].alpha_ for r in refs}) >= 3
    calls = []
    eigh = np.linalg.eigh
    monkeypatch.setattr(baselines.np.linalg, "eigh", lambda a: calls.append(a.shape) or eigh(a))
    for target, ref in zip(targets, refs):
        got = RidgeMap("genetics_to_brain").fit(target, d)
        assert got.model_[-1].alpha_ == ref[-1].alpha_
        scale = np.abs(target).max() * 120 * 400 * np.finfo(np.float64).eps  # fp64 sums over rows and columns
        np.testing.assert_allclose(got.model_.predict(d), ref.predict(d), rtol=0, atol=10 * scale)
    assert calls == [(120, 120)]  # one Gram eigendecomposition for the six fits on the same genotype rows
