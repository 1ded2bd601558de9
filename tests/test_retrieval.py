"""Retrieval metrics: blockwise ranks equal an argsort reference (with ties), chance values, CIs, K-way protocol."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from alignment.errors import AlignmentInputError
from alignment.retrieval import (
    bootstrap_rank_metrics,
    chance_metrics,
    check_disjoint_splits,
    kway_top1,
    pair_ranks,
    positive_ranks,
    rank_metrics,
    retrieval_report,
)


def _reference_ranks(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """argsort reference: sort each row by descending score with the query's own positives placed after equal
    scores of other items (pessimistic ties), rank = position of the first positive among the negatives."""
    order = np.lexsort((positive, -scores), axis=-1)
    pos_sorted = np.take_along_axis(positive, order, axis=1)
    first = pos_sorted.argmax(axis=1)
    return first  # items before the first positive are all negatives


def _quantised(rng: np.random.Generator, n: int, dim: int = 6) -> np.ndarray:
    return rng.integers(-1, 2, size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("n", [1, 7, 300, 2100])
def test_pair_ranks_match_argsort_reference_with_ties(n: int) -> None:
    rng = np.random.default_rng(n)
    q, g = _quantised(rng, n), _quantised(rng, n)
    scores = q.astype(np.float64) @ g.T.astype(np.float64)
    eye = np.eye(n, dtype=bool)
    ref_fwd, ref_bwd = _reference_ranks(scores, eye), _reference_ranks(scores.T, eye)
    if n > 7:  # the data must really contain ties with the true pair
        assert ((scores == np.diag(scores)[:, None]) & ~eye).any()
    for block in {1: (1, 5), 7: (1, 3, 8), 300: (7, 128, 1024), 2100: (1024, 1500, 2048)}[n]:
        fwd, bwd = pair_ranks(q, g, normalize=False, block_size=block)
        np.testing.assert_array_equal(fwd, ref_fwd, err_msg=f"block {block}")
        np.testing.assert_array_equal(bwd, ref_bwd, err_msg=f"block {block}")


def test_pair_ranks_cosine_match_reference_on_float_data() -> None:
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(257, 16)), rng.normal(size=(257, 16))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    scores = qn @ gn.T
    eye = np.eye(257, dtype=bool)
    threads = torch.get_num_threads()
    fwd, bwd = pair_ranks(q, g, block_size=64)  # several worker threads on CPU
    assert torch.get_num_threads() == threads  # restored afterwards
    np.testing.assert_array_equal(fwd, _reference_ranks(scores, eye))
    np.testing.assert_array_equal(bwd, _reference_ranks(scores.T, eye))


@pytest.mark.parametrize(("n_query", "n_gallery"), [(5, 9), (300, 1500), (40, 2100)])
def test_positive_ranks_match_reference_with_ties(n_query: int, n_gallery: int) -> None:
    rng = np.random.default_rng(n_gallery)
    q, g = _quantised(rng, n_query, 5), _quantised(rng, n_gallery, 5)
    g_labels = rng.integers(0, n_query, n_gallery)
    g_labels[:n_query] = np.arange(n_query)  # every subject has at least one gallery item
    q_labels = rng.permutation(n_query)
    positive = q_labels[:, None] == g_labels[None, :]
    ref = _reference_ranks(q.astype(np.float64) @ g.T.astype(np.float64), positive)
    for block in (1, 7, 1024) if n_query < 10 else (64, 1024):
        ranks, n_pos = positive_ranks(q, g, q_labels, g_labels, normalize=False, block_size=block)
        np.testing.assert_array_equal(ranks, ref, err_msg=f"block {block}")
        np.testing.assert_array_equal(n_pos, positive.sum(1))


def test_all_ties_are_pessimistic() -> None:
    x = np.ones((6, 3))
    fwd, bwd = pair_ranks(x, x)
    assert (fwd == 5).all() and (bwd == 5).all()
    metrics = rank_metrics(fwd)
    assert metrics["R_at_1"] == 0.0 and metrics["mean_rank"] == 6.0 and metrics["median_rank"] == 6.0


def test_perfect_alignment_gives_top_scores() -> None:
    x = np.random.default_rng(0).normal(size=(400, 32))
    report = retrieval_report(x, x.copy(), kway=100, kway_repeats=5, n_boot=50)
    by_name = {(r["direction"], r["level"], r["metric"]): r["value"] for r in report.records}
    for direction in ("brain_to_genetics", "genetics_to_brain"):
        assert by_name[(direction, "recording", "R_at_1")] == 1.0
        assert by_name[(direction, "recording", "mean_rank")] == 1.0
        assert by_name[(direction, "recording", "median_rank")] == 1.0
        assert by_name[(direction, "recording", "mrr")] == 1.0
        assert by_name[(direction, "100way", "top1")] == 1.0


def test_random_embeddings_sit_near_chance() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    report = retrieval_report(
        rng.normal(size=(n, 32)), rng.normal(size=(n, 32)), kway=100, kway_repeats=20, n_boot=200
    )
    for r in report.records:
        if r["metric"] in ("R_at_1", "R_at_10", "mrr", "top1"):
            assert abs(r["value"] - r["chance"]) < 0.01, r
        if r["metric"] == "mean_rank":
            assert r["value"] == pytest.approx((n + 1) / 2, rel=0.05)
            assert r["chance"] == pytest.approx((n + 1) / 2)


def test_chance_values_one_positive() -> None:
    for n in (4, 5, 1000):
        chance = chance_metrics(n)
        assert chance["R_at_1"] == pytest.approx(1 / n)
        assert chance["R_at_5"] == pytest.approx(min(5, n) / n)
        assert chance["R_at_10"] == pytest.approx(min(10, n) / n)
        assert chance["mean_rank"] == pytest.approx((n + 1) / 2)
        assert chance["mrr"] == pytest.approx(sum(1 / i for i in range(1, n + 1)) / n)
        assert chance["median_rank"] == np.floor(np.median(np.arange(n))) + 1


def test_chance_values_several_positives_match_enumeration() -> None:
    n, ks = 6, (1, 2, 5)
    expected: dict[str, list[float]] = {}
    ranks = []
    for m in (1, 2, 3):  # one query each with m positives; every placement of the positives equally likely
        ranks.append([min(places) for places in itertools.combinations(range(n), m)])
    for name in ("R_at_1", "R_at_2", "R_at_5", "mean_rank", "mrr"):
        expected[name] = np.mean([rank_metrics(np.array(r), ks)[name] for r in ranks])
    chance = chance_metrics(n, np.array([1, 2, 3]), ks)
    for name, value in expected.items():
        assert chance[name] == pytest.approx(value), name


def test_bootstrap_ci_contains_estimate_shrinks_with_n_and_is_seeded() -> None:
    rng = np.random.default_rng(2)
    widths = []
    for n in (200, 5000):
        ranks = rng.geometric(0.3, size=n) - 1
        point = rank_metrics(ranks)
        ci = bootstrap_rank_metrics(ranks, n_boot=300, seed=0)
        for name, (low, high) in ci.items():
            assert low <= point[name] <= high, name
        widths.append(ci["R_at_1"][1] - ci["R_at_1"][0])
        assert bootstrap_rank_metrics(ranks, n_boot=300, seed=0) == ci
        assert bootstrap_rank_metrics(ranks, n_boot=300, seed=1) != ci
    assert widths[1] < widths[0] / 2


def test_cluster_bootstrap_is_wider_for_correlated_queries() -> None:
    rng = np.random.default_rng(3)
    subject_ranks = rng.geometric(0.2, size=100) - 1
    ranks = np.repeat(subject_ranks, 10)  # ten queries per subject, identical ranks
    clusters = np.repeat(np.arange(100), 10)
    naive = bootstrap_rank_metrics(ranks, n_boot=300)
    by_subject = bootstrap_rank_metrics(ranks, clusters, n_boot=300)
    assert by_subject["mean_rank"][1] - by_subject["mean_rank"][0] > 2 * (
        naive["mean_rank"][1] - naive["mean_rank"][0]
    )


def test_subject_level_counts_any_recording_of_the_subject() -> None:
    # Subjects a, a, b, c: query 0 (subject a) scores DNA row 1 (also subject a) above its own pair row 0.
    brain = np.array([[1.0, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    genetics = np.array([[0.9, 0.5], [1.0, 0.0], [-1.0, 0.1], [0.1, -1.0]])
    subjects = np.array(["a", "a", "b", "c"])
    report = retrieval_report(
        brain, genetics, brain_subjects=subjects, genetics_subjects=subjects, kway=None, n_boot=20
    )
    rec = report.ranks[("brain_to_genetics", "recording")]
    sub = report.ranks[("brain_to_genetics", "subject")]
    assert rec[0] == 1 and sub[0] == 0  # the other recording of subject a is a hit at subject level only
    records = {(r["level"], r["direction"], r["metric"]): r for r in report.records}
    # subject level: 4 candidates, 2 positives for subject-a queries -> R@1 chance = 1 - C(3,2)/C(4,2) = 1/2
    assert records[("subject", "brain_to_genetics", "R_at_1")]["chance"] == pytest.approx(
        (0.5 + 0.5 + 0.25 + 0.25) / 4
    )
    assert records[("recording", "brain_to_genetics", "R_at_1")]["chance"] == pytest.approx(0.25)


def test_subject_level_with_one_genetics_row_per_subject() -> None:
    rng = np.random.default_rng(4)
    genetics = rng.normal(size=(30, 8))
    brain_subjects = np.repeat(np.arange(30), 3)
    brain = genetics[brain_subjects] + 0.05 * rng.normal(size=(90, 8))
    report = retrieval_report(
        brain,
        genetics,
        brain_subjects=brain_subjects,
        genetics_subjects=np.arange(30),
        kway=10,
        kway_repeats=4,
        n_boot=50,
    )
    levels = {(r["direction"], r["level"]) for r in report.records}
    assert ("brain_to_genetics", "recording") not in levels  # rows are not paired
    flat = report.flat("retrieval")
    assert flat["retrieval/brain_to_genetics/subject/R_at_1"] == 1.0
    assert flat["retrieval/genetics_to_brain/subject/R_at_1"] == 1.0
    assert flat["retrieval/brain_to_genetics/10way/top1"] == 1.0
    assert flat["retrieval/genetics_to_brain/subject/R_at_1_chance"] == pytest.approx(
        chance_metrics(90, 3)["R_at_1"]
    )
    records = [r for r in report.records if r["level"] == "subject" and r["direction"] == "genetics_to_brain"]
    assert {r["n_queries"] for r in records} == {30} and {r["n_candidates"] for r in records} == {90}


def test_kway_protocol() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 16))
    perfect = kway_top1(x, x, k=50, repeats=10)
    assert perfect["brain_to_genetics"]["top1"] == 1.0 and perfect["genetics_to_brain"]["chance"] == 1 / 50
    noise = kway_top1(x, rng.normal(size=(500, 16)), k=50, repeats=40, seed=1)
    for res in noise.values():
        assert abs(res["top1"] - 1 / 50) < 0.015 and res["ci_low"] < res["top1"] < res["ci_high"]
    small = kway_top1(x[:20], x[:20], k=300, repeats=3)
    assert small["brain_to_genetics"]["k"] == 20 and small["brain_to_genetics"]["chance"] == 1 / 20
    noisy = x + 2 * rng.normal(size=x.shape)
    assert kway_top1(x, noisy, k=50, repeats=5, seed=7) == kway_top1(x, noisy, k=50, repeats=5, seed=7)
    assert kway_top1(x, noisy, k=50, repeats=5, seed=7) != kway_top1(x, noisy, k=50, repeats=5, seed=8)
    subjects = np.repeat(np.arange(100), 5)  # five recordings per subject, one DNA row per subject
    per_subject = kway_top1(x, x[::5], k=300, repeats=3, brain_subjects=subjects, genetics_subjects=np.arange(100))
    assert per_subject["brain_to_genetics"]["k"] == 100


def test_flat_names_are_mlflow_safe() -> None:
    rng = np.random.default_rng(6)
    report = retrieval_report(
        rng.normal(size=(40, 4)), rng.normal(size=(40, 4)), kway=10, kway_repeats=3, n_boot=20
    )
    flat = report.flat()
    assert "brain_to_genetics/R_at_1" in flat and "genetics_to_brain/median_rank_ci_high" in flat
    assert "brain_to_genetics/R_at_10_chance" in flat and "genetics_to_brain/10way/top1" in flat
    assert not any("@" in key for key in flat)
    assert len(report.records) == 2 * 6 + 2


def test_bad_inputs_raise_clear_errors() -> None:
    rng = np.random.default_rng(7)
    brain, genetics = rng.normal(size=(10, 4)), rng.normal(size=(10, 4))
    bad = brain.copy()
    bad[[2, 5], 1] = np.nan
    with pytest.raises(AlignmentInputError, match=r"brain embeddings: 2 of 10 rows contain NaN"):
        retrieval_report(bad, genetics)
    with pytest.raises(AlignmentInputError, match=r"genetics embeddings: 1 of 10 rows"):
        retrieval_report(brain, np.where(np.arange(10)[:, None] == 3, np.inf, genetics))
    with pytest.raises(AlignmentInputError, match="same shape"):
        retrieval_report(brain, genetics[:9])
    with pytest.raises(AlignmentInputError, match="no item in genetics_subjects"):
        retrieval_report(brain, genetics[:9], brain_subjects=np.arange(10), genetics_subjects=np.arange(9))
    with pytest.raises(AlignmentInputError, match="zero norm"):
        retrieval_report(np.zeros((10, 4)), genetics)
    with pytest.raises(AlignmentInputError, match="pass both or neither"):
        retrieval_report(brain, genetics, brain_subjects=np.arange(10))


def test_leakage_guard_names_subjects() -> None:
    check_disjoint_splits(["s1", "s2"], ["test", "test"], ["s1", "s3"], ["test", "test"])
    with pytest.raises(AlignmentInputError, match=r"\['s2'\]"):
        check_disjoint_splits(["s1", "s2"], ["test", "test"], ["s2", "s3"], ["train", "test"])


def test_tiny_n_retrieval_intervals_are_not_points() -> None:
    from alignment.retrieval import bootstrap_rank_metrics, chance_metrics

    with pytest.warns(UserWarning, match="only 2 subjects"):
        ci = bootstrap_rank_metrics(np.array([0, 0]), ks=(1,), n_boot=50)
    assert ci["R_at_1"][0] < 0.5 and ci["R_at_1"][1] == 1.0
    with pytest.warns(UserWarning):
        shuffled = bootstrap_rank_metrics(np.array([1, 1]), ks=(1,), n_boot=50)  # MRR 0.5 in every resample
    assert shuffled["mrr"][0] < 0.5 < shuffled["mrr"][1]
    assert shuffled["mrr"][0] < chance_metrics(2)["mrr"] < shuffled["mrr"][1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = bootstrap_rank_metrics(np.arange(40) % 5, ks=(1,), n_boot=50)  # no warning at 40 subjects
    assert big["R_at_1"][0] < 0.2 < big["R_at_1"][1]
