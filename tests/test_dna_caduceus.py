"""Caduceus: pure-torch port (PS and Ph, tiny d=16, n_layer=2) and the registry adapter."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from encoders.dna import create_dna_encoder, reverse_complement
from encoders.dna.base import POOLINGS
from encoders.dna.caduceus import (
    DEFAULT_COMPLEMENT_MAP,
    CaduceusEncoder,
    CaduceusEncoderConfig,
    run_by_length,
)
from encoders.dna.caduceus_model import Caduceus, CaduceusConfig, CaduceusForMaskedLM
from encoders.errors import EncoderInputError

ATOL = 2e-5


def _config(rcps: bool, fused: bool = True) -> CaduceusConfig:
    return CaduceusConfig(
        d_model=16, n_layer=2, vocab_size=12, rcps=rcps, fused_add_norm=fused, residual_in_fp32=False,
        complement_map=dict(DEFAULT_COMPLEMENT_MAP) if rcps else None,
        ssm_cfg={"d_state": 4, "d_conv": 4, "expand": 2, "bias": False, "conv_bias": True},
    )


def _seqs(n: int, lengths: tuple[int, ...], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("ACGT") for _ in range(lengths[i % len(lengths)])) for i in range(n)]


def _perturb_norms(model: torch.nn.Module) -> None:
    """Random (non-palindromic) norm weights, so half swaps and channel flips are not invisible."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.uniform_(0.5, 1.5)


def _save(rcps: bool, folder: Path) -> CaduceusForMaskedLM:
    torch.manual_seed(0)
    model = CaduceusForMaskedLM(_config(rcps)).eval()
    _perturb_norms(model)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def ps_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CaduceusForMaskedLM]:
    folder = tmp_path_factory.mktemp("caduceus-ps")
    return folder, _save(True, folder)


@pytest.fixture(scope="module")
def ph_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CaduceusForMaskedLM]:
    folder = tmp_path_factory.mktemp("caduceus-ph")
    return folder, _save(False, folder)


@pytest.mark.parametrize("fused", [True, False])
def test_ps_port_is_rc_equivariant(fused: bool) -> None:
    torch.manual_seed(1)
    model = Caduceus(_config(rcps=True, fused=fused)).eval()
    _perturb_norms(model)
    ids = torch.randint(7, 12, (2, 25))
    comp = torch.tensor([DEFAULT_COMPLEMENT_MAP[i] for i in range(12)])
    with torch.no_grad():
        out = model(ids).last_hidden_state
        out_rc = model(comp[ids.flip(-1)]).last_hidden_state
    assert out.shape == (2, 25, 32)
    torch.testing.assert_close(out_rc, out.flip(dims=(-2, -1)), rtol=0, atol=1e-5)
    # the Ph model (no RCPS) is not equivariant: the property above is not automatic
    ph = Caduceus(_config(rcps=False)).eval()
    with torch.no_grad():
        a, b = ph(ids).last_hidden_state, ph(comp[ids.flip(-1)]).last_hidden_state
    assert (b - a.flip(dims=(-2, -1))).abs().max() > 1e-3


def test_fused_and_unfused_rcps_paths_differ() -> None:
    """The fused block path swaps the channel halves of the residual; the weights alone do not decide."""
    torch.manual_seed(2)
    fused = Caduceus(_config(rcps=True, fused=True)).eval()
    _perturb_norms(fused)
    unfused = Caduceus(_config(rcps=True, fused=False)).eval()
    state = {k.replace(".norm.weight", ".norm.submodule.weight"): v for k, v in fused.state_dict().items()}
    state = {k.replace("norm_f.weight", "norm_f.submodule.weight"): v for k, v in state.items()}
    unfused.load_state_dict(state)
    ids = torch.randint(7, 12, (1, 20))
    with torch.no_grad():
        diff = (fused(ids).last_hidden_state - unfused(ids).last_hidden_state).abs().max()
    assert diff > 1e-4


def test_checkpoint_layout_matches_official_names(ps_dir) -> None:
    folder, _ = ps_dir
    keys = set(load_file(folder / "model.safetensors"))
    layer = "caduceus.backbone.layers.1.mixer.submodule"
    expected = {
        "caduceus.backbone.embeddings.word_embeddings.embedding.weight",
        "caduceus.backbone.embeddings.word_embeddings.complement_map",
        "caduceus.backbone.layers.1.norm.weight",
        "caduceus.backbone.norm_f.weight",
        "lm_head.complement_map",
        *(f"{layer}.mamba_fwd.{n}" for n in ("in_proj.weight", "out_proj.weight", "conv1d.weight",
                                             "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                                             "dt_proj.bias", "A_log", "D")),
        *(f"{layer}.mamba_rev.{n}" for n in ("conv1d.weight", "x_proj.weight", "dt_proj.bias", "A_log", "D")),
    }
    assert expected <= keys
    # tied parameters are stored once, as in the published checkpoints
    assert f"{layer}.mamba_rev.in_proj.weight" not in keys and "lm_head.lm_head.weight" not in keys


def test_load_with_duplicated_tied_weights(tmp_path: Path, ps_dir) -> None:
    """A checkpoint that also stores the tied copies (e.g. converted from a .bin) loads and stays tied."""
    folder, model = ps_dir
    state = load_file(folder / "model.safetensors")
    for i in range(2):
        prefix = f"caduceus.backbone.layers.{i}.mixer.submodule"
        for proj in ("in_proj", "out_proj"):
            state[f"{prefix}.mamba_rev.{proj}.weight"] = state[f"{prefix}.mamba_fwd.{proj}.weight"].clone()
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    loaded = Caduceus.from_pretrained(tmp_path)
    mixer = loaded.backbone.layers[0].mixer.submodule
    assert mixer.mamba_rev.in_proj.weight is mixer.mamba_fwd.in_proj.weight
    ids = torch.randint(7, 12, (1, 15))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).last_hidden_state, model.caduceus(ids).last_hidden_state,
                                   rtol=0, atol=0)


def test_registry_round_trip_matches_saved_model(ps_dir) -> None:
    folder, model = ps_dir
    enc = create_dna_encoder("caduceus", path=folder, rc="none")
    assert enc.dim == 16 and enc.num_hidden_states == 3
    seq = _seqs(1, (30,))[0]
    ids = torch.tensor([[{"A": 7, "C": 8, "G": 9, "T": 10}[c] for c in seq]])
    with torch.no_grad():
        expected = model.caduceus(ids).last_hidden_state[0, :, :16].mean(0)
    torch.testing.assert_close(enc.embed([seq])[0], expected, rtol=0, atol=1e-6)
    # the averaged PS embedding is the official recipe: ½(h[..., :d] + h[..., d:] flipped in length and channels)
    avg = create_dna_encoder("caduceus", path=folder)
    with torch.no_grad():
        h = model.caduceus(ids).last_hidden_state[0]
    official = ((h[:, :16] + h[:, 16:].flip(dims=(0, 1))) / 2).mean(0)
    torch.testing.assert_close(avg.embed([seq])[0], official, rtol=0, atol=ATOL)
    assert avg.cache_key() != enc.cache_key()


@pytest.mark.parametrize("variant", ["ps", "ph"])
def test_pooled_embedding_is_rc_invariant(variant: str, ps_dir, ph_dir) -> None:
    folder = (ps_dir if variant == "ps" else ph_dir)[0]
    seqs = _seqs(3, (31, 24, 17), seed=3)
    rcs = [reverse_complement(s) for s in seqs]
    enc = create_dna_encoder("caduceus", path=folder, rc="average")
    torch.testing.assert_close(enc.embed(rcs), enc.embed(seqs), rtol=0, atol=ATOL)
    concat = create_dna_encoder("caduceus", path=folder, rc="concat")
    a, b = concat.embed(seqs), concat.embed(rcs)
    assert a.shape == (3, 32)
    torch.testing.assert_close(b, torch.cat([a[:, 16:], a[:, :16]], dim=1), rtol=0, atol=ATOL)
    # without RC handling the embedding is strand-specific
    single = create_dna_encoder("caduceus", path=folder, rc="none")
    assert (single.embed(rcs) - single.embed(seqs)).abs().max() > 1e-3


@pytest.mark.parametrize("variant", ["ps", "ph"])
def test_batch_equals_single(variant: str, ps_dir, ph_dir) -> None:
    folder = (ps_dir if variant == "ps" else ph_dir)[0]
    seqs = _seqs(4, (33, 20, 27, 9), seed=4)
    enc = create_dna_encoder("caduceus", path=folder, batch_size=4, pooling="max" if variant == "ph" else "mean")
    batched = enc.embed(seqs)
    single = torch.cat([enc.embed([s]) for s in seqs])
    torch.testing.assert_close(batched, single, rtol=0, atol=ATOL)
    tokens = enc.embed(seqs, per_token=True)
    assert [t.shape for t in tokens] == [(len(s), 16) for s in seqs]


def _count_model_rows(enc) -> list[int]:
    """Rows (sequences) passed to the model by each forward call of `enc`."""
    rows: list[int] = []
    enc.model.register_forward_pre_hook(lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                        with_kwargs=True)
    return rows


@pytest.mark.parametrize("rc, pooling", [("average", "mean"), ("concat", "max")])
def test_ps_one_pass_equals_two_pass(rc: str, pooling: str, ps_dir) -> None:
    """PS computes the reverse strand in its forward pass: same result as running the reverse complement."""
    folder, _ = ps_dir
    seqs = _seqs(3, (26, 17, 40), seed=7)
    one = create_dna_encoder("caduceus", path=folder, rc=rc, pooling=pooling, window=30, overlap=4)
    two = create_dna_encoder("caduceus", path=folder, rc=rc, pooling=pooling, window=30, overlap=4)
    two.rc_in_model = False  # the two-pass reference: embed the reverse complement as its own sequence
    assert one.rc_in_model
    one_rows, two_rows = _count_model_rows(one), _count_model_rows(two)
    got, ref = one.embed(seqs), two.embed(seqs)
    assert got.shape == (3, one.dim) and one.dim == (32 if rc == "concat" else 16)
    assert sum(one_rows) == 4 and sum(two_rows) == 8  # windows: 1 + 1 + 2; twice that with RC sequences
    torch.testing.assert_close(got, ref, rtol=0, atol=ATOL)
    tokens, ref_tokens = one.embed(seqs[:2], per_token=True), two.embed(seqs[:2], per_token=True)
    for t, r, s in zip(tokens, ref_tokens, seqs):
        assert t.shape == (len(s), one.dim)
        torch.testing.assert_close(t, r, rtol=0, atol=ATOL)
    # per-token strand invariance: position j of the reverse complement pairs with position j of the sequence
    rev = one.embed([reverse_complement(seqs[0])], per_token=True)[0].flip(0)
    expected = tokens[0] if rc == "average" else torch.cat([tokens[0][:, 16:], tokens[0][:, :16]], dim=1)
    torch.testing.assert_close(rev, expected, rtol=0, atol=ATOL)


def test_rc_in_model_needs_position_free_pooling(ps_dir, ph_dir) -> None:
    """The in-model reverse strand is aligned by position, which only mean/max pooling may ignore."""
    class AnyPooling(CaduceusEncoder):
        poolings = POOLINGS

    with pytest.raises(EncoderInputError, match="pooling: caduceus .* computes the reverse strand"):
        AnyPooling(CaduceusEncoderConfig(path=str(ps_dir[0]), pooling="last"))
    ph = AnyPooling(CaduceusEncoderConfig(path=str(ph_dir[0]), pooling="last"))  # Ph: two passes, any pooling
    assert not ph.rc_in_model and ph.embed(["ACGTAC"]).shape == (1, 16)


def test_run_by_length_matches_masked_port(ps_dir) -> None:
    """The official path (no mask) runs each length separately; it must equal the masked port."""
    folder, _ = ps_dir
    enc = create_dna_encoder("caduceus", path=folder)
    batch = enc.tokenize(_seqs(3, (12, 18, 12), seed=5))
    with torch.no_grad():
        masked = enc.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           output_hidden_states=True)
        grouped = run_by_length(lambda ids, ohs: enc.model(input_ids=ids, output_hidden_states=ohs),
                                batch, output_hidden_states=True)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(grouped.last_hidden_state[real], masked.last_hidden_state[real], rtol=0, atol=1e-5)
    assert len(grouped.hidden_states) == 3
    torch.testing.assert_close(grouped.hidden_states[1][real], masked.hidden_states[1][real], rtol=0, atol=1e-5)
    assert (grouped.last_hidden_state[~real] == 0).all()


def test_layer_selection(ps_dir) -> None:
    folder, _ = ps_dir
    seqs = _seqs(2, (20,), seed=6)
    last = create_dna_encoder("caduceus", path=folder).embed(seqs)
    final = create_dna_encoder("caduceus", path=folder, layer=2).embed(seqs)
    first = create_dna_encoder("caduceus", path=folder, layer=0).embed(seqs)
    torch.testing.assert_close(final, last, rtol=0, atol=0)
    assert (first - last).abs().max() > 1e-3
    with pytest.raises(EncoderInputError, match="layer"):
        create_dna_encoder("caduceus", path=folder, layer=3)


def test_bad_folders_and_options(tmp_path: Path, ps_dir) -> None:
    folder, _ = ps_dir
    with pytest.raises(EncoderInputError, match="config.json"):
        create_dna_encoder("caduceus", path=tmp_path)
    with pytest.raises(EncoderInputError, match="pooling"):
        create_dna_encoder("caduceus", path=folder, pooling="last")
    with pytest.raises(EncoderInputError, match="implementation"):
        create_dna_encoder("caduceus", path=folder, implementation="cuda")
    state = load_file(folder / "model.safetensors")
    del state["caduceus.backbone.layers.1.norm.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(EncoderInputError, match=r"layers\.1\.norm\.weight"):
        create_dna_encoder("caduceus", path=tmp_path)


def test_official_implementation_needs_trust_mamba_ssm_and_cuda(ps_dir, monkeypatch) -> None:
    folder, _ = ps_dir
    with pytest.raises(EncoderInputError, match="trust_remote_code"):
        create_dna_encoder("caduceus", path=folder, implementation="official")
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "mamba_ssm":
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(EncoderInputError, match="mamba_ssm"):
        create_dna_encoder("caduceus", path=folder, implementation="official", trust_remote_code=True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: object() if name == "mamba_ssm"
                        else real_find_spec(name, *a, **k))
    with pytest.raises(EncoderInputError, match="CUDA device"):
        create_dna_encoder("caduceus", path=folder, implementation="official", trust_remote_code=True)
