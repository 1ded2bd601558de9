"""`brainmm.train.pretrain_eval`: the interpolation baseline and the masked-reconstruction metrics against
scikit-learn and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainmm.train.pretrain_eval import interpolate_masked, masked_sums, metrics_from_sums


def test_interpolation_baseline_fills_spans_linearly_and_holds_edges():
    signal = torch.tensor([[[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]], [[7.0, 7.0, 7.0, 7.0, 7.0, 7.0]]])
    masked = torch.tensor([[[True, False, True, True, False, True]], [[True] * 6]])
    signal[0, 0, [2, 3]] = 99.0  # hidden values must not leak into the interpolation
    out = interpolate_masked(signal, masked, fallback=torch.tensor([-1.0]))
    assert out[0, 0].tolist() == [1.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    assert out[1, 0].tolist() == [-1.0] * 6



def test_metrics_match_sklearn_and_scipy_and_r2_is_unclipped():
    from scipy.stats import pearsonr
    from sklearn.metrics import r2_score

    gen = torch.Generator().manual_seed(0)
    signal = torch.randn(3, 4, 10, generator=gen)
    pred = -signal + 0.1 * torch.randn(3, 4, 10, generator=gen)  # anti-correlated: R^2 well below 0
    masked = torch.rand(3, 4, 10, generator=gen) < 0.4
    sums = masked_sums(signal[:2], pred[:2], masked[:2], torch.zeros(4))
    sums += masked_sums(signal[2:], pred[2:], masked[2:], torch.zeros(4))
    m = metrics_from_sums(sums)
    y, p = signal[masked].double().numpy(), pred[masked].double().numpy()  # float64 references
    # the metrics come from float64 sums of n terms: relative error <= n eps64 (gamma_n) times a small
    # conditioning factor (r2 and the MSEs have no cancellation here), on any CPU
    tol = float(64 * len(y) * np.finfo(np.float64).eps)
    assert m["masked_mse"] == pytest.approx(float(((p - y) ** 2).mean()), rel=tol)
    assert m["masked_mae"] == pytest.approx(float(np.abs(p - y).mean()), rel=tol)
    assert m["r2"] == pytest.approx(r2_score(y, p), rel=tol) and m["r2"] < -1
    assert m["r2_clipped"] == 0.0
    assert m["pearson_r"] == pytest.approx(pearsonr(y, p).statistic, rel=1e-5)
    assert m["baseline_mean_mse"] == pytest.approx(float((y**2).mean()), rel=tol)
