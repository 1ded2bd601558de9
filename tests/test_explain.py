"""Explain: structure coefficients against numpy, planted features recovered with FDR-controlled q-values, a null
case without significant features, captum completeness, and `brainmm explain` on a tiny run of 1000 Genomes
genotypes (rsIDs in variants.tsv, every variant listed, planted variants on top)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from alignment import AlignmentInputError
from alignment.attribution import (
    affine_map,
    link_scores,
    shared_directions,
    structure_coefficients,
    units_from_labels,
)
from alignment.gradients import similarity_attributions
from brainmm.cli import main
from brainmm.embeddings import EmbeddingTable

REPO = Path(__file__).resolve().parents[1]
EPS = np.finfo(np.float64).eps


def test_structure_coefficients_equal_numpy_corrcoef() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 7)) * rng.uniform(0.1, 100, size=7)
    z = x[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(50, 4))
    x[:, 6] = 3.0  # a constant column correlates 0
    got = structure_coefficients(x, z)
    ref = np.corrcoef(x[:, :6].T, z.T)[:6, 6:]
    np.testing.assert_allclose(got[:6], ref, rtol=0, atol=100 * EPS)  # fp64: a few ulps per sum of 50 products
    assert (got[6] == 0).all()


def test_planted_features_recovered_and_units_are_member_means() -> None:
    rng = np.random.default_rng(1)
    n, p = 300, 40
    x = rng.normal(size=(n, p))
    planted = [3, 17, 30]
    partner = np.c_[x[:, planted] @ [1.0, -0.8, 0.6] + rng.normal(size=n), rng.normal(size=(n, 2))]
    labels = [f"g{j // 5}" for j in range(p)]
    names, member = units_from_labels(labels)
    res = link_scores(x, partner, [1.0, 0.5, 0.5], {"genes": member}, n_permutations=2000, n_boot=100, seed=0)
    f = res["features"]
    assert set(np.argsort(-f.score)[:3]) == set(planted)
    significant = set(np.flatnonzero(f.qvalue <= 0.05))
    assert set(planted) <= significant and len(significant - set(planted)) <= 1
    assert (f.ci_low[planted] <= f.score[planted]).all() and (f.score[planted] <= f.ci_high[planted]).all()
    genes = res["genes"]
    np.testing.assert_allclose(genes.score, [f.score[[i for i, g in enumerate(labels) if g == name]].mean()
                                             for name in names], rtol=1e-12)
    assert {names[i] for i in np.flatnonzero(genes.qvalue <= 0.05)} == {"g0", "g3", "g6"}


def test_null_pairs_give_no_significant_feature() -> None:
    hits = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        x, partner = rng.normal(size=(60, 30)), rng.normal(size=(60, 3))
        res = link_scores(x, partner, [1.0, 1.0, 1.0], n_permutations=2000, n_boot=5, seed=seed, fdr=0.05)
        res = res["features"]
        assert 0 < res.pvalue.min() and res.pvalue.max() <= 1
        hits += bool((res.qvalue <= 0.05).any())
    assert hits <= 3  # BH at 0.05 under the global null: P(any rejection) <= 0.05 (20 seeds: <= 3 by a wide margin)


def test_sequential_permutation_pvalues_match_the_full_count_and_hold_their_level() -> None:
    rng = np.random.default_rng(7)
    n, p = 80, 400
    x = rng.normal(size=(n, p))
    partner = np.c_[x[:, :4].sum(axis=1) + rng.normal(size=n), rng.normal(size=(n, 2))]
    names, member = units_from_labels([f"b{j // 8}" for j in range(p)])
    args = (x, partner, [1.0, 0.5, 0.25], {"blocks": member})
    full = link_scores(*args, n_permutations=3000, n_boot=20, seed=3, stop_after=0)
    seq = link_scores(*args, n_permutations=3000, n_boot=20, seed=3, stop_after=10)
    # the reference count, independently: the same draws (bootstrap first, then permutations) scored one at a time
    draw = np.random.default_rng(3)
    w = np.array([1.0, 0.5, 0.25]) / 1.75
    boot = np.array([(np.corrcoef(x[i].T, partner[i].T)[:p, p:] ** 2) @ w
                     for i in (draw.integers(0, n, n) for _ in range(20))]).T  # resampled rows, explicitly
    low, high = np.quantile(boot, [0.025, 0.975], axis=1)
    np.testing.assert_allclose(full["features"].ci_low, low, atol=1e-6)  # float32 draws
    np.testing.assert_allclose(full["features"].ci_high, high, atol=1e-6)
    xs, zs = (x - x.mean(0)) / x.std(0), (partner - partner.mean(0)) / partner.std(0)
    obs = (np.corrcoef(xs.T, zs.T)[:p, p:] ** 2) @ w
    hits = np.zeros(p)
    for _ in range(3000):
        zp = zs[draw.permutation(n)]
        hits += ((xs.T @ zp / n) ** 2) @ w >= obs - 1e-12 * obs
    f, s = full["features"], seq["features"]
    np.testing.assert_allclose(f.pvalue, (1 + hits) / 3001, rtol=0, atol=1e-12)
    kept = s.pvalue < 10 / 3000  # never stopped: every permutation seen, the same count as the full run
    assert kept[:4].all() and np.array_equal(s.pvalue[kept], f.pvalue[kept])
    stopped = ~kept
    assert np.allclose(s.pvalue[stopped] * np.rint(10 / s.pvalue[stopped]), 10)  # 10 / L at the 10th exceedance
    null = s.pvalue[4:]  # Besag-Clifford p-values are valid: P(p <= a) <= a under the null (binomial 99.9 % band)
    for a in (0.05, 0.2, 0.5):
        assert (null <= a).mean() <= a + 3.1 * np.sqrt(a * (1 - a) / len(null))
    assert set(np.flatnonzero(seq["blocks"].qvalue <= 0.05)) == {0}  # the block of the four planted columns
    np.testing.assert_array_equal(s.score, f.score)


def test_affine_map_shared_directions_and_integrated_gradients() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 4).double()
    w, b = affine_map(head, 6)
    np.testing.assert_allclose(w, head.weight.detach().numpy(), atol=1e-14)
    np.testing.assert_allclose(b, head.bias.detach().numpy(), atol=1e-14)
    rng = np.random.default_rng(2)
    u = rng.normal(size=(100, 4))
    q, lam = shared_directions(u, u + 0.1 * rng.normal(size=(100, 4)), 2)
    assert q.shape == (4, 2) and lam[0] >= lam[1] > 0
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    x, partner = rng.normal(size=(10, 6)), rng.normal(size=(10, 4))
    attr, delta = similarity_attributions(mlp, x, partner, baseline=x.mean(axis=0), n_steps=64)
    assert attr.shape == (10, 6) and np.abs(delta).max() < 1e-6  # completeness: attributions sum to the change
    with pytest.raises(ValueError, match="not affine"):
        affine_map(mlp, 6)


def _kg_run(sample_data_dir: Path, root: Path, uri: str) -> tuple[Path, list[str]]:
    """A tiny linear-head alignment of 1000 Genomes chr2 dosages with a brain table driven by two variants."""
    from brainmm.align import AlignConfig, run_align
    from brainmm.config import load_config
    from brainmm.data.genetics import read_variant_table
    from brainmm.data.genetics.config import GenotypeMatrixConfig
    from brainmm.data.genetics.matrix import read_vcf_dosages, run_matrix
    from brainmm.data.genetics.sample import fetch_genetics_sample
    from brainmm.data.splits import make_split, save_split

    folder = fetch_genetics_sample(sample_data_dir)
    samples = read_vcf_dosages(folder / "1kg.chr2.vcf.gz").samples
    save_split(make_split(samples, seed=0), root / "split.csv")
    table = run_matrix(GenotypeMatrixConfig(vcf=str(folder / "1kg.chr2.vcf.gz"), split=str(root / "split.csv"),
                                            out=str(root / "geno")))
    variants = read_variant_table(root / "geno")
    with_rs = np.flatnonzero(variants["rsid"].str.startswith("rs").to_numpy())
    planted = with_rs[[0, len(with_rs) // 2]]
    rng = np.random.default_rng(0)
    d = table.vectors.astype(np.float64)
    d = (d - d.mean(0)) / np.where(d.std(0) > 0, d.std(0), 1)
    signal = d[:, planted] @ [1.0, -1.0]
    brain = np.c_[signal[:, None] * rng.normal(size=(1, 6)), np.zeros((len(d), 2))] + 0.5 * rng.normal(size=(len(d), 8))
    EmbeddingTable(table.ids, brain, {}).save(root / "brain")
    v = 6  # a connectivity table (nilearn's lower-triangle order) whose edge (1, 0) follows the planted signal
    fc = 0.5 * rng.normal(size=(len(d), v * (v - 1) // 2))
    fc[:, 0] += signal
    (root / "fmri").mkdir()
    pd.DataFrame({"parcel": range(v), "label": [f"7Networks_LH_{n}_1" for n in "AABBCC"], "x": np.arange(v) * 10.0,
                  "y": 0.0, "z": 0.0}).to_csv(root / "fmri" / "coords.tsv", sep="\t", index=False)
    EmbeddingTable(table.ids, fc, {"kind": "connectivity", "dataset": str(root / "fmri")}).save(root / "fc")
    cfg = load_config(AlignConfig, REPO / "configs" / "align_clip.yaml", [
        f"data.brain={root / 'brain'}", f"data.genetics={{geno: {root / 'geno'}}}", f"data.split={root / 'split.csv'}",
        f"output_dir={root / 'align'}", "head.kind=linear", "head.init=cca", "head.out_dim=8", "train.epochs=2",
        "train.batch_size=64", "train.device=cpu", f"tracking.uri={uri}", "tracking.experiment=explain-test"])
    return run_align(cfg).run_dir, [variants["rsid"].iat[i] for i in planted]


def test_explain_cli_on_1000_genomes_lists_rsids(sample_data_dir: Path, tmp_path: Path, mlflow_uri: str,
                                                 capsys) -> None:
    run_dir, planted = _kg_run(sample_data_dir, tmp_path, mlflow_uri)
    assert main(["explain", "--align-dir", str(run_dir), "explain.splits=[val, test]", "explain.n_permutations=2000",
                 "explain.n_boot=50", f"data.brain_fc={tmp_path / 'fc'}"]) == 0
    out = capsys.readouterr().out
    variants = pd.read_csv(run_dir / "explain" / "variants.tsv", sep="\t", dtype={"rsid": str, "chrom": str})
    geno = EmbeddingTable.load(tmp_path / "geno")
    assert len(variants) == geno.dim  # every variant, not a top k
    for col in ("variant_id", "rsid", "chrom", "pos", "score", "ci_low", "ci_high", "p", "q",
                "significant", "structure_1", "weight", "attribution", "cca_score", "cca_q", "cca_weight"):
        assert col in variants, col
    assert variants["rsid"].str.startswith("rs").sum() > 20 and variants["chrom"].eq("2").all()
    top = variants.sort_values("score", ascending=False)["rsid"].head(2).tolist()
    assert set(top) == set(planted)
    assert set(variants.loc[variants["q"] <= 0.05, "rsid"]) >= set(planted)
    assert planted[0] in out or planted[1] in out  # the printed top-k names them
    for name in ("manhattan.png", "summary.md", "parcels_map.png", "edges_top.png"):
        assert (run_dir / "explain" / name).is_file(), name
    edges = pd.read_csv(run_dir / "explain" / "edges.tsv", sep="\t")
    assert len(edges) == 15 and edges.sort_values("score").iloc[-1][["parcel_i", "parcel_j"]].tolist() == [1, 0]
    assert {"fc_cca_score", "fc_cca_q", "network_i"} <= set(edges.columns) and edges["q"].iat[0] <= 0.05
    parcels = pd.read_csv(run_dir / "explain" / "parcels.tsv", sep="\t")
    assert parcels["score"].idxmax() in (0, 1) and list(parcels["network"]) == list("AABBCC")
    networks = pd.read_csv(run_dir / "explain" / "networks.tsv", sep="\t")
    assert networks.loc[networks["score"].idxmax(), "network"] == "A"
    child = mlflow.search_runs(experiment_names=["explain-test"], filter_string="tags.`brainmm.stage` = 'explain'")
    assert len(child) == 1 and child["metrics.explain/variants/model/n_significant"].iat[0] >= 2
    assert main(["explain", "--align-dir", str(run_dir), "explain.fdr=2"]) == 2  # one-line user error
    assert "explain.fdr" in capsys.readouterr().err


def test_genes_from_a_bed_and_edge_order(tmp_path: Path) -> None:
    from nilearn.connectome import sym_matrix_to_vec

    from brainmm.errors import BrainmmError
    from brainmm.explain.features import assign_genes, edge_parcels, read_genes

    bed = tmp_path / "genes.bed"
    bed.write_text("track name=genes\nchr2\t100\t200\tGENE1\n2\t150\t300\tGENE2\nchr3\t0\t50\tGENE3\n")
    variants = pd.DataFrame({"chrom": ["2", "2", "2", "2", "3"], "pos": [100, 101, 200, 301, 50]})
    assert assign_genes(variants, read_genes(str(bed))).tolist() == ["", "GENE1", "GENE1,GENE2", "", "GENE3"]
    (tmp_path / "bad.bed").write_text("chr2\tx\t200\tG\n")
    with pytest.raises(BrainmmError, match="start/end must be integers"):
        read_genes(str(tmp_path / "bad.bed"))
    v = 5
    m = np.zeros((v, v))
    i, j, got_v = edge_parcels(v * (v - 1) // 2)
    m[i, j] = np.arange(len(i)) + 1
    assert got_v == v and (sym_matrix_to_vec(m + m.T, discard_diagonal=True) == np.arange(len(i)) + 1).all()


def test_settled_bh_decisions_stop_early_with_p_bounding_the_exact_permutation_p() -> None:
    import itertools

    from scipy.stats import false_discovery_control

    rng = np.random.default_rng(11)
    n, p = 8, 60  # 8! = 40,320 pairings: the exact permutation p-value by enumeration
    z = rng.normal(size=(n, 2))
    x = rng.normal(size=(n, p))
    x[:, :30] = z[:, :1] + 0.15 * rng.normal(size=(n, 30))
    w = np.array([1.0, 0.5]) / 1.5
    xs, zs = (x - x.mean(0)) / x.std(0), (z - z.mean(0)) / z.std(0)
    obs = ((xs.T @ zs / n) ** 2) @ w
    perms = np.array(list(itertools.permutations(range(n))))
    null = (np.einsum("ij,pir->pjr", xs, zs[perms]) / n) ** 2 @ w
    exact = (null >= obs - 1e-9 * obs).mean(axis=0)
    names, member = units_from_labels([f"b{j // 4}" for j in range(p)])
    args = (x, z, [1.0, 0.5], {"blocks": member})
    full = link_scores(*args, n_permutations=40000, n_boot=5, seed=0)
    fast = link_scores(*args, n_permutations=40000, n_boot=5, seed=0, fdr=0.05)
    f, s = full["features"], fast["features"]
    truth = set(np.flatnonzero(false_discovery_control(exact) <= 0.05))
    assert set(range(30)) <= truth  # the planted features (and a few chance ones at n = 8)
    assert set(np.flatnonzero(s.qvalue <= 0.05)) == set(np.flatnonzero(f.qvalue <= 0.05)) == truth
    settled = s.pvalue != f.pvalue  # the same draws: only the settled ones differ
    assert settled.sum() >= 20 and set(np.flatnonzero(settled)) <= truth
    assert (s.pvalue[settled] >= exact[settled]).all()  # an upper bound of the exact p (risk 1e-3)
    assert (s.pvalue[settled] > 20 / 40001).all()  # stopped long before 40,000 permutations
    assert np.array_equal(fast["blocks"].qvalue <= 0.05, full["blocks"].qvalue <= 0.05)
    with pytest.raises(AlignmentInputError, match="fdr in"):
        link_scores(*args, fdr=0.0)


def test_units_stop_at_unit_permutations_and_features_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from alignment import attribution

    monkeypatch.setattr(attribution, "UNIT_PERMUTATIONS", 500)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 40))
    partner = np.c_[x[:, :2].sum(axis=1) + 0.2 * rng.normal(size=60), rng.normal(size=(60, 1))]
    names, member = units_from_labels([f"b{j // 4}" for j in range(40)])
    res = link_scores(x, partner, [1.0, 1.0], {"blocks": member}, n_permutations=3000, n_boot=5, seed=0)
    assert res["blocks"].pvalue.min() == pytest.approx(1 / 501)  # the planted block: never exceeded in 500
    assert res["features"].pvalue[:2].max() == pytest.approx(1 / 3001)  # its features saw all 3,000


def test_contributions_sum_to_the_paired_similarity_and_separate_a_causal_feature_from_its_ld_partner() -> None:
    rng = np.random.default_rng(11)
    n, p, r = 400, 30, 3
    x = rng.normal(size=(n, p))
    x[:, 1] = 0.95 * x[:, 0] + np.sqrt(1 - 0.95**2) * rng.normal(size=n)  # feature 1: an LD partner of causal 0
    x[:, 5] = 0.95 * x[:, 4] + np.sqrt(1 - 0.95**2) * rng.normal(size=n)  # feature 5: of causal 4
    partner = np.c_[x[:, 0] - 0.7 * x[:, 4] + rng.normal(size=n), rng.normal(size=(n, r - 1))]
    loadings = 0.05 * rng.normal(size=(p, r))  # a fitted map: the causal features carry the weight, partners little
    loadings[0, 0], loadings[4, 0] = 1.0, -0.7
    names, member = units_from_labels([f"b{j // 2}" for j in range(p)])
    res = link_scores(x, partner, units={"blocks": member}, loadings=loadings, n_permutations=2000, n_boot=200,
                      seed=0)
    f = res["features"]
    xc, zc = x - x.mean(0), partner - partner.mean(0)
    similarity = np.einsum("ik,ik->", xc @ loadings, zc) / n  # centred held-out paired similarity of the map
    assert abs(f.score.sum() - similarity) <= 100 * EPS * np.abs(xc @ loadings).max() * np.abs(zc).max()
    np.testing.assert_allclose(f.score, np.einsum("jk,jk->j", xc.T @ zc / n, loadings), rtol=1e-12, atol=1e-14)
    assert set(np.argsort(-f.score)[:2]) == {0, 4}
    assert f.score[0] > 5 * f.score[1] and f.score[4] > 5 * f.score[5]  # partners: real correlation, little weight
    link = link_scores(x, partner, [1.0, 1.0, 1.0], n_permutations=200, n_boot=5, seed=0)["features"].score
    assert link[1] > 0.5 * link[0]  # the marginal link score cannot tell them apart
    assert set(np.flatnonzero(f.qvalue <= 0.05)) >= {0, 4}
    assert (f.ci_low[[0, 4]] <= f.score[[0, 4]]).all() and (f.score[[0, 4]] <= f.ci_high[[0, 4]]).all()
    np.testing.assert_allclose(res["blocks"].score, f.score.reshape(-1, 2).mean(axis=1), rtol=1e-12, atol=1e-15)
    draw = np.random.default_rng(0)  # bootstrap: the same draws as an explicit resample of the rows
    boot = []
    for _ in range(200):
        i = draw.integers(0, n, n)
        xi, zi = x[i] - x[i].mean(0), partner[i] - partner[i].mean(0)
        boot.append(np.einsum("jk,jk->j", xi.T @ zi / n, loadings))
    low, high = np.quantile(np.array(boot).T, [0.025, 0.975], axis=1)
    np.testing.assert_allclose(f.ci_low, low, atol=1e-6 * np.abs(low).max())  # float32 draws
    np.testing.assert_allclose(f.ci_high, high, atol=1e-6 * np.abs(high).max())


def test_contributions_under_the_null_hold_their_level() -> None:
    pvalues, hits = [], 0
    for seed in range(20):
        rng = np.random.default_rng(200 + seed)
        x, partner, loadings = rng.normal(size=(60, 30)), rng.normal(size=(60, 3)), rng.normal(size=(30, 3))
        res = link_scores(x, partner, loadings=loadings, n_permutations=2000, n_boot=5, seed=seed, fdr=0.05)
        res = res["features"]
        pvalues.append(res.pvalue)
        hits += bool((res.qvalue <= 0.05).any())
    pvalues = np.concatenate(pvalues)
    for a in (0.05, 0.2, 0.5):  # one-sided permutation p-values: P(p <= a) <= a (binomial 99.9 % band)
        assert abs((pvalues <= a).mean() - a) <= 3.3 * np.sqrt(a * (1 - a) / len(pvalues))
    assert hits <= 3
    with pytest.raises(AlignmentInputError, match=r"loadings: expected \[30, 3\]"):
        link_scores(x, partner, loadings=loadings[:5])


@pytest.mark.parametrize("contribution", [False, True])
def test_ties_of_discrete_data_count_exactly_through_the_float32_null(monkeypatch: pytest.MonkeyPatch,
                                                                     contribution: bool) -> None:
    from alignment import attribution

    calls = []
    exact = attribution._exact
    monkeypatch.setattr(attribution, "_exact", lambda *a: calls.append(1) or exact(*a))
    rng = np.random.default_rng(5)
    n, p = 40, 30
    x = rng.integers(0, 3, size=(n, p))  # dosages and a binary partner: permuted scores tie exactly
    partner = rng.integers(0, 2, size=(n, 2))
    loadings = rng.integers(-2, 3, size=(p, 2)) if contribution else None
    names, member = units_from_labels([f"b{j // 3}" for j in range(p)])
    res = link_scores(x.astype(float), partner.astype(float), [1.0, 1.0], {"blocks": member}, n_permutations=500,
                      n_boot=3, seed=2, stop_after=0, loadings=None if loadings is None else loadings.astype(float))
    # the reference in exact integer arithmetic: n^2 cov = n sum xz - sum x sum z; the link score's comparison
    # multiplied by its positive denominators (the partner's variances do not change under permutation)
    vx = n * (x**2).sum(0) - x.sum(0) ** 2
    vz = n * (partner**2).sum(0) - partner.sum(0) ** 2

    def exact_scores(z: np.ndarray) -> list[int]:
        c = [[int(n * x[:, j] @ z[:, k] - x[:, j].sum() * z[:, k].sum()) for k in range(2)] for j in range(p)]
        if contribution:
            return [sum(int(loadings[j, k]) * c[j][k] for k in range(2)) for j in range(p)]
        return [c[j][0] ** 2 * int(vz[1]) + c[j][1] ** 2 * int(vz[0]) for j in range(p)]

    def unit_scores(score: list[int]) -> list[object]:
        if contribution:
            return [sum(score[j] for j in range(3 * b, 3 * b + 3)) for b in range(len(names))]
        from fractions import Fraction
        return [sum(Fraction(score[j], int(vx[j])) for j in range(3 * b, 3 * b + 3)) for b in range(len(names))]

    draw = np.random.default_rng(2)
    for _ in range(3):
        draw.integers(0, n, n)
    obs = exact_scores(partner)
    obs_u = unit_scores(obs)
    hits, unit_hits, ties = np.zeros(p), np.zeros(len(names)), 0
    for _ in range(500):
        null = exact_scores(partner[draw.permutation(n)])
        ties += sum(a == b for a, b in zip(null, obs))
        hits += [a >= b for a, b in zip(null, obs)]
        unit_hits += [a >= b for a, b in zip(unit_scores(null), obs_u)]
    assert ties > 100 and calls  # exact ties happened, and the float32 bound sent them to float64
    np.testing.assert_array_equal(res["features"].pvalue, (1 + hits) / 501)
    np.testing.assert_array_equal(res["blocks"].pvalue, (1 + unit_hits) / 501)
