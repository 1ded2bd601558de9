"""Linear probes: metrics agree with scikit-learn, grouped CV, chance/permutation baselines, input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import balanced_accuracy_score, f1_score, mean_absolute_error, r2_score, roc_auc_score

from alignment.errors import AlignmentInputError
from alignment.probes import (
    _AucIndex,
    _outer_splits,
    _scores,
    infer_task,
    linear_probe,
    permute_by_group,
    probe_representations,
)


def _by_metric(records: list[dict]) -> dict[str, dict]:
    return {r["metric"]: r for r in records}


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classification_metrics_match_sklearn_and_weights_mean_repeats(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 80)
    proba = np.round(rng.dirichlet(np.ones(n_classes), 80), 1)  # rounded: ties in the scores
    proba[:, -1] = 1 - proba[:, :-1].sum(1)
    ours = _scores("classification", y, proba, np.ones(80))
    pred = proba.argmax(1)
    auc = (
        roc_auc_score(y, proba[:, 1])
        if n_classes == 2
        else roc_auc_score(y, proba, multi_class="ovr", average="macro")
    )
    assert ours == pytest.approx([balanced_accuracy_score(y, pred), f1_score(y, pred, average="macro"), auc])
    w = rng.integers(0, 3, 80)  # integer weights == rows repeated that many times
    rep = np.repeat(np.arange(80), w)
    expected = _scores("classification", y[rep], proba[rep], np.ones(len(rep)))
    assert _scores("classification", y, proba, w.astype(float), _AucIndex.build(y, proba)) == pytest.approx(
        expected
    )


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y, pred = rng.normal(size=50), rng.normal(size=50)
    ours = _scores("regression", y, pred, np.ones(50))
    assert ours == pytest.approx([r2_score(y, pred), mean_absolute_error(y, pred), pearsonr(y, pred)[0]])


def _cohort(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "subject_id": [f"sub-{i:03d}" for i in range(n)],
            "sex": rng.choice(["F", "M"], n),
            "age": rng.normal(50, 10, n),
            "site": rng.integers(0, 2, n),
        }
    )
    signal = np.c_[(table["sex"] == "F").to_numpy(float) * 2, (table["age"].to_numpy() - 50) / 5]
    informative = np.c_[signal, np.zeros((n, 6))] + 0.5 * rng.normal(size=(n, 8))
    return table, {"informative": informative, "noise": rng.normal(size=(n, 8))}


def test_probe_finds_planted_signal_and_noise_sits_at_chance() -> None:
    table, reps = _cohort()
    table.loc[[3, 7, 11], "age"] = np.nan
    report = probe_representations(reps, table, ["sex", "age"], n_splits=4, n_boot=200, n_permutations=2)
    assert report.dropped == {"sex": 0, "age": 3}
    rec = {(r["representation"], r["target"], r["metric"]): r for r in report.records}
    good = rec[("informative", "sex", "balanced_accuracy")]
    assert good["ci_low"] > good["chance"] == 0.5 and good["value"] > good["perm_mean"] + 0.2
    assert rec[("informative", "sex", "auroc")]["value"] > 0.9
    assert (
        rec[("informative", "age", "r")]["ci_low"] > 0.5 and rec[("informative", "age", "r2")]["value"] > 0.3
    )
    assert (
        rec[("informative", "age", "r2")]["n"] == 117 and rec[("informative", "age", "mae")]["n_dropped"] == 3
    )
    assert abs(rec[("noise", "sex", "balanced_accuracy")]["value"] - 0.5) < 0.15
    assert rec[("noise", "age", "r2")]["value"] < 0.05
    assert {r["task"] for r in report.records if r["target"] == "sex"} == {"classification"}
    flat = report.flat("probe")
    assert (
        "probe/informative/age/r" in flat
        and "probe/noise/sex/auroc_perm_mean" in flat
        and "probe/noise/sex/macro_f1_chance" in flat
    )


def test_cross_validation_is_grouped_by_subject() -> None:
    # Ten near-identical rows per subject and a random label per subject: only a leaky (row-wise) CV scores high.
    rng = np.random.default_rng(1)
    n_subjects = 30
    subjects = np.repeat(np.arange(n_subjects), 10)
    x = rng.normal(size=(n_subjects, 40))[subjects] + 0.01 * rng.normal(
        size=(300, 40)
    )  # labels linearly separable
    y = rng.integers(0, 2, n_subjects)[subjects]
    for train, test in _outer_splits("classification", y, subjects, 5, 0):
        assert not set(subjects[train]) & set(subjects[test])
    grouped = _by_metric(linear_probe(x, y, subjects, task="classification", n_boot=50, n_permutations=0))
    leaky = _by_metric(linear_probe(x, y, None, task="classification", n_boot=50, n_permutations=0))
    assert leaky["balanced_accuracy"]["value"] > 0.9
    assert grouped["balanced_accuracy"]["value"] < 0.75
    assert grouped["balanced_accuracy"]["n_groups"] == n_subjects


def test_group_column_and_task_inference() -> None:
    table, reps = _cohort(60)
    table["family"] = [f"fam{i // 3}" for i in range(60)]
    report = probe_representations(
        {"noise": reps["noise"]}, table, ["site"], group_col="family", n_splits=3, n_boot=20, n_permutations=0
    )
    assert {r["n_groups"] for r in report.records} == {20} and {r["task"] for r in report.records} == {
        "classification"
    }
    assert infer_task(table["age"]) == "regression" and infer_task(table["sex"]) == "classification"
    # a second row of sub-000, placed in another family than its first row
    table = pd.concat([table, table.iloc[[0]].assign(family="fam5")], ignore_index=True)
    with pytest.raises(
        AlignmentInputError, match="family: subjects \\['sub-000'\\] belong to more than one group"
    ):
        probe_representations({"noise": np.zeros((61, 2))}, table, ["site"], group_col="family")


def test_bad_inputs_raise_clear_errors() -> None:
    table, reps = _cohort(40)
    with pytest.raises(AlignmentInputError, match="target 'one': only one class"):
        probe_representations(reps, table.assign(one="x"), ["one"])
    with pytest.raises(
        AlignmentInputError, match="target 'sex': 4 subjects/groups are fewer than n_splits=5"
    ):
        linear_probe(reps["noise"][:4], np.array(["F", "M", "F", "M"]), task="classification", target="sex")
    bad = reps["noise"].copy()
    bad[5, 0] = np.nan
    with pytest.raises(AlignmentInputError, match="representation 'brain': 1 of 40 rows contain NaN"):
        probe_representations({"brain": bad}, table, ["age"])
    with pytest.raises(AlignmentInputError, match=r"representation 'dna': expected \[n=40, dim\]"):
        probe_representations({"dna": reps["noise"][:39]}, table, ["age"])
    with pytest.raises(AlignmentInputError, match="no column 'iq'"):
        probe_representations(reps, table, ["iq"])
    with pytest.raises(AlignmentInputError, match="class 'x' occurs in 1 subjects/groups"):
        probe_representations(reps, table.assign(rare=["x"] + ["y"] * 39), ["rare"])


def test_group_permutation_null_has_the_subject_level_spread_and_sits_at_chance() -> None:
    # Statistic: correlation of the (permuted) labels with a per-subject score repeated on each subject's rows.
    # Its null over subject-level permutations equals that of one row per subject; shuffling rows would shrink
    # the spread by sqrt(rows per subject) = 2.
    rng = np.random.default_rng(0)
    n_subjects, reps, n_perm = 60, 4, 4000
    score, label = rng.normal(size=n_subjects), rng.normal(size=n_subjects)
    codes = np.repeat(np.arange(n_subjects), reps)

    def null(y: np.ndarray, s: np.ndarray, c: np.ndarray) -> np.ndarray:
        perm_rng = np.random.default_rng(1)
        return np.array([np.corrcoef(s, permute_by_group(y, c, perm_rng))[0, 1] for _ in range(n_perm)])

    repeated = null(label[codes], score[codes], codes)
    subject = null(label, score, np.arange(n_subjects))
    # Standard errors from the number of permutations: std(mean) = sd / sqrt(n), std(sd) ~ sd / sqrt(2n).
    sd = 1 / np.sqrt(n_subjects - 1)
    assert abs(repeated.std() - subject.std()) < 5 * sd / np.sqrt(n_perm)
    assert abs(repeated.std() - sd) < 5 * sd / np.sqrt(2 * n_perm)
    assert abs(repeated.mean()) < 5 * sd / np.sqrt(n_perm)  # chance: r = 0


def test_group_permutation_keeps_blocks_whole() -> None:
    rng = np.random.default_rng(2)
    codes = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4])
    y = np.arange(len(codes))  # labels vary inside groups: whole-block permutation among equal sizes
    for _ in range(20):
        out = permute_by_group(y, codes, rng)
        blocks = {g: tuple(out[codes == g]) for g in np.unique(codes)}
        originals = {tuple(y[codes == g]) for g in np.unique(codes)}
        assert set(blocks.values()) == originals  # every block moved whole, rows in order
        assert all(len(b) == (codes == g).sum() for g, b in blocks.items())
    constant = np.array([5, 5, 7, 7, 7, 5, 5, 9, 9, 9, 1, 1])  # one label per subject: any subject can swap
    seen = {tuple(permute_by_group(constant, codes, rng)) for _ in range(200)}
    assert all(len(set(np.array(s)[codes == g])) == 1 for s in seen for g in range(5))
    assert any(np.array(s)[0] == 9 for s in seen)  # a 2-row subject took a 3-row subject's label


def test_probe_permutes_subjects_not_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import alignment.probes as probes

    seen: list[np.ndarray] = []
    real = probes._cross_val_predict

    def spy(task, folds, y, groups, *args):  # type: ignore[no-untyped-def]
        seen.append((y.copy(), groups.copy()))
        return real(task, folds, y, groups, *args)

    monkeypatch.setattr(probes, "_cross_val_predict", spy)
    rng = np.random.default_rng(3)
    subjects = np.repeat(np.arange(20), 3)
    y = (np.arange(20) % 2)[subjects]
    linear_probe(rng.normal(size=(60, 4)), y, subjects, task="classification", n_splits=2, n_boot=5,
                 n_permutations=3)
    assert len(seen) == 4  # the fit itself, then three permutations
    for labels, groups in seen[1:]:
        assert all(len(set(labels[groups == g])) == 1 for g in np.unique(groups))
        assert not np.array_equal(labels, y)


def test_row_space_coordinates_give_the_same_penalised_model_when_columns_outnumber_rows() -> None:
    from sklearn.linear_model import LogisticRegression

    from alignment.probes import RowSpace

    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 500))
    y = (x[:, :3].sum(axis=1) + rng.normal(size=60) > 0).astype(int)
    x_new = rng.normal(size=(25, 500))
    fit = {"C": 0.05, "tol": 1e-12, "max_iter": 10_000}
    plain = LogisticRegression(**fit).fit(x, y)
    rows = RowSpace()
    reduced = LogisticRegression(**fit).fit(rows.fit_transform(x), y)
    assert rows.transform(x).shape == (60, 60)
    np.testing.assert_allclose(rows.transform(x), rows.fit_transform(x), atol=1e-9)
    np.testing.assert_allclose(reduced.predict_proba(rows.transform(x_new)), plain.predict_proba(x_new), atol=1e-6)
    narrow = rng.normal(size=(60, 8))
    assert RowSpace().fit(narrow).transform(narrow) is narrow  # no more columns than rows: unchanged
    flat = RowSpace()  # constant (scaled: zero) training rows keep one zero coordinate, not an empty array
    assert np.array_equal(flat.fit_transform(np.zeros((3, 50))), np.zeros((3, 1)))
    assert np.array_equal(flat.transform(x_new[:, :50]), np.zeros((25, 1)))


def test_row_space_keeps_a_grouped_ridge_cv_the_same() -> None:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold

    from alignment.probes import RowSpace
    from alignment.stats import RIDGE_ALPHAS

    rng = np.random.default_rng(5)
    x, x_new = rng.normal(size=(90, 400)), rng.normal(size=(20, 400))
    y = x[:, :5].sum(axis=1) + rng.normal(size=90)
    cv = list(GroupKFold(n_splits=3).split(x, y, np.arange(90) // 2))  # families of two
    plain = RidgeCV(alphas=RIDGE_ALPHAS, cv=cv).fit(x, y)
    rows = RowSpace()
    reduced = RidgeCV(alphas=RIDGE_ALPHAS, cv=cv).fit(rows.fit_transform(x), y)
    assert reduced.alpha_ == plain.alpha_
    np.testing.assert_allclose(reduced.predict(rows.transform(x_new)), plain.predict(x_new), rtol=1e-8, atol=1e-8)


def test_folds_are_prepared_once_per_representation_and_the_cache_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import alignment.probes as probes

    rng = np.random.default_rng(6)
    n = 80
    x = rng.normal(size=(n, 300))  # wider than the rows: the row-space path
    confounds = rng.normal(size=(n, 2))
    table = pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)], "age": x[:, 0] + rng.normal(size=n),
                          "bmi": x[:, 1] + rng.normal(size=n), "sex": (x[:, 2] > 0).astype(int)})
    calls = []
    real = probes._prepare
    monkeypatch.setattr(probes, "_prepare", lambda *a: calls.append(1) or real(*a))
    kw = {"n_splits": 4, "n_boot": 5, "n_permutations": 2, "seed": 1}
    report = probes.probe_representations({"wide": x}, table, ["age", "bmi", "sex"], confounds=confounds,
                                          adjusted=["wide"], **kw)
    # two regression targets share GroupKFold's 4 folds; the classification target has its own 4; permutations reuse
    assert len(calls) == 8
    calls.clear()
    for target in ("age", "bmi", "sex"):  # without a shared cache: the same records
        alone = linear_probe(x, table[target].to_numpy(), table["subject_id"].to_numpy(), confounds=confounds,
                             task="classification" if target == "sex" else "regression", target=target,
                             representation="wide", **kw)
        got = [r for r in report.records if r["target"] == target]
        assert [r["value"] for r in got] == [r["value"] for r in alone]
        assert [r["perm_mean"] for r in got] == [r["perm_mean"] for r in alone]
    assert len(calls) == 12  # each target alone: its 4 folds once, the permutations reuse them


def test_fold_residuals_equal_lstsq_also_for_a_rank_deficient_design() -> None:
    from alignment.probes import fold_residuals

    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 30)) * 100
    confounds = rng.normal(size=(50, 3))
    confounds = np.c_[confounds, confounds[:, 0] + confounds[:, 1]]  # collinear: rank 4 of 5 with the intercept
    train, test = np.arange(35), np.arange(35, 50)
    design = np.c_[np.ones(50), confounds]
    coef = np.linalg.lstsq(design[train], x[train], rcond=None)[0]
    got = fold_residuals(x, confounds, train, test)
    scale = np.abs(x).max() * 50 * np.finfo(np.float64).eps  # fp64: the rounding of sums of ~50 terms
    np.testing.assert_allclose(got[0], x[train] - design[train] @ coef, rtol=0, atol=100 * scale)
    np.testing.assert_allclose(got[1], x[test] - design[test] @ coef, rtol=0, atol=100 * scale)


def test_fold_ridge_cv_equals_ridge_cv_with_the_same_folds() -> None:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold

    from alignment.probes import FoldRidgeCV
    from alignment.stats import RIDGE_ALPHAS

    rng = np.random.default_rng(8)
    chosen = set()
    for n, d, noise in ((300, 12, 1.0), (90, 40, 0.3), (120, 300, 0.5), (120, 300, 5.0), (150, 150, 30.0)):
        x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d)  # tall (primal) and wide (dual) folds
        y = x[:, :5].sum(axis=1) + noise * rng.normal(size=n) + 3.0
        cv = list(GroupKFold(n_splits=3).split(x, y, np.arange(n) // 2))  # families of two
        ref = RidgeCV(alphas=RIDGE_ALPHAS, cv=cv).fit(x, y)
        got = FoldRidgeCV(RIDGE_ALPHAS, cv).fit(x, y)
        assert got.alpha_ == ref.alpha_
        np.testing.assert_allclose(got.predict(x), ref.predict(x), rtol=1e-10, atol=1e-10)
        chosen.add(got.alpha_)
    assert len(chosen) >= 3  # the cases pick different alphas
