"""A real pretrained DNA model: HyenaDNA-tiny (anticapt 1.0 wheel) run through its own remote code."""

from __future__ import annotations

import pytest
import torch

from brainmm.data.models import aptamer_fasta, fetch_hyenadna_tiny
from encoders.dna import create_dna_encoder, reverse_complement
from encoders.errors import EncoderInputError


@pytest.fixture(scope="module")
def hyena_dir(sample_data_dir):
    return fetch_hyenadna_tiny(sample_data_dir)


@pytest.fixture(scope="module")
def sequences(sample_data_dir) -> list[str]:
    records = aptamer_fasta(sample_data_dir).read_text().split(">")[1:]
    seqs = ["".join(rec.splitlines()[1:]) for rec in records]
    assert len(seqs) == 2 and all(len(s) > 70 for s in seqs)
    return seqs + [seqs[0][:40], seqs[1][10:70].lower()]


@pytest.fixture(scope="module")
def encoder(hyena_dir):
    return create_dna_encoder("hyenadna", path=hyena_dir, trust_remote_code=True, rc="none")


def test_remote_code_is_refused_unless_trusted(hyena_dir):
    with pytest.raises(EncoderInputError, match=f"runs Python code shipped in {hyena_dir}"):
        create_dna_encoder("hyenadna", path=hyena_dir)


def test_embeddings_match_the_remote_code_and_tokenizer(hyena_dir, sequences, encoder):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hyena_dir, trust_remote_code=True, local_files_only=True)
    model = AutoModel.from_pretrained(hyena_dir, trust_remote_code=True, local_files_only=True).eval()
    assert encoder.dim == 128 and encoder.max_tokens == 1026
    got = encoder.embed(sequences)
    for seq, vector in zip(sequences, got):
        ids = tokenizer(seq.upper())["input_ids"]
        assert encoder.tokenize([seq.upper()]).input_ids[0].tolist() == ids  # bases + [SEP]
        with torch.no_grad():
            states = model(torch.tensor([ids])).last_hidden_state[0]
        assert torch.allclose(vector, states[:-1].mean(0), atol=1e-5)  # mean over bases, [SEP] excluded
    assert torch.allclose(got, torch.cat([encoder.embed([s]) for s in sequences]), atol=1e-5, rtol=0)
    assert torch.nn.functional.cosine_similarity(got[0], got[1], dim=0) < 0.9999


def test_rc_average_and_tiling_on_real_sequences(hyena_dir, sequences):
    enc = create_dna_encoder("hyenadna", path=hyena_dir, trust_remote_code=True)
    assert torch.allclose(enc.embed(sequences), enc.embed([reverse_complement(s.upper()) for s in sequences]),
                          atol=1e-5, rtol=0)
    tiled = create_dna_encoder("hyenadna", path=hyena_dir, trust_remote_code=True, window=32, overlap=8)
    vectors = tiled.embed(sequences)
    assert vectors.shape == (4, 128) and torch.isfinite(vectors).all()
    assert not torch.allclose(vectors[0], enc.embed(sequences[:1])[0], atol=1e-4)
    assert tiled.cache_key() != enc.cache_key()
