"""Projector heads, the dual encoder (temperature, towers, freezing), parameter groups and the LR schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from alignment import (
    AlignmentInputError,
    DualEncoder,
    HeadConfig,
    ProjectionHead,
    WarmupCosine,
    param_groups,
    set_tower_trainable,
    warmup_cosine,
)


class Tower(nn.Module):
    """A tiny tower with repeated blocks: embed -> blocks.0..3 -> norm."""

    def __init__(self, d_in: int = 6, width: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(width, width), nn.Dropout(0.5)) for _ in range(4)])
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.norm(h)


def test_default_head_is_the_documented_mlp() -> None:
    head = ProjectionHead(64)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.LayerNorm]
    assert (head.net[0].in_features, head.net[0].out_features) == (64, 1024)
    assert head.net[2].p == 0.1 and head.net[3].out_features == 512 and head.net[4].normalized_shape == (512,)
    deep = ProjectionHead(8, HeadConfig(depth=3, hidden_dim=16, out_dim=4, dropout=0.0, layer_norm=False))
    assert [type(m) for m in deep.net].count(nn.Linear) == 3 and not any(isinstance(m, nn.LayerNorm) for m in deep.net)
    linear = ProjectionHead(8, HeadConfig(kind="linear", out_dim=4))
    assert len(linear.net) == 1 and isinstance(linear.net[0], nn.Linear)


@pytest.mark.parametrize(
    "cfg, field", [(HeadConfig(depth=0), "head.depth"), (HeadConfig(dropout=1.0), "head.dropout"),
                   (HeadConfig(out_dim=-2), "head.out_dim")]
)
def test_bad_head_config_names_the_field(cfg: HeadConfig, field: str) -> None:
    with pytest.raises(AlignmentInputError, match=field):
        ProjectionHead(8, cfg)


def test_dual_encoder_outputs_normalised_features_and_exp_scale() -> None:
    torch.manual_seed(0)
    model = DualEncoder(16, {"dna": 12, "genotype": 5}, HeadConfig(hidden_dim=32, out_dim=8))
    out = model(torch.randn(4, 16), {"dna": torch.randn(4, 12), "genotype": torch.randn(4, 5)})
    assert out.brain.shape == (4, 8) and set(out.genetics) == {"dna", "genotype"}
    for z in [out.brain, *out.genetics.values()]:
        assert torch.allclose(z.norm(dim=-1), torch.ones(4), atol=1e-6)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert out.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-6) and out.logit_bias is None


def test_logit_scale_is_clamped_after_a_step_that_pushes_it_up() -> None:
    model = DualEncoder(4, {"dna": 4}, HeadConfig(hidden_dim=8, out_dim=4))
    opt = torch.optim.SGD([model.logit_scale], lr=1e3)
    (-model.logit_scale).backward()  # gradient ascent on the scale
    opt.step()
    assert model.logit_scale.item() > math.log(100)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == 0.0


def test_dimension_mismatch_names_both_dims() -> None:
    model = DualEncoder(12, {"dna": 7}, HeadConfig(hidden_dim=8, out_dim=4), brain_tower=nn.Linear(3, 10))
    with pytest.raises(AlignmentInputError, match=r"outputs 10-D features but its head expects in_dim=12"):
        model.encode_brain(torch.randn(2, 3))
    with pytest.raises(AlignmentInputError, match=r"outputs 9-D features but its head expects in_dim=7"):
        model.encode_genetics("dna", torch.randn(2, 9))
    with pytest.raises(AlignmentInputError, match="unknown"):
        model.encode_genetics("rna", torch.randn(2, 7))


def test_tower_freezing_by_pattern_callable_and_full() -> None:
    tower = Tower()
    assert set_tower_trainable(tower, 0) == []
    trainable = set_tower_trainable(tower, 2, r"blocks\.\d+")
    assert trainable == ["blocks.2.0.weight", "blocks.2.0.bias", "blocks.3.0.weight", "blocks.3.0.bias"]
    assert set_tower_trainable(tower, 1, lambda t: list(t.blocks)) == ["blocks.3.0.weight", "blocks.3.0.bias"]
    assert len(set_tower_trainable(tower, None)) == len(list(tower.parameters()))
    with pytest.raises(AlignmentInputError, match="matches no module"):
        set_tower_trainable(tower, 1, r"layers\.\d+")
    with pytest.raises(AlignmentInputError, match="only 4 blocks"):
        set_tower_trainable(tower, 5, r"blocks\.\d+")


def test_frozen_tower_stays_in_eval_mode_and_gets_no_gradient() -> None:
    torch.manual_seed(0)
    frozen, partial = Tower(), Tower()
    set_tower_trainable(frozen, 0)
    set_tower_trainable(partial, 1, r"blocks\.\d+")
    model = DualEncoder(10, {"dna": 10}, HeadConfig(hidden_dim=8, out_dim=4, dropout=0.0), brain_tower=frozen,
                        genetics_towers={"dna": partial})
    model.train()
    assert not frozen.training and partial.training and model.brain_head.training
    x = torch.randn(3, 6)
    assert torch.equal(model.encode_brain(x), model.encode_brain(x))  # no dropout in the frozen tower
    out = model(x, {"dna": x})
    (out.brain.sum() + out.genetics["dna"].sum()).backward()
    assert all(p.grad is None for p in frozen.parameters())
    assert partial.blocks[3][0].weight.grad is not None and partial.blocks[0][0].weight.grad is None


def test_param_groups_split_decay_and_learning_rates() -> None:
    tower = Tower()
    set_tower_trainable(tower, 1, r"blocks\.\d+")
    model = DualEncoder(10, {"dna": 5}, HeadConfig(hidden_dim=8, out_dim=4), brain_tower=tower)
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.2, tower_lr=1e-5)}
    assert set(groups) == {"heads", "heads_no_decay", "towers", "towers_no_decay"}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert id(model.logit_scale) in ids["heads_no_decay"]
    assert id(model.brain_head.net[-1].weight) in ids["heads_no_decay"]  # LayerNorm weight
    assert id(model.brain_head.net[0].bias) in ids["heads_no_decay"]
    assert id(model.brain_head.net[0].weight) in ids["heads"]
    assert ids["towers"] == {id(tower.blocks[3][0].weight)} and ids["towers_no_decay"] == {id(tower.blocks[3][0].bias)}
    assert groups["towers"]["lr"] == 1e-5 and groups["heads"]["lr"] == 1e-3
    assert groups["heads"]["weight_decay"] == 0.2 and groups["heads_no_decay"]["weight_decay"] == 0.0
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters())) - frozen


def test_warmup_cosine_schedule() -> None:
    f = WarmupCosine(warmup_steps=4, total_steps=12, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(12) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=2.0)
    sched = warmup_cosine(opt, 4, 12)
    assert opt.param_groups[0]["lr"] == 0.5
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 1.0
    with pytest.raises(AlignmentInputError, match="total_steps"):
        WarmupCosine(1, 0)


def test_heads_round_trip_with_standardiser() -> None:
    torch.manual_seed(0)
    cfg = HeadConfig(hidden_dim=16, out_dim=8, standardize=True)
    model = DualEncoder(6, {"dna": 3}, cfg, init_logit_bias=-10.0)
    x = torch.randn(50, 6) * 5 + 3
    model.brain_head.fit_standardizer(x)
    assert torch.allclose(model.brain_head.input_mean, x.mean(0), atol=1e-5)
    rebuilt = DualEncoder.from_heads_config(model.heads_config(), model.heads_state_dict())
    model.eval()
    rebuilt.eval()
    assert torch.equal(model.encode_brain(x), rebuilt.encode_brain(x))
    assert rebuilt.logit_bias is not None and rebuilt.logit_bias.item() == -10.0
    with pytest.raises(AlignmentInputError, match="standardize=false"):
        ProjectionHead(3, HeadConfig()).fit_standardizer(torch.zeros(2, 3))


def test_save_pretrained_round_trip_and_reads_the_previous_writer(tmp_path) -> None:
    import json

    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = DualEncoder(6, {"genotype": 3}, HeadConfig(hidden_dim=16, out_dim=8, standardize=True)).eval()
    model.brain_head.fit_standardizer(torch.randn(20, 6) * 2 + 1)
    model.save_pretrained(tmp_path / "new", {"run_id": "abc"})
    record = json.loads((tmp_path / "new" / "heads.json").read_text())
    assert record["format"] == "brainmm.align.heads/1" and record["run_id"] == "abc"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["heads.json", "heads.safetensors"]
    x = torch.randn(5, 6)
    assert torch.equal(DualEncoder.from_pretrained(tmp_path / "new").encode_brain(x), model.encode_brain(x))
    # a folder as the align driver wrote it before save_pretrained existed (brainmm.io JSON, safetensors file)
    old = tmp_path / "old"
    old.mkdir()
    save_file({k: v.cpu() for k, v in model.heads_state_dict().items()}, str(old / "heads.safetensors"))
    (old / "heads.json").write_text(json.dumps({"format": "brainmm.align.heads/1", **model.heads_config(),
                                                "towers": {}}, indent=2, sort_keys=True))
    assert torch.equal(DualEncoder.from_pretrained(old).encode_brain(x), model.encode_brain(x))
    (old / "heads.json").write_text(json.dumps({"format": "other/2", **model.heads_config()}))
    with pytest.raises(AlignmentInputError, match="format 'other/2'"):
        DualEncoder.from_pretrained(old)
    with pytest.raises(AlignmentInputError, match="not found"):
        DualEncoder.from_pretrained(tmp_path / "missing")


def test_heads_initialised_from_cca_reproduce_the_cca_baseline() -> None:
    from alignment.baselines import select_cca
    from alignment.heads import init_heads_from_cca

    rng = np.random.default_rng(0)
    n = 300
    z = rng.normal(size=(n, 4))
    b = z @ rng.normal(size=(4, 20)) + 0.5 * rng.normal(size=(n, 20))
    g = z @ rng.normal(size=(4, 15)) + 0.5 * rng.normal(size=(n, 15))
    tr, va, te = slice(0, 200), slice(200, 250), slice(250, 300)
    cfg = HeadConfig(kind="linear", out_dim=16, standardize=True, init="cca")
    hb, hg = ProjectionHead(20, cfg).double(), ProjectionHead(15, cfg).double()
    t = torch.from_numpy
    hb.fit_standardizer(t(b[tr]))
    hg.fit_standardizer(t(g[tr]))
    sel = init_heads_from_cca(hb, hg, (t(b[tr]), t(g[tr])), (t(b[va]), t(g[va])))
    # the reference: select_cca on the same standardised inputs, in float64
    sb, sg = ((x - x[tr].mean(0)) / x[tr].std(0) for x in (b, g))
    ref = select_cca("cca", sb[tr], sg[tr], sb[va], sg[va])
    u, v = ref.transform(sb[te], sg[te])
    k = int(sel["components"])
    for side, (dim, other) in enumerate([(20, 15), (15, 20)]):  # read off in blocks of 3 columns = all at once
        w3, b3 = ref.affine_map(side, dim, other, block=3)
        w_all, b_all = ref.affine_map(side, dim, other, block=dim)
        assert w3.shape == (k, dim) and np.array_equal(w3, w_all) and np.array_equal(b3, b_all)
    with torch.no_grad():
        ub, vg = hb(t(b[te])).numpy(), hg(t(g[te])).numpy()
    scale = np.abs(u).max()
    assert np.allclose(ub[:, :k], u, atol=1e-9 * scale) and np.allclose(vg[:, :k], v, atol=1e-9 * scale)
    assert not ub[:, k:].any() and not vg[:, k:].any()  # the remaining outputs start at 0
    with pytest.raises(AlignmentInputError, match="head.init: 'cca' needs head.kind 'linear'"):
        HeadConfig(kind="mlp", init="cca").validate()
