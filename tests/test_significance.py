"""Permutation tests over test pairings (alignment.significance): the shuffles, ranks under a shuffle, the
false-positive rate on null tables (retrieval and held-out canonical correlation) and within-strata shuffles on a
confounded null."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from alignment.baselines import CCABaseline
from alignment.ranks import as_embeddings, pair_ranks
from alignment.retrieval import retrieval_report
from alignment.significance import (
    correlation_records,
    pairing_permutations,
    permuted_ranks,
    retrieval_pvalues,
)

KS = (1, 5, 10)


def band(draws: int, rate: float) -> tuple[float, float]:
    """Binomial 99 % band of an observed rate over `draws` independent draws."""
    return binom.ppf(0.005, draws, rate) / draws, binom.ppf(0.995, draws, rate) / draws


def test_permutations_respect_strata_and_families() -> None:
    strata = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    families = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 5])
    perms = pairing_permutations(10, 300, strata=strata, clusters=families, seed=0)
    assert perms.shape == (300, 10)
    assert all(sorted(p) == list(range(10)) for p in perms)
    assert (strata[perms] == strata[None, :]).all()
    # members of a family move together, onto a family of the same size
    assert (families[perms[:, 0]] == families[perms[:, 1]]).all()
    assert (families[perms[:, 8]] != families[perms[:, 6]]).all()
    assert len({tuple(p) for p in perms}) > 2
    with pytest.raises(ValueError, match="inside one stratum"):
        pairing_permutations(4, 5, strata=[0, 1, 0, 1], clusters=[0, 0, 1, 1])


def test_permuted_ranks_identity_matches_pair_ranks() -> None:
    rng = np.random.default_rng(0)
    q, g = as_embeddings(rng.standard_normal((70, 6)), "b"), as_embeddings(rng.standard_normal((70, 6)), "g")
    perms = np.vstack([np.arange(70), rng.permutation(70)])
    ranks = permuted_ranks(q, g, perms, block_size=16)
    np.testing.assert_array_equal(ranks[0], pair_ranks(q, g, normalize=False)[0])
    s = (q @ g.T).numpy()
    expected = [(s[i] >= s[i, perms[1, i]]).sum() - 1 for i in range(70)]
    np.testing.assert_array_equal(ranks[1], expected)


@pytest.mark.slow
@pytest.mark.parametrize("n", [50, 150])
def test_null_false_positive_rate(n: int) -> None:
    """200 null tables: the rate of p < 0.05 (MRR both directions, R@1, and the first held-out canonical correlation
    of a CCA fitted on separate training rows) stays in the binomial 99 % band of 0.05 (R@1: at most its top)."""
    rng = np.random.default_rng(100 + n)
    draws = 200
    hits = {"mrr": 0, "R_at_1": 0, "g2b_mrr": 0, "canonical_corr_1": 0}
    for d in range(draws):
        b, g = rng.standard_normal((n, 16)), rng.standard_normal((n, 16))
        p = retrieval_pvalues(as_embeddings(b, "b"), as_embeddings(g, "g"), ks=KS, n_perm=199, seed=d)
        hits["mrr"] += p["brain_to_genetics"]["mrr"] < 0.05
        hits["R_at_1"] += p["brain_to_genetics"]["R_at_1"] < 0.05
        hits["g2b_mrr"] += p["genetics_to_brain"]["mrr"] < 0.05
        cca = CCABaseline("cca", n_components=2).fit(rng.standard_normal((100, 16)), rng.standard_normal((100, 16)))
        u, v = cca.transform(b, g)
        rec = correlation_records("cca", u, v, n_perm=199, n_boot=10, seed=d)
        hits["canonical_corr_1"] += rec[0]["p_value"] < 0.05
    low, high = band(draws, 0.05)
    for name, count in hits.items():
        assert count / draws <= high, (name, count / draws, (low, high))
        if name != "R_at_1":  # a count of ~1 hit: the exact test is discrete and may only be conservative
            assert low <= count / draws, (name, count / draws, (low, high))


def _confounded_null(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Site x ancestry cells shift both modalities (ancestry tied to site); no subject-level link."""
    cells = rng.integers(0, 4, n)
    means = rng.standard_normal((4, 8))  # both modalities encode the cell in the same shared-space direction
    b = means[cells] + rng.standard_normal((n, 8))
    g = means[cells] + rng.standard_normal((n, 8))
    return b, g, cells


def test_within_strata_shuffles_hold_the_level_on_a_confounded_null() -> None:
    """Structure tied to strata: shuffling across strata rejects on most tables, shuffling within them keeps the
    false-positive rate in its binomial 99 % band."""
    rng = np.random.default_rng(7)
    draws = 120
    plain = within = 0
    for d in range(draws):
        b, g, cells = _confounded_null(rng, 60)
        q, r = as_embeddings(b, "b"), as_embeddings(g, "g")
        plain += retrieval_pvalues(q, r, ks=KS, n_perm=199, seed=d)["brain_to_genetics"]["mrr"] < 0.05
        within += retrieval_pvalues(q, r, ks=KS, n_perm=199, strata=cells, seed=d)["brain_to_genetics"]["mrr"] < 0.05
    low, high = band(draws, 0.05)
    assert plain / draws > 0.5
    assert low <= within / draws <= high, within / draws


def test_report_carries_p_values() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 8))
    strong = retrieval_report(x, x + 0.5 * rng.standard_normal((40, 8)), kway=None, n_boot=50, n_perm=99)
    p = {(r["direction"], r["metric"]): r["p_value"] for r in strong.records}
    assert p[("brain_to_genetics", "mrr")] == pytest.approx(0.01)
    assert "brain_to_genetics/mrr_p_value" in strong.flat()
    off = retrieval_report(x, x, kway=None, n_boot=50, n_perm=0)
    assert all(np.isnan(r["p_value"]) for r in off.records)


def test_within_stratum_report_shuffles_within_strata() -> None:
    """Within-stratum retrieval carries p-values from within-stratum shuffles: small for a real link, not for
    structure that only marks the stratum."""
    from alignment.stratified import within_stratum_report

    rng = np.random.default_rng(11)
    draws, rejected = 20, 0
    for d in range(draws):
        b, g, cells = _confounded_null(rng, 80)
        null = within_stratum_report(b, g, cells, n_boot=10, n_perm=199, seed=d)
        rejected += {r["metric"]: r["p_value"] for r in null.records if r["direction"] == "brain_to_genetics"}[
            "mrr"] < 0.05
    assert rejected / draws <= band(draws, 0.05)[1]
    linked = within_stratum_report(b, b + 0.5 * rng.standard_normal(b.shape), cells, n_boot=50, n_perm=199)
    p_link = {(r["direction"], r["metric"]): r["p_value"] for r in linked.records}
    assert p_link[("brain_to_genetics", "mrr")] == pytest.approx(0.005)
