"""oneDNN linear and blockwise attention: same values and gradients as float64 `F.linear` / SDPA."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from encoders.brainlm import BrainLMForPretraining, onednn
from encoders.brainlm.testing import random_brainlm_inputs, tiny_brainlm_config


@pytest.fixture
def counted(monkeypatch):
    """Count oneDNN products (so a test fails if the fast path is silently not taken)."""
    monkeypatch.setattr(onednn, "KERNELS", "onednn")  # the path under test, whatever this CPU's default
    calls = []
    real = onednn._nt

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(onednn, "_nt", spy)
    return calls


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def test_linear_matches_float64_values_and_gradients(counted):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 64, generator=g, requires_grad=True)
    w = torch.randn(96, 64, generator=g, requires_grad=True)
    b = torch.randn(96, generator=g, requires_grad=True)
    go = torch.randn(3, 50, 96, generator=g)
    y = onednn.linear(x, w, b)
    y.backward(go)
    assert len(counted) == 3  # forward, input gradient, weight gradient
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.linear(x64, w64, b64)
    ref.backward(go.double())
    torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-5)
    for got, want in ((x.grad, x64.grad), (w.grad, w64.grad), (b.grad, b64.grad)):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


def test_linear_and_attention_fall_back_off_the_float32_cpu_path(counted):
    x = torch.randn(4, 8, dtype=torch.float64)
    w = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(onednn.linear(x, w), x @ w.T)
    q = torch.randn(1, 6, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(onednn.attention(q, q, q), sdpa(q, q, q))
    small_heads = q.float()  # head size 4 < MIN_HEAD_DIM: SDPA's fused kernel is faster
    torch.testing.assert_close(onednn.attention(small_heads, small_heads, small_heads), sdpa(*[small_heads] * 3))
    assert counted == []
    assert onednn.use_onednn(x.float(), "linear")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.use_onednn(x.float(), "linear")


@pytest.mark.parametrize("queries", [70, 5])
def test_blockwise_attention_matches_float64_sdpa(monkeypatch, counted, queries):
    """70 keys in blocks of 16 (a partial last block); q/k/v strided views of one qkv tensor, as in the layer."""
    monkeypatch.setattr(onednn, "BLOCK", 16)
    monkeypatch.setattr(onednn, "MIN_HEAD_DIM", 8)
    g = torch.Generator().manual_seed(1)
    qkv = (3 * torch.randn(2, 70, 3, 3, 8, generator=g)).requires_grad_()
    go = torch.randn(2, queries, 3, 8, generator=g)

    def run(t):
        q, k, v = t.unbind(2)
        return q[:, :queries], k, v

    out = onednn.attention(*run(qkv))
    out.backward(go)
    assert counted
    qkv64 = qkv.detach().double().requires_grad_()
    ref = sdpa(*run(qkv64))
    ref.backward(go.double())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(qkv.grad.double(), qkv64.grad, atol=1e-4, rtol=1e-4)
    # and no less accurate than torch's own float32 SDPA on the same inputs
    qkv32 = qkv.detach().clone().requires_grad_()
    sdpa(*run(qkv32)).backward(go)
    assert (qkv.grad.double() - qkv64.grad).abs().max() <= (qkv32.grad.double() - qkv64.grad).abs().max()


def test_cls_embedding_computes_one_row_in_the_last_layer_with_equal_gradients(monkeypatch):
    """encode(pooling='cls') runs the last layer for the CLS row only: same vector and gradients as the full run."""
    torch.manual_seed(0)
    monkeypatch.setattr(onednn, "KERNELS", "onednn")
    config = tiny_brainlm_config(num_brain_voxels=40)  # 161 tokens: several attention blocks of 64
    monkeypatch.setattr(onednn, "BLOCK", 64)
    monkeypatch.setattr(onednn, "MIN_HEAD_DIM", 8)
    model = BrainLMForPretraining(config).eval()
    full = copy.deepcopy(model)
    signal, xyz = random_brainlm_inputs(config)
    rows = []
    last = model.vit.encoder.layer[-1]
    last.register_forward_hook(lambda module, args, output: rows.append(output.shape[1]))
    fast = model.encode(signal, xyz)
    slow, _ = full.encode(signal, xyz, return_tokens=True)
    assert rows == [1]
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)
    fast.square().sum().backward()
    slow.square().sum().backward()
    ref = dict(full.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is not None or ref[name].grad is not None:
            torch.testing.assert_close(p.grad, ref[name].grad, atol=1e-6, rtol=1e-4, msg=name)


def test_kernels_are_chosen_per_cpu_and_op(monkeypatch):
    import encoders.precision as precision

    # (vendor, AVX-512) -> (linear, attention): the measured winners (benchmarks/brainlm_step.md --kernel-check)
    for vendor, avx512, expected in (("GenuineIntel", True, ("torch", "torch")),
                                     ("GenuineIntel", False, ("onednn", "onednn")),
                                     ("AuthenticAMD", True, ("onednn", "torch")),
                                     ("AuthenticAMD", False, ("onednn", "onednn"))):
        monkeypatch.setattr(precision, "cpu_vendor", lambda v=vendor: v)
        monkeypatch.setattr(precision, "cpu_capabilities", lambda a=avx512: {"avx512_f": a})
        onednn._cpu_default.cache_clear()
        assert (onednn.cpu_kernels("linear"), onednn.cpu_kernels("attention")) == expected
        assert [onednn.use_onednn(torch.ones(2), op) for op in onednn.OPS] == [k == "onednn" for k in expected]
    onednn._cpu_default.cache_clear()
    monkeypatch.setattr(onednn, "KERNELS", "onednn")
    assert onednn.cpu_kernels("linear") == onednn.cpu_kernels("attention") == "onednn"
    with pytest.raises(ValueError, match="op must be one of"):
        onednn.cpu_kernels("conv")


def test_model_without_the_onednn_op_gives_the_same_outputs(monkeypatch):
    """If a torch build lacks the private oneDNN op, the layers fall back to F.linear/SDPA: both paths are as close
    to float64 as fp32 allows (the bound comes from the fp32 fallback's own error against float64, not from one
    CPU's rounding, so it holds on AVX2 and AVX-512/AMX machines alike)."""
    torch.manual_seed(0)
    monkeypatch.setattr(onednn, "KERNELS", "onednn")
    config = tiny_brainlm_config(hidden_size=128, num_attention_heads=2, decoder_hidden_size=128,
                                 decoder_num_attention_heads=2)  # heads of 64: the oneDNN attention is on
    model = BrainLMForPretraining(config).eval()
    signal, xyz = random_brainlm_inputs(config)
    noise = torch.rand(2, 48, generator=torch.Generator().manual_seed(3))
    fast = model(signal, xyz, noise=noise)
    exact = copy.deepcopy(model).double()(signal.double(), xyz.double(), noise=noise.double())
    monkeypatch.setattr(onednn, "_onednn_available", lambda: False)
    assert not onednn.use_onednn(signal, "linear")
    slow = model(signal, xyz, noise=noise)
    eps = torch.finfo(torch.float32).eps
    for name in ("logits", "latent"):
        ref = getattr(exact, name)
        scale = ref.abs().max().item()
        slow_err = (getattr(slow, name).double() - ref).abs().max().item()
        fast_err = (getattr(fast, name).double() - ref).abs().max().item()
        assert slow_err < 1e3 * eps * scale, (name, slow_err)  # the fallback itself is a sound fp32 computation
        assert fast_err <= 4 * slow_err + 16 * eps * scale, (name, fast_err, slow_err)
