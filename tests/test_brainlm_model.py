"""BrainLM behaviour on tiny random models: encode, pooling, fixes of the original, init, checkpointing, bad input."""

from __future__ import annotations

import copy
import json
import math
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from encoders.brainlm import (
    BrainLMConfig,
    BrainLMForPretraining,
    BrainLMModel,
    BrainLMViTForPretraining,
    onednn,
    sort_parcels_by_y,
    vit_preprocess,
)
from encoders.brainlm.layers import BrainLMLayer, sequence_conv, sinusoidal_table
from encoders.brainlm.testing import random_brainlm_inputs, tiny_brainlm_config, tiny_vit_config
from encoders.brainlm.vit import data_patches
from encoders.errors import EncoderInputError


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = tiny_brainlm_config()
    model = BrainLMForPretraining(config).eval()
    return model, *random_brainlm_inputs(config)


# ------------------------------------------------------------------------------------------------------ encode

def test_encode_is_deterministic_natural_order_and_ignores_mask_ratio(tiny):
    model, signal, xyz = tiny
    model = copy.deepcopy(model).train()  # train mode: dropout must still be off in encode
    torch.manual_seed(1)
    a = model.encode(signal, xyz)
    torch.manual_seed(2)
    b = model.encode(signal, xyz)
    model.config.mask_ratio = 0.9
    c = model.encode(signal, xyz)
    assert torch.equal(a, b) and torch.equal(a, c)
    # == the original recipe for an unmasked natural-order embedding: mask_ratio 0 with noise = arange(L)
    model.eval().config.mask_ratio = 0.0
    length = signal.shape[1] * signal.shape[2] // model.config.timepoint_patching_size
    with torch.no_grad():
        ref = model.vit(signal, xyz, noise=torch.arange(length, dtype=torch.float32).expand(2, -1))
    torch.testing.assert_close(a, ref.last_hidden_state[:, 0])


def test_encode_pooling_shapes_and_meaning(tiny):
    model, signal, xyz = tiny
    cfg = model.config
    patches = signal.shape[2] // cfg.timepoint_patching_size
    with torch.no_grad():
        cls, tokens = model.encode(signal, xyz, pooling="cls", return_tokens=True)
        mean = model.encode(signal, xyz, pooling="mean")
        tv = model.encode(signal, xyz, pooling="time_then_voxel")
        encoder_only = BrainLMModel(cfg)
        encoder_only.load_state_dict(model.vit.state_dict())
        same = encoder_only.eval().encode(signal, xyz)
    assert cls.shape == mean.shape == tv.shape == (2, cfg.hidden_size)
    assert tokens.shape == (2, cfg.num_brain_voxels, patches, cfg.hidden_size)
    torch.testing.assert_close(mean, tokens.mean(dim=(1, 2)))
    torch.testing.assert_close(tv, tokens.mean(dim=2).mean(dim=1))
    torch.testing.assert_close(same, cls)
    assert not torch.allclose(cls, mean)
    with pytest.raises(EncoderInputError, match="pooling"):
        model.encode(signal, xyz, pooling="max")


def test_encode_is_order_sensitive_through_the_conv(tiny):
    """Permuting parcels must change the embedding (the conv mixes sequence neighbours), unless K = None."""
    model, signal, xyz = tiny
    perm = torch.randperm(signal.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(model.encode(signal, xyz), model.encode(signal[:, perm], xyz[:, perm]), atol=1e-4)
        no_conv = BrainLMForPretraining(tiny_brainlm_config(conv_kernel_size=None)).eval()
        torch.testing.assert_close(no_conv.encode(signal, xyz), no_conv.encode(signal[:, perm], xyz[:, perm]))


# ---------------------------------------------------------------------------------------- fixes of the original

def test_return_dict_false_gives_the_same_tuple(tiny):
    model, signal, xyz = tiny
    noise = torch.rand(2, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(signal, xyz, noise=noise)
        tup = model(signal, xyz, noise=noise, return_dict=False)
        enc = model.vit(signal, xyz, noise=noise, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 5
    for a, b in zip(tup, (out.loss, out.logits, out.mask, out.ids_restore, out.latent)):
        assert torch.equal(a, b)
    assert isinstance(enc, tuple) and torch.equal(enc[0], out.latent) and torch.equal(enc[2], out.ids_restore)
    # ids_restore is returned and consistent with the noise
    assert torch.equal(out.ids_restore, torch.argsort(torch.argsort(noise, 1), 1))


def test_decoder_width_may_differ_from_encoder_width():
    torch.manual_seed(0)
    cfg = tiny_brainlm_config(hidden_size=32, decoder_hidden_size=16, decoder_num_attention_heads=4)
    model = BrainLMForPretraining(cfg)
    assert model.decoder.decoder_xyz_projection.weight.shape == (16, 3)
    assert model.decoder.pos_embedding.pe.shape == (5000, 16)
    signal, xyz = random_brainlm_inputs(cfg)
    out = model(signal, xyz)
    out.loss.backward()
    assert out.logits.shape == (2, 12, 4, 10) and torch.isfinite(out.loss)
    assert model.vit.embeddings.cls_token.grad is not None


def test_mask_ratio_zero_gives_finite_loss_over_all_tokens(tiny):
    model, signal, xyz = tiny
    model = BrainLMForPretraining(tiny_brainlm_config(mask_ratio=0.0, loss_fn="mae")).eval()
    with torch.no_grad():
        out = model(signal, xyz)
    assert out.mask.sum() == 0 and out.latent.shape[1] == 1 + 48
    torch.testing.assert_close(out.loss, (out.logits - signal.view_as(out.logits)).abs().mean())


def test_loss_is_over_masked_tokens_only(tiny):
    model, signal, xyz = tiny
    with torch.no_grad():
        out = model(signal, xyz)
    target = signal.view_as(out.logits)
    m = out.mask.unsqueeze(-1).expand_as(target)
    assert out.mask.sum() == 2 * 24  # int(48 * 0.5) kept per sample
    torch.testing.assert_close(out.loss, ((out.logits - target).square() * m).sum() / m.sum())


@pytest.mark.parametrize("loss_fn,layers", [("mse", 1), ("mae", 2)])
def test_loss_only_computes_masked_tokens_with_the_same_loss_and_gradients(loss_fn, layers):
    """The training step's path (the decoder's last layer on the masked tokens only) against the full forward, in
    float64 and training mode (PE dropout on, seeded alike): both are the same function, so they agree to a few
    fp64 ulps."""
    torch.manual_seed(0)
    config = tiny_brainlm_config(loss_fn=loss_fn, decoder_num_hidden_layers=layers, hidden_dropout_prob=0.0)
    full = BrainLMForPretraining(config).double().train()
    fast = copy.deepcopy(full)
    signal, xyz = random_brainlm_inputs(config)
    signal, xyz = signal.double(), xyz.double()
    noise = torch.rand(2, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rows = []
    fast.decoder.decoder_layers[-1].register_forward_hook(lambda m, args, out: rows.append(out.shape[1]))
    torch.manual_seed(7)
    a = full(signal, xyz, noise=noise)
    torch.manual_seed(7)
    b = fast(signal, xyz, noise=noise, loss_only=True)
    assert rows == [24] and b.logits is None  # 48 - int(48 * 0.5) masked tokens per sample, no logits
    assert torch.equal(a.mask, b.mask) and torch.equal(a.latent, b.latent)
    eps = torch.finfo(torch.float64).eps
    assert abs(a.loss.item() - b.loss.item()) <= 64 * eps * a.loss.item()
    a.loss.backward()
    b.loss.backward()
    ref = dict(full.named_parameters())
    for name, p in fast.named_parameters():
        scale = ref[name].grad.abs().max().item()
        assert (p.grad - ref[name].grad).abs().max().item() <= 1e3 * eps * max(scale, 1e-3), name


def test_loss_only_with_nothing_masked_is_the_full_loss():
    torch.manual_seed(0)
    model = BrainLMForPretraining(tiny_brainlm_config(mask_ratio=0.0)).eval()
    signal, xyz = random_brainlm_inputs(model.config)
    noise = torch.rand(2, 48, generator=torch.Generator().manual_seed(1))  # the same token order in both calls
    with torch.no_grad():
        a, b = model(signal, xyz, noise=noise), model(signal, xyz, noise=noise, loss_only=True)
    assert torch.equal(a.loss, b.loss) and b.logits is not None


# ------------------------------------------------------------------------------------------------ training

@pytest.mark.parametrize("onednn_attention", [False, True])
def test_gradient_checkpointing_covers_encoder_and_decoder_with_equal_gradients(tiny, monkeypatch, onednn_attention):
    model, signal, xyz = tiny
    if onednn_attention:  # the tiny heads (16) are below MIN_HEAD_DIM: force the blockwise oneDNN attention on
        monkeypatch.setattr(onednn, "KERNELS", "onednn")
        monkeypatch.setattr(onednn, "MIN_HEAD_DIM", 1)
        monkeypatch.setattr(onednn, "BLOCK", 16)
    noise = torch.rand(2, 48, generator=torch.Generator().manual_seed(4))

    def grads(m):
        m.train().zero_grad()
        torch.manual_seed(5)  # same PE-dropout draws in both runs
        m(signal, xyz, noise=noise).loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    plain, ckpt = copy.deepcopy(model), copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames it activation_checkpointing_enable
        ckpt.gradient_checkpointing_enable()
    layers = [m for m in ckpt.modules() if isinstance(m, BrainLMLayer)]
    assert len(layers) == 3 and all(m.gradient_checkpointing for m in layers)
    calls = []  # the recompute calls the layer's forward directly, so count its attention sub-module instead
    hooks = [m.attention.self.register_forward_pre_hook(lambda mod, args: calls.append(mod)) for m in layers]
    g_ckpt = grads(ckpt)
    for h in hooks:
        h.remove()
    assert len(calls) == 2 * len(layers)  # every layer (2 encoder + 1 decoder) re-ran in the backward pass
    g_plain = grads(plain)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], atol=1e-6, rtol=1e-5)


def test_sequence_conv_and_its_gradients_match_float64_conv2d():
    """K = 65 over 300 tokens: the shape where oneDNN's fp32 Conv2d weight gradient is wrong in torch 2.13."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 300, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 65, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(v.transpose(1, 2), w.view(3, 1, 65, 1), padding=(32, 0), groups=3).transpose(1, 2)
    go = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref_v, ref_w = torch.autograd.grad(ref, (v, w), go)
    v32, w32 = v.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    out = sequence_conv(v32, w32)
    got_v, got_w = torch.autograd.grad(out, (v32, w32), go.float())
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got_v.double(), ref_v, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got_w.double(), ref_w, atol=1e-3, rtol=1e-5)


def test_fresh_init_follows_the_original_rule_and_trains():
    torch.manual_seed(0)
    cfg = tiny_brainlm_config(hidden_size=64, decoder_hidden_size=64, intermediate_size=128,
                              decoder_intermediate_size=128, num_attention_heads=4, decoder_num_attention_heads=4)
    model = BrainLMForPretraining(cfg)
    enc_w = model.vit.encoder.layer[0].attention.self.query.weight
    assert abs(enc_w.std().item() - 0.02) < 0.003
    dec_w = model.decoder.decoder_layers[0].intermediate.dense.weight  # xavier: U(+-sqrt(6 / (64 + 128)))
    bound = math.sqrt(6 / (64 + 128))
    assert dec_w.abs().max() <= bound and dec_w.abs().max() > 0.9 * bound
    assert model.decoder.decoder_embed.bias.abs().max() == 0 and model.vit.encoder.layer[0].output.dense.bias.abs().max() == 0
    ln = model.vit.encoder.layer[0].output.LayerNorm
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and ln.bias.abs().max() == 0
    assert 0.01 < model.vit.embeddings.cls_token.std() < 0.03 and 0.01 < model.decoder.mask_token.std() < 0.03
    assert torch.equal(model.vit.embeddings.pos_embedding.pe, sinusoidal_table(5000, 64))
    conv = model.decoder.decoder_layers[0].attention.self.conv.weight  # PyTorch default: U(+-1/sqrt(fan_in))
    assert conv.abs().max() <= 1 / math.sqrt(9) and conv.std() > 0.1
    # it learns: a few Adam steps on one batch lower the masked loss a lot
    signal, xyz = random_brainlm_inputs(cfg, batch=4, seed=1)
    signal = signal.cumsum(-1) / 5  # smooth, learnable signals
    noise = torch.rand(4, 48, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.eval()
    losses = []
    for _ in range(80):
        loss = model(signal, xyz, noise=noise).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# -------------------------------------------------------------------------------------------- save / load

def test_save_load_round_trip(tiny, tmp_path):
    model, signal, xyz = tiny
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "brainlm_mae" and saved["num_brain_voxels"] == 12
    loaded = BrainLMForPretraining.from_pretrained(tmp_path)
    assert set(loaded.state_dict()) == set(model.state_dict())
    noise = torch.rand(2, 48, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a, b = model(signal, xyz, noise=noise), loaded(signal, xyz, noise=noise)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    assert BrainLMConfig.from_pretrained(tmp_path).conv_kernel_size == 9
    model.save_pretrained(tmp_path / "hub_layout" / "old_13M")  # the HF repo keeps checkpoints in subfolders
    assert BrainLMForPretraining.from_pretrained(tmp_path / "hub_layout", subfolder="old_13M").config.hidden_size == 32


def test_vit_save_load_round_trip_and_encode(tmp_path):
    torch.manual_seed(0)
    model = BrainLMViTForPretraining(tiny_vit_config()).eval()
    signal = torch.randn(2, 424, 200)
    model.save_pretrained(tmp_path)
    loaded = BrainLMViTForPretraining.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.manual_seed(1)
        a = model.encode(signal, pooling="mean")
        torch.manual_seed(2)
        b = loaded.encode(signal, pooling="mean")
        cls, tokens = loaded.encode(signal, return_tokens=True)
        model.config.mask_ratio = 0.0
        out = model(signal)
    torch.testing.assert_close(a, b)
    assert data_patches(16).sum() == 351 and data_patches(14).sum() == 465
    torch.testing.assert_close(a, tokens[:, data_patches(16)].mean(dim=1))
    assert cls.shape == (2, 24) and tokens.shape == (2, 729, 24)
    assert torch.isfinite(out.loss) and out.mask.sum() == 0  # fixed: no 0/0 at mask ratio 0


# --------------------------------------------------------------------------------------------- preprocessing

def test_sort_parcels_by_y_is_stable_like_python_sorted():
    y = torch.tensor([3.0, -1.0, 3.0, 0.0, -1.0, 3.0, 2.0])
    assert sort_parcels_by_y(y).tolist() == sorted(range(7), key=lambda k: y[k].item())
    signal = torch.arange(14.0).view(1, 7, 2)
    out = vit_preprocess(signal, y.numpy())
    torch.testing.assert_close(out, signal[:, [1, 4, 3, 6, 0, 2, 5]] / 5.6430855)
    assert torch.equal(vit_preprocess(signal, y, scale=None), signal[:, [1, 4, 3, 6, 0, 2, 5]])
    with pytest.raises(EncoderInputError, match="V = 7"):
        vit_preprocess(torch.zeros(1, 6, 2), y)


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize(
    ("signal_shape", "xyz_shape", "poison", "match"),
    [
        ((2, 11, 40), (2, 11, 3), None, "num_brain_voxels=12"),
        ((2, 12, 35), (2, 12, 3), None, "multiple of timepoint_patching_size=10"),
        ((2, 12, 40), (2, 12, 2), None, r"xyz_vectors must have shape \[B, V, 3\]"),
        ((2, 12, 40), (12, 3), None, "xyz_vectors must have 3 dimensions"),
        ((2, 12, 40), (2, 12, 3), float("nan"), "signal_vectors contains 1 NaN/Inf"),
        ((2, 12, 40), (2, 12, 3), float("inf"), "signal_vectors contains 1 NaN/Inf"),
        ((12, 40), (2, 12, 3), None, "signal_vectors must have 3 dimensions"),
    ],
)
def test_bad_inputs_raise_one_clear_error(tiny, signal_shape, xyz_shape, poison, match):
    model = tiny[0]
    signal, xyz = torch.randn(signal_shape), torch.randn(xyz_shape)
    if poison is not None:
        signal[1, 3, 7] = poison
    for call in (lambda: model(signal, xyz), lambda: model.encode(signal, xyz)):
        with pytest.raises(EncoderInputError, match=match):
            call()


def test_bad_noise_and_non_tensor_inputs(tiny):
    model, signal, xyz = tiny
    with pytest.raises(EncoderInputError, match=r"noise must be a tensor of shape \[B, L\] = \[2, 48\]"):
        model(signal, xyz, noise=torch.rand(2, 47))
    with pytest.raises(EncoderInputError, match="signal_vectors must be a torch.Tensor"):
        model.encode(signal.numpy(), xyz)
    vit = BrainLMViTForPretraining(tiny_vit_config())
    with pytest.raises(EncoderInputError, match=r"\[B, 424, 200\]"):
        vit.encode(torch.randn(1, 424, 190))
    with pytest.raises(EncoderInputError, match="pooling"):
        vit.encode(torch.randn(1, 424, 200), pooling="time_then_voxel")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_landmarks": 32}, "num_landmarks .* must equal segment_means_seq_len"),
        ({"conv_kernel_size": 8}, "positive odd integer"),
        ({"hidden_size": 34, "num_attention_heads": 4}, "divisible by num_attention_heads=4"),
        ({"loss_fn": "huber"}, "loss_fn must be one of"),
        ({"mask_ratio": 1.0}, r"mask_ratio must be in \[0, 1\)"),
        ({"hidden_act": "nope"}, "hidden_act"),
    ],
)
def test_bad_configs_are_refused(overrides, match):
    with pytest.raises(EncoderInputError, match=match):
        tiny_brainlm_config(**overrides)


def test_vit_config_checks():
    with pytest.raises(EncoderInputError, match="patch_size must be 16 or 14"):
        BrainLMViTForPretraining(tiny_vit_config(patch_size=8))
    cfg = tiny_vit_config(image_size=224)
    cfg.train_mode = "predict_last"
    with pytest.raises(EncoderInputError, match="train_mode"):
        BrainLMViTForPretraining(cfg)
    assert BrainLMViTForPretraining(tiny_vit_config(image_size=224, patch_size=14)).config.image_size == 434


def test_bad_checkpoint_folders(tiny, tmp_path):
    model = tiny[0]
    with pytest.raises(EncoderInputError, match="does not exist"):
        BrainLMForPretraining.from_pretrained(tmp_path / "nope")
    good = tmp_path / "good"
    model.save_pretrained(good)

    def variant(name):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        return folder

    no_config = variant("no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(EncoderInputError, match="has no config.json"):
        BrainLMForPretraining.from_pretrained(no_config)
    no_weights = variant("no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(EncoderInputError, match="has no weights: expected one of"):
        BrainLMForPretraining.from_pretrained(no_weights)
    garbage = variant("garbage")
    (garbage / "model.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 10)
    with pytest.raises(EncoderInputError, match="not a readable safetensors file"):
        BrainLMForPretraining.from_pretrained(garbage)
    truncated = variant("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(EncoderInputError, match="safetensors"):
        BrainLMForPretraining.from_pretrained(truncated)
    bad_json = variant("bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(EncoderInputError, match="not valid JSON"):
        BrainLMForPretraining.from_pretrained(bad_json)
    mismatch = variant("mismatch")
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (mismatch / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EncoderInputError, match=r"'vit.encoder.layer.\d.(intermediate|output).dense.(weight|bias)' "
                                                r"has shape \[\d+(, \d+)?\] but the config gives \[\d+(, \d+)?\]"):
        BrainLMForPretraining.from_pretrained(mismatch)
    with pytest.raises(EncoderInputError, match="model_type 'brainlm_mae', expected 'vit_mae'"):
        BrainLMViTForPretraining.from_pretrained(good)
    encoder_only = tmp_path / "encoder_only"
    model.vit.save_pretrained(encoder_only)
    with pytest.raises(EncoderInputError, match="lacks .* weight"):
        BrainLMForPretraining.from_pretrained(encoder_only)
    encoder = BrainLMModel.from_pretrained(encoder_only)
    assert torch.equal(encoder.layernorm.weight, model.vit.layernorm.weight)
    extra = variant("extra_decoder_layer")  # a deeper decoder than the config: refused, not silently dropped
    cfg = json.loads((extra / "config.json").read_text())
    cfg["decoder_num_hidden_layers"] = 0
    (extra / "config.json").write_text(json.dumps(cfg))
    model_less, info = BrainLMForPretraining.from_pretrained(extra, output_loading_info=True)
    assert any(k.startswith("decoder.decoder_layers.0.") for k in info["unexpected_keys"])
    bad_pickle = variant("bad_pickle")
    (bad_pickle / "model.safetensors").unlink()
    (bad_pickle / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(EncoderInputError, match="weights_only=True"):
        BrainLMForPretraining.from_pretrained(bad_pickle)
