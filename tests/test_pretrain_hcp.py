"""Acceptance on real data: a small BrainLM pretrained briefly on the 5 HCP-sample training subjects beats the
per-parcel-mean predictor on the 2 held-out subjects (val + test); whether it also beats linear interpolation is
printed (it does, by a wide margin, with configs/pretrain_hcp_sample.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainmm.config import load_config
from brainmm.train.pretrain import PretrainConfig, run_pretrain

REPO = Path(__file__).resolve().parents[1]


def _pooled(metrics: dict[str, dict[str, float]], key: str) -> float:
    """MSE over the masked values of val and test together."""
    n = {s: metrics[s]["num_masked_values"] for s in ("val", "test")}
    return sum(metrics[s][key] * n[s] for s in n) / sum(n.values())


@pytest.mark.slow
def test_small_brainlm_beats_the_mean_predictor_on_held_out_hcp_subjects(sample_data_dir: Path, mlflow_uri: str,
                                                                          tmp_path: Path):
    import mlflow

    from brainmm.data.fmri.sample import fetch_hcp_sample

    dataset = fetch_hcp_sample(sample_data_dir)
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain_hcp_sample.yaml",
                      [f"data.dataset={dataset}", f"output_dir={tmp_path / 'run'}", "eval.every=0"])
    result = run_pretrain(cfg)  # on one torch thread (conftest): faster than two spinning ones on 2 shared cores

    m = result.metrics
    assert {s: m[s]["num_windows"] for s in ("val", "test")} == {"val": 6.0, "test": 6.0}  # 1200 TRs / 200
    model, mean, interp = (_pooled(m, k) for k in ("masked_mse", "baseline_mean_mse", "baseline_interp_mse"))
    print(f"\nheld-out masked MSE (val + test, {cfg.train.max_steps} steps): BrainLM {model:.4f}, "
          f"per-parcel mean {mean:.4f}, linear interpolation {interp:.4f}; "
          f"beats interpolation: {model < interp}")
    for split in ("val", "test"):
        print(f"  {split}: BrainLM {m[split]['masked_mse']:.4f}, mean {m[split]['baseline_mean_mse']:.4f}, "
              f"interpolation {m[split]['baseline_interp_mse']:.4f}, r2 {m[split]['r2']:.3f}, "
              f"pearson r {m[split]['pearson_r']:.3f}")
    assert model < mean
    assert m["val"]["masked_mse"] < m["val"]["baseline_mean_mse"]
    assert m["test"]["masked_mse"] < m["test"]["baseline_mean_mse"]

    logged = mlflow.MlflowClient().get_run(result.run_id).data.metrics
    assert logged["pretrain/val/baseline_mean_mse"] == m["val"]["baseline_mean_mse"]
    assert {"pretrain/val/baseline_interp_mse", "pretrain/test/masked_mse", "pretrain/val/r2"} <= logged.keys()
