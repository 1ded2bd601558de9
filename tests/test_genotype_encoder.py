"""GenotypeEncoder: shapes, save/load round trip, gradients, input scaling, clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stage_inputs import World, align_argv, check_error, left_in, run

from encoders.errors import EncoderInputError
from encoders.genotype import GenotypeEncoder, GenotypeEncoderConfig


def _dosages(n: int, n_snps: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (n, n_snps), generator=g).float()


def _model(**overrides) -> GenotypeEncoder:
    torch.manual_seed(0)
    kw = dict(n_snps=20, n_scores=3, hidden_sizes=[16, 8], output_size=6, dropout=0.0)
    kw.update(overrides)
    return GenotypeEncoder(GenotypeEncoderConfig(**kw))


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm", "none"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_output_shape_and_depth(norm: str, activation: str) -> None:
    model = _model(norm=norm, activation=activation)
    out = model(_dosages(5, 20), torch.randn(5, 3))
    assert out.shape == (5, 6)
    assert torch.isfinite(out).all()
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert n_linear == 3  # two hidden layers + output layer
    assert model.mlp[0].in_features == 23  # SNPs and scores concatenated


def test_gradients_reach_every_parameter() -> None:
    model = _model()
    model.train()
    loss = model(_dosages(8, 20), torch.randn(8, 3)).pow(2).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_save_load_round_trip(tmp_path) -> None:
    model = _model()
    x, s = _dosages(10, 20), torch.randn(10, 3)
    model.train()
    model(x, s)  # update BatchNorm running statistics so they differ from the init
    model.fit_input_scaling(x, s)
    model.eval()
    expected = model(x, s)
    model.save_pretrained(tmp_path)
    loaded = GenotypeEncoder.from_pretrained(tmp_path)
    assert not loaded.training
    assert loaded.config.hidden_sizes == [16, 8] and loaded.config.n_scores == 3
    torch.testing.assert_close(loaded.input_mean, model.input_mean, rtol=0, atol=0)
    torch.testing.assert_close(loaded(x, s), expected, rtol=0, atol=0)


def test_fit_input_scaling_standardises_training_columns() -> None:
    model = _model(n_scores=0, norm="none")
    x = _dosages(50, 20)
    x[:, 0] = 1.0  # monomorphic column keeps std 1
    model.fit_input_scaling(x)
    torch.testing.assert_close(model.input_mean, x.mean(0))
    assert model.input_std[0] == 1.0
    torch.testing.assert_close(model.input_std[1:], x[:, 1:].std(0))


def test_encode_batches_equal_single_pass() -> None:
    model = _model().eval()
    x, s = _dosages(7, 20), torch.randn(7, 3)
    torch.testing.assert_close(model.encode(x, s, batch_size=3), model(x, s), rtol=1e-6, atol=1e-6)
    assert not model.encode(x, s).requires_grad


@pytest.mark.parametrize(
    ("dosages", "scores", "match"),
    [
        (torch.zeros(4, 19), torch.zeros(4, 3), r"'dosages'.*n_snps=20.*\[4, 19\]"),
        (torch.zeros(20), torch.zeros(4, 3), r"'dosages'.*shape"),
        (torch.full((4, 20), float("nan")), torch.zeros(4, 3), r"'dosages' contain NaN"),
        (torch.full((4, 20), 3.0), torch.zeros(4, 3), r"\[0, 2\]"),
        (torch.zeros(4, 20), None, r"'scores'.*n_scores=3"),
        (torch.zeros(4, 20), torch.zeros(4, 2), r"'scores'.*n_scores=3"),
        (torch.zeros(4, 20), torch.full((4, 3), float("inf")), r"'scores' contain NaN or inf"),
    ],
)
def test_bad_input_raises_clear_error(dosages, scores, match) -> None:
    with pytest.raises(EncoderInputError, match=match):
        _model()(dosages, scores)


def test_scores_without_score_block_and_bad_config() -> None:
    with pytest.raises(EncoderInputError, match="n_scores=0"):
        _model(n_scores=0)(torch.zeros(2, 20), torch.zeros(2, 1))
    with pytest.raises(EncoderInputError, match="norm"):
        GenotypeEncoderConfig(norm="groupnorm")
    with pytest.raises(EncoderInputError, match="n_snps"):
        GenotypeEncoderConfig(n_snps=0)
    with pytest.raises(EncoderInputError, match="batch of >= 2"):
        _model().train()(torch.zeros(1, 20), torch.zeros(1, 3))


def test_forward_unchecked_equals_forward() -> None:
    import torch

    from encoders.genotype import GenotypeEncoder, GenotypeEncoderConfig

    torch.manual_seed(0)
    enc = GenotypeEncoder(GenotypeEncoderConfig(n_snps=7, hidden_sizes=(8,), output_size=4)).eval()
    x = torch.randint(0, 3, (5, 7)).float()
    enc.fit_input_scaling(x)
    torch.testing.assert_close(enc.forward_unchecked(x), enc(x), rtol=0, atol=0)


def test_pickled_genotype_tower_names_the_blocked_global(tmp_path: Path) -> None:
    import torch

    from encoders.errors import EncoderInputError
    from encoders.genotype import GenotypeEncoder, GenotypeEncoderConfig

    folder = tmp_path / "tower"
    GenotypeEncoder(GenotypeEncoderConfig(n_snps=5, hidden_sizes=(4,), output_size=3)).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save({"weights": torch.ones(2), "payload": Path("/tmp")}, folder / "pytorch_model.bin")
    with pytest.raises(EncoderInputError, match=r"pytorch_model\.bin cannot be read as a PyTorch state dict with "
                                                r"weights_only=True: .*\(it needs pathlib\.PosixPath\)"):
        GenotypeEncoder.from_pretrained(folder, local_files_only=True)


def test_pickled_genotype_tower_via_the_cli(world: World, tmp_path: Path, capsys) -> None:
    import torch

    from encoders.genotype import GenotypeEncoder, GenotypeEncoderConfig

    folder = tmp_path / "tower"
    GenotypeEncoder(GenotypeEncoderConfig(n_snps=5, hidden_sizes=(4,), output_size=3)).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save({"weights": torch.ones(2), "payload": Path("/tmp")}, folder / "pytorch_model.bin")
    from brainmm.embeddings import EmbeddingTable

    ids = EmbeddingTable.load(world.root / "tables" / "dna").ids
    dosages = np.random.default_rng(0).integers(0, 3, size=(len(ids), 5)).astype(np.float32)
    EmbeddingTable(ids, dosages, {}).save(tmp_path / "dosages")
    argv = align_argv(world, tmp_path / "out" / "align", f"towers.genetics={{dna: {{kind: genotype_mlp, checkpoint: "
                                                         f"{folder}}}}}", dna=tmp_path / "dosages")
    code, err = run(argv, capsys)
    check_error(code, err, r"pytorch_model\.bin cannot be read as a PyTorch state dict with weights_only=True: .*"
                           r"\(it needs pathlib\.PosixPath\)")
    assert left_in(tmp_path / "out") == []
