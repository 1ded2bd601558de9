"""Native CLIP/SigLIP losses (open_clip semantics) and the pytorch-metric-learning adapters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alignment import (
    AlignmentInputError,
    AlignmentLoss,
    AlignmentOutput,
    ClipLoss,
    LossConfig,
    SigLipLoss,
    create_loss,
)


def _features(n: int = 6, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=gen), dim=-1), F.normalize(torch.randn(n, d, generator=gen), dim=-1))


def _ce_rows(logits: torch.Tensor) -> float:
    """Mean over rows of -log softmax at the diagonal, written out by hand."""
    total = 0.0
    for i, row in enumerate(logits.tolist()):
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
    return total / len(logits)


def test_clip_loss_equals_hand_computed_symmetric_ce_on_3x3() -> None:
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    g = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    scale = 2.0
    sims = (scale * b @ g.T).tolist()
    expected = 0.5 * (_ce_rows(torch.tensor(sims)) + _ce_rows(torch.tensor(sims).T))
    assert ClipLoss()(b, g, torch.tensor(scale)).item() == pytest.approx(expected, rel=1e-6)
    alpha = 0.75  # ContIG weighting
    weighted = alpha * _ce_rows(torch.tensor(sims)) + (1 - alpha) * _ce_rows(torch.tensor(sims).T)
    assert ClipLoss(alpha=alpha)(b, g, torch.tensor(scale)).item() == pytest.approx(weighted, rel=1e-6)


def test_perfect_alignment_gives_zero_loss() -> None:
    eye = torch.eye(4)
    assert ClipLoss()(eye, eye, torch.tensor(100.0)).item() < 1e-30
    assert SigLipLoss()(eye, eye, torch.tensor(100.0), torch.tensor(-50.0)).item() < 1e-20


def test_labels_are_cached_per_size() -> None:
    loss = ClipLoss()
    b, g = _features(5)
    loss(b, g, torch.tensor(10.0))
    cached = loss._arange(5, 0, b.device)
    assert loss._arange(5, 0, b.device) is cached and loss._arange(4, 0, b.device) is not cached


def test_pml_ntxent_configuration_reproduces_clip_at_fixed_temperature() -> None:
    from pytorch_metric_learning.losses import NTXentLoss

    from alignment.pml import pml_clip_loss

    b, g = _features(8, 16)
    tau = 0.07
    native = ClipLoss()(b, g, torch.tensor(1 / tau)).item()
    ntxent = NTXentLoss(temperature=tau)
    labels = torch.arange(8)
    reference = 0.5 * (ntxent(b, labels, ref_emb=g, ref_labels=labels.clone())
                       + ntxent(g, labels, ref_emb=b, ref_labels=labels.clone()))
    assert reference.item() == pytest.approx(native, abs=1e-5)
    assert pml_clip_loss(b, g, tau).item() == pytest.approx(native, abs=1e-5)


def test_shared_label_tensor_pitfall_is_guarded() -> None:
    from pytorch_metric_learning.losses import NTXentLoss

    from alignment.pml import cross_modal

    b, g = _features(6)
    tau = 0.1
    labels = torch.arange(6)
    one_direction = F.cross_entropy(b @ g.T / tau, labels).item()
    ntxent = NTXentLoss(temperature=tau)
    # PML treats `ref_labels is labels` as one set and removes the diagonal: the positives disappear
    assert ntxent(b, labels, ref_emb=g, ref_labels=labels).item() != pytest.approx(one_direction, abs=1e-3)
    assert cross_modal(ntxent, b, labels, g, labels).item() == pytest.approx(one_direction, abs=1e-5)


def test_multi_positive_clip_equals_pml_supcon() -> None:
    from alignment.pml import SupConPairLoss

    b, g = _features(8)
    subjects = torch.tensor([3, 3, 5, 7, 7, 7, 9, 11])  # several recordings per subject
    tau = 0.1
    native = ClipLoss()(b, g, torch.tensor(1 / tau), labels=subjects)
    supcon = SupConPairLoss(temperature=tau)(b, g, labels=subjects)
    assert native.item() == pytest.approx(supcon.item(), abs=1e-5)
    unique = torch.arange(8) * 2
    assert ClipLoss()(b, g, torch.tensor(1 / tau), labels=unique).item() == pytest.approx(
        ClipLoss()(b, g, torch.tensor(1 / tau)).item(), abs=1e-6)


@pytest.mark.parametrize("loss_cls", [ClipLoss, SigLipLoss])
def test_mask_equals_subsetting_and_masked_rows_get_no_gradient(loss_cls) -> None:
    b, g = _features(7)
    b.requires_grad_(True)
    g.requires_grad_(True)
    mask = torch.tensor([True, False, True, True, False, True, True])
    scale, bias = torch.tensor(5.0), torch.tensor(-2.0)
    masked = loss_cls()(b, g, scale, bias, mask=mask)
    subset = loss_cls()(b[mask], g[mask], scale, bias)
    assert masked.item() == pytest.approx(subset.item(), rel=1e-6)
    masked.backward()
    assert torch.all(g.grad[~mask] == 0) and torch.all(b.grad[~mask] == 0) and g.grad[mask].abs().sum() > 0


def test_siglip_matches_its_formula_and_init() -> None:
    b, g = _features(5)
    cfg = LossConfig(kind="siglip")
    scale, bias = math.exp(cfg.logit_scale_init()), cfg.logit_bias_init()
    assert scale == pytest.approx(10.0) and bias == -10.0
    logits = scale * b @ g.T + bias
    signs = 2 * torch.eye(5) - 1
    expected = -F.logsigmoid(signs * logits).sum() / 5
    got = create_loss(cfg)(b, g, torch.tensor(scale), torch.tensor(bias))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_batch_of_one_and_bad_shapes_are_clear_errors() -> None:
    b, g = _features(1)
    for loss in (ClipLoss(), SigLipLoss()):
        with pytest.raises(AlignmentInputError, match="batch of 1 pair has no negatives"):
            loss(b, g, torch.tensor(10.0))
    b, g = _features(4)
    with pytest.raises(AlignmentInputError, match=r"same \[B, D\] shape"):
        ClipLoss()(b, g[:3], torch.tensor(10.0))
    with pytest.raises(AlignmentInputError, match="labels of shape"):
        ClipLoss()(b, g, torch.tensor(10.0), labels=torch.arange(3))


@pytest.mark.parametrize(
    "cfg, message",
    [(LossConfig(kind="siglip", alpha=0.7), "symmetric"), (LossConfig(alpha=1.5), r"loss.alpha"),
     (LossConfig(init_logit_bias=-10.0), "only SigLIP"), (LossConfig(kind="supcon", init_logit_scale=1.0), "fixed")],
)
def test_loss_config_errors(cfg: LossConfig, message: str) -> None:
    with pytest.raises(AlignmentInputError, match=message):
        create_loss(cfg)


def test_multimodal_loss_is_the_mean_of_masked_terms() -> None:
    b, g1 = _features(6, seed=1)
    _, g2 = _features(6, seed=2)
    scale = torch.tensor(8.0)
    mask2 = torch.tensor([True, True, False, True, False, True])
    out = AlignmentOutput(b, {"dna": g1, "genotype": g2}, scale)
    loss = AlignmentLoss(LossConfig(), ["dna", "genotype"])
    res = loss(out, masks={"genotype": mask2})
    expected = 0.5 * (ClipLoss()(b, g1, scale) + ClipLoss()(b[mask2], g2[mask2], scale))
    assert res.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(res.terms) == {"dna", "genotype"}
    absent = torch.zeros(6, dtype=torch.bool)  # a modality missing from the whole batch contributes zero
    g2 = g2.clone().requires_grad_(True)
    res = loss(AlignmentOutput(b, {"dna": g1, "genotype": g2}, scale), masks={"genotype": absent})
    assert res.terms["genotype"].item() == 0.0
    res.loss.backward()
    assert torch.all(g2.grad == 0)


def test_cross_batch_memory_queues_keys_and_checkpoints_its_position() -> None:
    from alignment.pml import CrossBatchMemoryPairLoss

    cfg = LossConfig(kind="xbm", temperature=0.1, memory_size=16)
    loss = create_loss(cfg, embed_dim=8)
    assert isinstance(loss, CrossBatchMemoryPairLoss)
    b1, g1 = _features(4, seed=1)
    b2, g2 = _features(4, seed=2)
    with pytest.raises(AlignmentInputError, match="unique over the whole run"):
        loss(b1, g1)
    first = loss(b1, g1, labels=torch.arange(4))
    assert first.item() == pytest.approx(ClipLoss()(b1, g1, torch.tensor(10.0)).item(), abs=1e-5)
    state = loss.state_dict()
    second = loss(b2, g2, labels=torch.arange(4, 8))  # the queue now also holds batch 1's keys
    fresh = create_loss(cfg, embed_dim=8)
    assert second.item() != pytest.approx(fresh(b2, g2, labels=torch.arange(4, 8)).item(), abs=1e-4)
    restored = create_loss(cfg, embed_dim=8)
    restored.load_state_dict(state)
    assert restored.brain_to_genetics.queue_idx == 4
    assert restored(b2, g2, labels=torch.arange(4, 8)).item() == pytest.approx(second.item(), abs=1e-6)


def test_distributed_wrapper_refuses_efficient_with_ref_emb() -> None:
    from pytorch_metric_learning.losses import NTXentLoss

    from alignment.pml import SafeDistributedLossWrapper

    b, g = _features(4)
    wrapper = SafeDistributedLossWrapper(NTXentLoss(), efficient=True)
    with pytest.raises(AlignmentInputError, match="efficient=True"):
        wrapper(b, torch.arange(4), ref_emb=g, ref_labels=torch.arange(4))
