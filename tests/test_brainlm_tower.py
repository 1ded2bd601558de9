"""BrainLMTower (both architectures): preprocessing, trainable modes, LoRA, checkpointing, saving what changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from alignment.losses import ClipLoss
from encoders.brainlm import BrainLMForPretraining, BrainLMViTForPretraining, vit_preprocess
from encoders.brainlm.finetune import TENSORS, load_finetuned, load_tower, save_finetuned, weights_sha256
from encoders.brainlm.loading import load_brainlm
from encoders.brainlm.lora import LoraSettings
from encoders.brainlm.testing import random_brainlm_inputs, tiny_brainlm_config, tiny_vit_config
from encoders.errors import EncoderInputError
from encoders.weights import quiet_transformers

ARCHS = ["brainlm_mae", "vit_mae"]
EPS64 = torch.finfo(torch.float64).eps


def _coords(arch: str) -> torch.Tensor:
    if arch == "brainlm_mae":
        return random_brainlm_inputs(tiny_brainlm_config(), 1, seed=3)[1][0]
    g = torch.Generator().manual_seed(3)
    xyz = torch.round(torch.randn(424, 3, generator=g) * 30)
    xyz[:, 1] = torch.randint(-10, 10, (424,), generator=g).float()  # many Y ties: the stable sort matters
    return xyz


def _windows(arch: str, batch: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 12, 40) if arch == "brainlm_mae" else (batch, 424, 200)
    return torch.randn(*shape, generator=g)


@pytest.fixture
def checkpoint(tmp_path: Path):
    """arch -> a saved tiny random checkpoint folder of that architecture."""

    def make(arch: str, name: str = "base") -> Path:
        torch.manual_seed(0)
        model = (BrainLMForPretraining(tiny_brainlm_config()) if arch == "brainlm_mae"
                 else BrainLMViTForPretraining(tiny_vit_config()))
        folder = tmp_path / f"{arch}-{name}"
        with quiet_transformers():
            model.save_pretrained(folder)
        return folder

    return make


def _perturb(tower) -> None:
    """Give every trainable tensor a random change (LoRA B starts at zero, so its adapters are inert until then)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in tower.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("arch", ARCHS)
def test_tower_is_encode_on_the_models_own_parcel_order(arch: str, checkpoint) -> None:
    folder = checkpoint(arch)
    pooling = "mean" if arch == "vit_mae" else "time_then_voxel"
    tower = load_tower(folder, _coords(arch), pooling=pooling)
    model = load_brainlm(folder).float().eval()
    x = _windows(arch)
    with torch.no_grad():
        if arch == "vit_mae":
            ref = model.encode(vit_preprocess(x, _coords(arch)[:, 1]), pooling="mean")
            order = torch.sort(_coords(arch)[:, 1], stable=True).indices
            assert not torch.equal(order, torch.argsort(_coords(arch)[:, 1]))  # the ties make stability matter
        else:
            ref = model.encode(x, _coords(arch).expand(3, -1, -1), pooling=pooling)
    out = tower(x)
    assert out.shape == (3, model.config.hidden_size) and out.grad_fn is None
    assert torch.equal(out, ref)
    assert tower.base.sha256 == weights_sha256(folder)
    if arch == "vit_mae":
        assert tower.encoder.decoder is None
        with pytest.raises(EncoderInputError, match=r"\[B, 424, 200\]"):
            tower(x[:, :, :100])


@pytest.mark.parametrize("arch", ARCHS)
def test_trainable_modes_choose_parameters_and_keep_frozen_units_in_eval(arch: str, checkpoint) -> None:
    folder = checkpoint(arch)
    frozen = load_tower(folder, _coords(arch)).train()
    assert frozen.trainable_names() == [] and not any(u.training for u in frozen.units())
    assert frozen(_windows(arch)).grad_fn is None  # run without a graph

    last = load_tower(folder, _coords(arch), trainable="last_n", last_n=1).train()
    names = last.trainable_names()
    last_block = last.block_names()[-1]
    assert names and all(n.startswith((f"encoder.{last_block}.", "encoder.vit.layernorm.", "encoder.layernorm."))
                         for n in names)
    assert [u.training for u in last.units()] == [False, False, True, True]

    full = load_tower(folder, _coords(arch), trainable="full").train()
    fixed = {"encoder.vit.embeddings.position_embeddings"} if arch == "vit_mae" else set()
    assert set(full.trainable_names()) == {n for n, _ in full.named_parameters()} - fixed
    assert all(u.training for u in full.units())

    lora = load_tower(folder, _coords(arch), trainable="lora", lora=LoraSettings(rank=2)).train()
    assert lora.trainable_names() and all(".lora_" in n for n in lora.trainable_names())
    assert [u.training for u in lora.units()] == [False, True, True, False]


def test_bad_settings_give_one_clear_error_each(checkpoint) -> None:
    vit, nys = checkpoint("vit_mae"), checkpoint("brainlm_mae")
    with pytest.raises(EncoderInputError, match=r"last_n <= 2 \(the encoder has 2 blocks\), got 3"):
        load_tower(vit, _coords("vit_mae"), trainable="last_n", last_n=3)
    with pytest.raises(EncoderInputError, match=r"'qkv' matches no module .*'attention.q_proj'.*'mlp.fc2'"):
        load_tower(vit, _coords("vit_mae"), trainable="lora", lora=LoraSettings(target_modules=["q_proj", "qkv"]))
    with pytest.raises(EncoderInputError, match=r"'attention' matches 'attention', which is not a Linear"):
        load_tower(vit, _coords("vit_mae"), trainable="lora", lora=LoraSettings(target_modules=["attention"]))
    with pytest.raises(EncoderInputError, match=r"lora.dropout must be 0 when adapting the Nystromformer"):
        load_tower(nys, _coords("brainlm_mae"), trainable="lora", lora=LoraSettings(dropout=0.1))
    with pytest.raises(EncoderInputError, match=r"trainable must be one of"):
        load_tower(nys, _coords("brainlm_mae"), trainable="partial")
    with pytest.raises(EncoderInputError, match=r"coords: expected finite parcel coordinates \[12, 3\]"):
        load_tower(nys, _coords("vit_mae"))
    with pytest.raises(EncoderInputError, match=r"lora.rank must be a positive integer"):
        load_tower(nys, _coords("brainlm_mae"), trainable="lora", lora=LoraSettings(rank=0))


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_equals_the_merged_weights(arch: str, checkpoint) -> None:
    """Adapters are live in both architectures (incl. the Nystromformer's fused q/k/v): W + (alpha/r) B A."""
    folder = checkpoint(arch)
    settings = LoraSettings(rank=3, alpha=6.0)
    tower = load_tower(folder, _coords(arch), pooling="mean", trainable="lora", lora=settings).double()
    _perturb(tower)
    plain = load_brainlm(folder).double().eval()
    merged = plain.vit if arch == "brainlm_mae" else plain
    adapted = {n: m for n, m in tower.encoder.named_modules() if hasattr(m, "lora_A")}
    assert len(adapted) == 2 * 4  # 2 blocks x the 4 attention projections
    with torch.no_grad():
        for name, module in adapted.items():
            delta = module.lora_B["default"].weight @ module.lora_A["default"].weight
            merged.get_submodule(name).weight += settings.alpha / settings.rank * delta
    x = _windows(arch).double()
    with torch.no_grad():
        ref = (plain.encode(x, _coords(arch).double().expand(3, -1, -1), pooling="mean") if arch == "brainlm_mae"
               else plain.encode(vit_preprocess(x, _coords(arch)[:, 1]), pooling="mean"))
        out = tower(x)
        base = load_tower(folder, _coords(arch), pooling="mean").double()(x)
    assert (out - base).abs().max() > 1e-3  # the adapters change the embedding ...
    assert torch.allclose(out, ref, rtol=0, atol=1e3 * EPS64 * ref.abs().max())  # ... exactly by B A


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["last_n", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients(arch: str, mode: str, checkpoint) -> None:
    folder = checkpoint(arch)
    kwargs = {"last_n": 1} if mode == "last_n" else {"lora": LoraSettings(rank=2)}
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)  # the same LoRA A init
        tower = load_tower(folder, _coords(arch), trainable=mode, gradient_checkpointing=ckpt, **kwargs).double()
        _perturb(tower)
        tower.train()
        out = tower(_windows(arch).double())
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(6), dtype=out.dtype)
        (out * weights).sum().backward()  # not out.square().sum(): a LayerNormed CLS vector has a constant norm
        grads.append({n: p.grad for n, p in tower.named_parameters() if p.requires_grad})
    assert set(grads[0]) == set(grads[1]) and all(g is not None for g in grads[1].values())
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, rtol=0, atol=1e3 * EPS64 * g.abs().max()), name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["lora", "last_n", "full"])
def test_save_load_keeps_outputs_and_stores_only_what_changed(arch: str, mode: str, checkpoint, tmp_path) -> None:
    folder = checkpoint(arch)
    kwargs = {"last_n": 1} if mode == "last_n" else {"lora": LoraSettings(rank=2)} if mode == "lora" else {}
    tower = load_tower(folder, _coords(arch), trainable=mode, **kwargs)
    _perturb(tower)
    save_finetuned(tower, tmp_path / "ft")
    stored = load_file(str(tmp_path / "ft" / TENSORS))
    assert sorted(stored) == sorted(tower.trainable_names())
    if mode != "full":
        base_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        assert (tmp_path / "ft" / TENSORS).stat().st_size < base_bytes / 2
        assert all(".lora_" in k for k in stored) if mode == "lora" else all(
            ".layers.0." not in k and ".layer.0." not in k for k in stored)
    with safe_open(str(tmp_path / "ft" / TENSORS), framework="pt") as handle:
        assert handle.metadata()["base_sha256"] == weights_sha256(folder)
    again = load_finetuned(tmp_path / "ft")
    assert again.settings() == tower.settings() and again.trainable_names() == tower.trainable_names()
    x = _windows(arch)
    with torch.no_grad():
        assert torch.equal(again(x), tower.eval()(x))
        assert not torch.equal(again(x), load_tower(folder, _coords(arch))(x))


def test_a_changed_base_checkpoint_is_refused(checkpoint, tmp_path: Path) -> None:
    folder = checkpoint("vit_mae")
    tower = load_tower(folder, _coords("vit_mae"), trainable="lora", lora=LoraSettings(rank=2))
    save_finetuned(tower, tmp_path / "ft")
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert load_finetuned(tmp_path / "ft", base=moved).base.folder == str(moved.resolve())  # same bytes: accepted
    old = weights_sha256(folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights["vit.layernorm.bias"] = weights["vit.layernorm.bias"] + 1.0
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    new = weights_sha256(folder)
    with pytest.raises(EncoderInputError, match=rf"{folder}.*sha256 {new}.*sha256 {old}"):
        load_finetuned(tmp_path / "ft")
    with pytest.raises(EncoderInputError, match=r"expected brainlm_finetune.json"):
        load_finetuned(tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_learns_a_toy_contrastive_task_and_leaves_the_base_untouched(arch: str, checkpoint) -> None:
    torch.manual_seed(1)
    tower = load_tower(checkpoint(arch), _coords(arch), pooling="mean", trainable="lora",
                       lora=LoraSettings(rank=4, alpha=8.0))
    base = {k: v.clone() for k, v in tower.state_dict().items() if ".lora_" not in k}
    head = torch.nn.Linear(tower.out_dim, 8).requires_grad_(False)  # fixed: only the adapters can lower the loss
    x = _windows(arch, batch=6, seed=2)
    targets = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(4)), dim=-1)
    loss_fn = ClipLoss(rank=0, world_size=1)
    opt = torch.optim.Adam([p for p in tower.parameters() if p.requires_grad], lr=2e-2)
    tower.train()
    losses = []
    for _ in range(6):
        loss = loss_fn(F.normalize(head(tower(x)), dim=-1), targets, torch.tensor(10.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    after = tower.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_tower_trains_under_bf16_autocast(arch: str, checkpoint) -> None:
    """The `precision: bf16` path: outputs within bf16 rounding of float64, finite adapter gradients."""
    tower = load_tower(checkpoint(arch), _coords(arch), pooling="mean", trainable="lora", lora=LoraSettings(rank=2))
    _perturb(tower)
    x = _windows(arch)
    with torch.no_grad():
        ref = tower.double()(x.double())
    tower.float().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tower(x)
    out.float().sum().backward()
    bf16_eps = torch.finfo(torch.bfloat16).eps  # 2^-7; measured about 0.5 eps relative to the largest output
    assert (out.double() - ref).abs().max() <= 8 * bf16_eps * ref.abs().max()
    grads = [p.grad for p in tower.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
