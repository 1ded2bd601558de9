"""Evo 2 adapter against a tiny fake Evo2-like model (CPU), and the clear errors of the real path."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch
from torch import nn

import encoders.dna.evo2 as evo2_module
from encoders.dna import create_dna_encoder, reverse_complement
from encoders.dna.evo2 import Evo2Encoder, Evo2EncoderConfig
from encoders.errors import EncoderInputError

WIDTH = 8


class _FakeMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(WIDTH, 12), nn.Linear(WIDTH, 12), nn.Linear(12, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(nn.functional.gelu(self.l1(x)) * self.l2(x))


class _FakeBlock(nn.Module):
    """Causal depthwise conv mixer + MLP, residual like vortex; returns a tuple like vortex blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.mixer = nn.Conv1d(WIDTH, WIDTH, kernel_size=3, groups=WIDTH)
        self.pre_norm, self.post_norm = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.mlp = _FakeMLP()

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = nn.functional.pad(self.pre_norm(u).transpose(1, 2), (2, 0))
        u = self.mixer(x).transpose(1, 2) + u
        return self.mlp(self.post_norm(u)) + u, None


class _FakeStripedHyena(nn.Module):
    def __init__(self, n_blocks: int = 3) -> None:
        super().__init__()
        self.embedding_layer = nn.Embedding(512, WIDTH)
        self.blocks = nn.ModuleList(_FakeBlock() for _ in range(n_blocks))
        self.config = {"max_seqlen": 64}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding_layer(ids.long())
        for block in self.blocks:
            x, _ = block(x)
        return x @ self.embedding_layer.weight.T


class _FakeTokenizer:
    pad_id = 1

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


class FakeEvo2:
    """The `evo2.Evo2` contract: `.model`, `.tokenizer`, `__call__(ids, return_embeddings, layer_names)`."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = _FakeStripedHyena().eval()
        self.tokenizer = _FakeTokenizer()
        self.calls: list[tuple[tuple[int, ...], list[str]]] = []

    def __call__(self, input_ids, return_embeddings=False, layer_names=None):
        self.calls.append((tuple(input_ids.shape), list(layer_names or [])))
        captured, handles = {}, []
        for name in layer_names or []:
            def hook(_module, _inputs, output, name=name):
                captured[name] = (output[0] if isinstance(output, tuple) else output).detach()
            handles.append(self.model.get_submodule(name).register_forward_hook(hook))
        try:
            with torch.no_grad():
                logits = self.model(input_ids)
        finally:
            for handle in handles:
                handle.remove()
        return logits, captured if return_embeddings else None


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "evo2_7b.pt").write_bytes(b"merged checkpoint stand-in")
    return tmp_path


def _encoder(folder: Path, fake: FakeEvo2 | None = None, **options) -> Evo2Encoder:
    fake = fake or FakeEvo2()
    options.setdefault("device", "cpu")
    return Evo2Encoder(Evo2EncoderConfig(path=str(folder), **options), loader=lambda name, weights, device: fake)


def _seqs(lengths: tuple[int, ...], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("ACGTN" if i % 3 == 0 else "ACGT") for i in range(n)) for n in lengths]


def _manual(fake: FakeEvo2, seq: str, layer: str) -> torch.Tensor:
    ids = torch.tensor([list(seq.encode())])
    return fake(ids, return_embeddings=True, layer_names=[layer])[1][layer][0]


def test_byte_tokenization_uppercase_and_alphabet(folder: Path) -> None:
    enc = _encoder(folder, layer="blocks.2", rc="none")
    batch = enc.tokenize(["ACGTN", "AC"])
    assert batch.input_ids.tolist() == [[65, 67, 71, 84, 78], [65, 67, 1, 1, 1]]
    assert batch.attention_mask.tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    upper = enc.embed(["ACGTNACG"])
    torch.testing.assert_close(enc.embed(["acgtnacg"]), upper, rtol=0, atol=0)
    assert enc.last_report.n_lowercase == 8
    with pytest.raises(EncoderInputError, match=r"'X' at position 2"):
        enc.embed(["ACXT"])


def test_hook_selection_and_pooling_match_manual(folder: Path) -> None:
    fake = FakeEvo2()
    seq = _seqs((21,))[0]
    for layer in ("blocks.1.mlp.l3", "blocks.2", "blocks.0.mlp.l1"):
        expected = _manual(fake, seq, layer)
        mean = _encoder(folder, fake, layer=layer, rc="none").embed([seq])[0]
        last = _encoder(folder, fake, layer=layer, rc="none", pooling="last").embed([seq])[0]
        torch.testing.assert_close(mean, expected.mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(last, expected[-1], rtol=0, atol=1e-6)
    assert _encoder(folder, fake, layer="blocks.0.mlp.l1").dim == 12  # measured from the hooked module
    assert fake.calls[-1][1] == ["blocks.0.mlp.l1"]
    assert _encoder(folder, fake, layer="blocks.0.mlp.l3").dim == WIDTH


def test_default_layer_is_7b_readme_choice_and_bad_layers(folder: Path) -> None:
    assert Evo2EncoderConfig(path=str(folder)).layer == "blocks.28.mlp.l3"
    with pytest.raises(EncoderInputError, match=r"blocks\.0\.\.blocks\.2, got 'blocks\.28\.mlp\.l3'"):
        _encoder(folder)
    with pytest.raises(EncoderInputError, match="module names"):
        _encoder(folder, layer=-1)
    with pytest.raises(EncoderInputError, match="pooling"):
        _encoder(folder, layer="blocks.2", pooling="cls")


def test_rc_average_and_concat(folder: Path) -> None:
    fake = FakeEvo2()
    seqs = _seqs((17, 30), seed=1)
    rcs = [reverse_complement(s) for s in seqs]
    avg = _encoder(folder, fake, layer="blocks.2", rc="average")
    torch.testing.assert_close(avg.embed(rcs), avg.embed(seqs), rtol=0, atol=1e-6)
    expected = (_manual(fake, seqs[0], "blocks.2").mean(0) + _manual(fake, rcs[0], "blocks.2").mean(0)) / 2
    torch.testing.assert_close(avg.embed(seqs[:1])[0], expected, rtol=0, atol=1e-6)
    concat = _encoder(folder, fake, layer="blocks.2", rc="concat", pooling="last")
    a, b = concat.embed(seqs), concat.embed(rcs)
    assert a.shape == (2, 2 * WIDTH)
    torch.testing.assert_close(b, torch.cat([a[:, WIDTH:], a[:, :WIDTH]], dim=1), rtol=0, atol=0)
    none = _encoder(folder, fake, layer="blocks.2", rc="none")
    assert (none.embed(rcs) - none.embed(seqs)).abs().max() > 1e-3


def test_right_padded_batch_equals_single(folder: Path) -> None:
    fake = FakeEvo2()
    seqs = _seqs((25, 7, 16, 25), seed=2)
    for pooling in ("mean", "last", "max"):
        enc = _encoder(folder, fake, layer="blocks.1.mlp.l3", pooling=pooling, batch_size=4)
        single = torch.cat([enc.embed([s]) for s in seqs])
        torch.testing.assert_close(enc.embed(seqs), single, rtol=0, atol=1e-6)
    assert max(shape[0] for shape, _ in fake.calls) == 4  # the batch really held several sequences
    tokens = enc.embed(seqs, per_token=True)
    assert [t.shape for t in tokens] == [(len(s), WIDTH) for s in seqs]


def test_long_input_needs_window(folder: Path) -> None:
    enc = _encoder(folder, layer="blocks.2", rc="none")
    with pytest.raises(EncoderInputError, match="window"):
        enc.embed(["ACGT" * 20])  # 80 tokens > max_seqlen 64 of the fake
    tiled = _encoder(folder, layer="blocks.2", rc="none", window=40, overlap=0)
    assert tiled.embed(["ACGT" * 20]).shape == (1, WIDTH)


def test_cache_key_records_layer_and_model(folder: Path) -> None:
    fake = FakeEvo2()
    keys = {
        _encoder(folder, fake, layer="blocks.2").cache_key(),
        _encoder(folder, fake, layer="blocks.1").cache_key(),
        _encoder(folder, fake, layer="blocks.2", pooling="last").cache_key(),
    }
    assert len(keys) == 3
    enc = _encoder(folder, fake, layer="blocks.2")
    assert enc.identity()["options"]["layer"] == "blocks.2"
    assert enc.identity()["options"]["model_name"] == "evo2_7b"
    assert enc.cache_key() == _encoder(folder, fake, layer="blocks.2").cache_key()


def test_registry_uses_default_loader(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_loader(name: str, weights: Path, device: torch.device) -> FakeEvo2:
        seen.append((name, weights, device))
        return FakeEvo2()

    monkeypatch.setattr(evo2_module, "load_evo2", fake_loader)
    (folder / "custom.pt").write_bytes(b"x")
    enc = create_dna_encoder("evo2", path=folder, layer="blocks.2", weights="custom.pt", device="cpu",
                             model_name="evo2_7b_base")
    assert seen == [("evo2_7b_base", folder / "custom.pt", torch.device("cpu"))]
    assert enc.embed(["ACGTACGT"]).shape == (1, WIDTH)


def test_real_loader_errors_without_evo2_or_gpu(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(present: bool):
        return lambda name, *a, **k: (object() if present else None) if name == "evo2" else real_find_spec(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec(False))
    with pytest.raises(EncoderInputError, match=r"'evo2' package is not installed.*vtx.*flash-attn"):
        create_dna_encoder("evo2", path=folder, layer="blocks.2", device="cpu")
    monkeypatch.setattr(importlib.util, "find_spec", find_spec(True))
    with pytest.raises(EncoderInputError, match="needs a CUDA device; got device='cpu'"):
        create_dna_encoder("evo2", path=folder, layer="blocks.2", device="cpu")
    if not torch.cuda.is_available():  # the default device is "cuda"
        with pytest.raises(EncoderInputError, match="device: 'cuda'"):
            create_dna_encoder("evo2", path=folder, layer="blocks.2")
    with pytest.raises(EncoderInputError, match=r"weights: .*evo2_40b\.pt not found"):
        create_dna_encoder("evo2", path=folder, model_name="evo2_40b", device="cpu")


def test_tokenizer_that_is_not_bytes_is_rejected(folder: Path) -> None:
    fake = FakeEvo2()
    fake.tokenizer.tokenize = lambda text: [ord(c) - 60 for c in text]
    with pytest.raises(EncoderInputError, match="UTF-8 bytes"):
        _encoder(folder, fake, layer="blocks.2")
