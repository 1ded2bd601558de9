"""`encoders.precision`: auto/fp32/bf16 resolution per device, and BrainLM under bf16 autocast (fp32 where it must)."""

from __future__ import annotations

import pytest
import torch

from alignment.losses import create_loss
from encoders import precision
from encoders.brainlm import BrainLMForPretraining
from encoders.brainlm.testing import random_brainlm_inputs, tiny_brainlm_config
from encoders.errors import EncoderInputError

BF16_U = 2.0**-8  # unit roundoff of bfloat16 (8 significand bits): every bf16 operand is within u of its fp32 value


def caps(**flags: bool) -> dict[str, object]:
    return {"architecture": "x86_64", "avx2": True, **flags}


@pytest.mark.parametrize(("flags", "expected"), [
    ({}, "fp32"),                                      # AVX2 only (e.g. an AMD Zen 3): bf16 would be emulated
    ({"avx512_f": True}, "fp32"),                      # AVX-512 without bf16 instructions
    ({"avx512_f": True, "avx512_bf16": True}, "bf16"),  # AVX512_BF16 (Zen 4, Cooper Lake)
    ({"amx_tile": True, "amx_bf16": True}, "bf16"),      # AMX (Sapphire Rapids and later)
])
def test_auto_resolves_from_the_cpu_capabilities(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: caps(**flags))
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.resolve_precision("fp32", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # explicit bf16 is honoured
    assert isinstance(precision.autocast("auto", "cpu"), torch.autocast) == (expected == "bf16")


def test_auto_on_cuda_follows_bf16_support_and_other_devices_get_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")
    assert precision.resolve_precision("auto", "cuda:0") == "fp32"
    with pytest.raises(EncoderInputError, match="Old GPU has no bfloat16"):
        precision.resolve_precision("bf16", "cuda")
    assert precision.resolve_precision("auto", "meta") == "fp32"
    with pytest.raises(EncoderInputError, match=r"precision: expected one of .*'fp16'"):
        precision.resolve_precision("fp16", "cpu")


def test_isa_summary_reads_the_flags():
    assert precision.cpu_isa(caps(avx512_f=True, avx512_bf16=True, amx_bf16=True)) == "avx2 avx512 avx512_bf16 amx_bf16"
    assert precision.cpu_isa({}) == "no avx2"
    assert precision.cpu_fast_bf16(caps(avx512_f=True)) is False


def _model(**overrides) -> BrainLMForPretraining:
    torch.manual_seed(0)
    return BrainLMForPretraining(tiny_brainlm_config(hidden_dropout_prob=0.0, **overrides)).eval()


@pytest.mark.parametrize("heads", [2, 1])  # head size 16 (SDPA) and 32; the old_13M head size 128 is the same code
def test_bf16_encode_is_close_to_float64_and_returns_float32(heads):
    model = _model(num_attention_heads=heads)
    signal, xyz = random_brainlm_inputs(model.config, batch=3)
    with torch.no_grad():
        exact = model.double().encode(signal.double(), xyz.double(), pooling="mean")
        model.float()
        fp32 = model.encode(signal, xyz, pooling="mean")
        with precision.autocast("bf16", "cpu"):
            bf16 = model.encode(signal, xyz, pooling="mean")
    assert bf16.dtype == torch.float32
    rel = lambda x: ((x.double() - exact).norm(dim=1) / exact.norm(dim=1)).max().item()  # noqa: E731
    # Bound: each layer has 6 products (q/k/v, scores, probabilities x V, conv, output, two feed-forward) whose
    # bf16-rounded operands carry a relative error <= u each; 2 layers, both operands, growth factor 4 for the
    # layer norms and the softmax -> 2 * 6 * 2 * 4 u = 96 u ~ 0.375. The fp32 path is ~1e-6 from float64, so the
    # first check shows that bf16 really ran, and the measured error (~1e-2 here) sits well inside the bound.
    assert rel(fp32) < 1e3 * torch.finfo(torch.float32).eps
    assert 10 * torch.finfo(torch.float32).eps * 1e3 < rel(bf16) < 96 * BF16_U
    cos = torch.nn.functional.cosine_similarity(bf16.double(), exact).min().item()
    assert cos > 1 - (96 * BF16_U) ** 2 / 2  # 1 - cos <= rel^2 / 2


def test_bf16_pretraining_keeps_loss_logits_and_norms_float32():
    model = _model()
    model.train()
    signal, xyz = random_brainlm_inputs(model.config, batch=2)
    noise = torch.rand(2, model.config.num_brain_voxels * 4, generator=torch.Generator().manual_seed(1))
    seen: dict[str, torch.dtype] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=name: seen.__setitem__(n, o.dtype))
             for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    with precision.autocast("bf16", "cpu"):
        out = model(signal, xyz, noise=noise)
    for h in hooks:
        h.remove()
    assert out.loss.dtype == out.logits.dtype == out.latent.dtype == torch.float32
    assert seen and set(seen.values()) == {torch.float32}, seen
    ref = model(signal, xyz, noise=noise)
    assert abs(out.loss.item() - ref.loss.item()) < 96 * BF16_U * ref.loss.item()
    out.loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_contrastive_logits_under_fp32_region_stay_float32():
    brain, genetics = torch.randn(6, 8), torch.randn(6, 8)
    captured = {}
    orig = torch.Tensor.__matmul__

    def spy(a, b):
        out = orig(a, b)
        captured.setdefault("dtype", out.dtype)
        return out

    loss_fn = create_loss(embed_dim=8)
    scale = torch.tensor(10.0)
    with precision.autocast("bf16", "cpu"):
        inner = brain @ genetics.T
        with precision.fp32():
            torch.Tensor.__matmul__ = spy
            try:
                loss = loss_fn(brain, genetics, scale)
            finally:
                torch.Tensor.__matmul__ = orig
    assert inner.dtype == torch.bfloat16  # the autocast region casts products down...
    assert captured["dtype"] == torch.float32 and loss.dtype == torch.float32  # ...the fp32 region does not
