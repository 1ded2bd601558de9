"""DNA-embedding stage: content-addressed cache, dedup of shared haplotypes, torchrun-style sharding, CLI."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from brainmm.cli import main
from brainmm.config import load_config
from brainmm.data.genetics.cache import EmbeddingCache
from brainmm.data.genetics.config import GeneticsEmbedConfig
from brainmm.data.genetics.embed import run_embed
from brainmm.data.genetics.simulate import simulate_vcf_cohort
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError

_CODE = np.full(256, 4, dtype=np.int64)
for _i, _c in enumerate("ACGT"):
    _CODE[ord(_c)] = _i


class KmerDouble:
    """Test double of encoders.dna.DNAEncoder: 3-mer counts times a fixed projection.

    Deterministic, batch-independent and linear in 3-mer counts, so edits more than 2 bp apart add up
    exactly (haplotype deltas = sum of single-variant deltas). Records every sequence it embeds.
    """

    def __init__(self, dim: int = 8, tag: str = "v1") -> None:
        self.dim = dim
        self.tag = tag
        self.proj = np.random.default_rng(0).standard_normal((125, dim)).astype(np.float32)
        self.seen: list[str] = []

    def cache_key(self) -> str:
        return f"kmer-double-{self.tag}-{self.dim}"

    def embed(self, sequences: list[str]) -> torch.Tensor:
        out = np.zeros((len(sequences), self.dim), dtype=np.float32)
        for i, s in enumerate(sequences):
            if not s:
                raise ValueError("empty sequence")
            c = _CODE[np.frombuffer(s.encode(), dtype=np.uint8)]
            ids = c[:-2] * 25 + c[1:-1] * 5 + c[2:]
            out[i] = np.bincount(ids, minlength=125) @ self.proj
        self.seen.extend(sequences)
        return torch.from_numpy(out)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 people x 4 regions of 300 bp with coalescent (mostly rare) phased variants."""
    return simulate_vcf_cohort(tmp_path_factory.mktemp("cohort"), n_samples=40, n_regions=4, region_length=300, seed=3,
                           theta_per_bp=3e-2)


def _config(cohort: dict[str, Path], tmp: Path, **kw) -> GeneticsEmbedConfig:
    cfg = GeneticsEmbedConfig()
    cfg.inputs.vcf, cfg.inputs.fasta, cfg.inputs.regions = str(cohort["vcf"]), str(cohort["fasta"]), str(cohort["regions"])
    cfg.encoder.path = "unused-by-the-double"
    cfg.cache_dir = str(tmp / "cache")
    cfg.out = str(tmp / "out" / "dna")
    cfg.chunk_size = 16
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_cache_roundtrip_refresh_and_errors(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "enc-a", 4)
    keys = [cache.key(s) for s in ("ACGT", "ACGA", "TTTT")]
    assert len(set(keys)) == 3 and cache.key("ACGT") != EmbeddingCache(tmp_path / "b", "enc-b", 4).key("ACGT")
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.put_many(keys[:2], vecs[:2])
    other = EmbeddingCache(tmp_path, "enc-a", 4)  # a second process sees the first one's pack
    assert keys[0] in other and keys[2] not in other
    other.put_many(keys[2:], vecs[2:])
    cache.refresh()
    np.testing.assert_array_equal(cache.get_many([keys[2], keys[0]]), vecs[[2, 0]])
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(BrainmmError, match=r"made for encoder 'enc-a' \(dim 4\), not 'enc-a' \(dim 5\)"):
        EmbeddingCache(tmp_path, "enc-a", 5)
    with pytest.raises(BrainmmError, match=r"got vectors of shape \[1, 3\] for 1 keys"):
        cache.put_many(keys[:1], np.zeros((1, 3)))
    (cache.packs_dir / "broken.safetensors").write_bytes(b"not a pack")
    with pytest.raises(BrainmmError, match=r"broken\.safetensors: unreadable"):
        cache.refresh()


def test_embed_dedups_caches_and_pools(cohort: dict[str, Path], tmp_path: Path) -> None:
    enc = KmerDouble()
    table = run_embed(_config(cohort, tmp_path), encoder=enc)
    plan_stats, seq = table.meta["plan"], table.meta["sequences"]
    assert table.vectors.shape == (40, 4 * enc.dim) and table.ids[0] == "S00000"
    assert seq["requested"] == 2 * 40 * 4 and seq["embedded"] == seq["unique"] == plan_stats["unique_sequences"]
    assert len(enc.seen) == len(set(enc.seen)) == seq["unique"] < seq["requested"] / 4
    assert [r["name"] for r in table.meta["regions"]] == ["region000", "region001", "region002", "region003"]
    saved = EmbeddingTable.load(tmp_path / "out" / "dna")
    np.testing.assert_array_equal(saved.vectors, table.vectors)
    assert load_config(GeneticsEmbedConfig, tmp_path / "out" / "dna.config.yaml").mode == "haplotypes"
    # Second run: everything comes from the cache, nothing is embedded again.
    again = KmerDouble()
    table2 = run_embed(_config(cohort, tmp_path, combine_regions="mean"), encoder=again)
    assert again.seen == [] and table2.meta["sequences"]["cached"] == seq["unique"]
    np.testing.assert_allclose(table2.vectors, table.vectors.reshape(40, 4, -1).mean(axis=1), atol=1e-5)
    assert table2.meta["data_hash"] == table.meta["data_hash"]
    # Reference subtraction: a person carrying the reference on both haplotypes of a region gets 0 there;
    # without it, every row holds the (large) reference component.
    raw = run_embed(_config(cohort, tmp_path, subtract_reference=False), encoder=KmerDouble())
    ref_rows = np.all(table.vectors.reshape(40, 4, -1) == 0, axis=2)
    assert ref_rows.any() and not np.all(raw.vectors.reshape(40, 4, -1)[ref_rows] == 0)


def test_variant_deltas_equal_haplotypes_for_a_linear_encoder(cohort: dict[str, Path], tmp_path: Path) -> None:
    hap = run_embed(_config(cohort, tmp_path), encoder=KmerDouble())
    deltas = run_embed(_config(cohort, tmp_path, mode="variant_deltas"), encoder=KmerDouble())
    # Variants sit >= 6 bp apart, so 3-mer changes of different variants never interact.
    np.testing.assert_allclose(deltas.vectors, hap.vectors, atol=1e-3)
    assert deltas.meta["mode"] == "variant_deltas"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, cfg: GeneticsEmbedConfig) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), BRAINMM_QUIET="1")
    torch.set_num_threads(1)
    enc = KmerDouble()
    run_embed(cfg, encoder=enc)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{cfg.out}.rank{rank}.json").write_text(json.dumps(len(enc.seen)))


def test_two_process_sharding_equals_one_process(cohort: dict[str, Path], tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    single = _config(cohort, tmp_path / "one")
    one = run_embed(single, encoder=KmerDouble())
    sharded = _config(cohort, tmp_path / "two")
    mp.spawn(_rank_main, args=(2, _free_port(), sharded), nprocs=2, join=True)
    counts = [json.loads(Path(f"{sharded.out}.rank{r}.json").read_text()) for r in (0, 1)]
    assert sum(counts) == one.meta["sequences"]["unique"] and min(counts) > 0  # disjoint slices, both worked
    a = EmbeddingCache(single.cache_dir, KmerDouble().cache_key(), 8).items()
    b = EmbeddingCache(sharded.cache_dir, KmerDouble().cache_key(), 8).items()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    two = EmbeddingTable.load(sharded.out)
    assert two.ids == one.ids and two.meta["world_size"] == 2
    np.testing.assert_array_equal(two.vectors, one.vectors)


def _tiny_generator(folder: Path) -> Path:
    """A random-init GENERator-layout checkpoint (Llama weights + 6-mer vocab.txt)."""
    from transformers import LlamaConfig, LlamaModel

    specials = ["<oov>", "<s>", "</s>", "<pad>", "<mask>"] + [f"<reserved_{i}>" for i in range(27)]
    kmers = ["".join(p) for p in itertools.product("ATCG", repeat=6)]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(specials + kmers) + "\n")
    cfg = LlamaConfig(vocab_size=len(specials) + len(kmers), hidden_size=16, intermediate_size=32,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=256)
    torch.manual_seed(0)
    LlamaModel(cfg).save_pretrained(folder)
    return folder


def test_cli_embed_with_real_registry_encoder(cohort: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    model = _tiny_generator(tmp_path / "generator-tiny")
    cfg = tmp_path / "embed.yaml"
    cfg.write_text(f"inputs:\n  vcf: {cohort['vcf']}\n  fasta: {cohort['fasta']}\n  regions: {cohort['regions']}\n"
                   f"encoder:\n  family: generator\n  batch_size: 4\n  rc: none\n")
    args = ["-q", "genetics", "embed", "--config", str(cfg), "--encoder-path", str(model),
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out" / "dna"), "--set", "chunk_size=64"]
    assert main(args) == 0
    first = capsys.readouterr().out
    table = EmbeddingTable.load(tmp_path / "out" / "dna")
    assert table.vectors.shape == (40, 4 * 16) and np.isfinite(table.vectors).all()
    assert table.meta["model"].startswith("generator-") and table.meta["pooling"] == "last"
    unique = table.meta["sequences"]["unique"]
    assert f"sequences: 320 requested, {unique} unique, 0 already cached, {unique} embedded" in first
    assert main(args) == 0
    assert f"{unique} already cached, 0 embedded" in capsys.readouterr().out
    # The cached vector of region000's reference window is what the encoder gives for it.
    from brainmm.data.genetics.reference import Reference
    from encoders.dna import create_dna_encoder

    enc = create_dna_encoder("generator", path=str(model), rc="none")
    cache = EmbeddingCache(tmp_path / "cache", enc.cache_key(), enc.dim)
    window = Reference(cohort["fasta"]).fetch("sim1", 500, 800)
    np.testing.assert_allclose(cache.get_many([cache.key(window)])[0], enc.embed([window])[0].numpy(), atol=1e-5)
    # Bad input through the CLI: one line, exit code 2.
    assert main([*args, "--contig-alias", "sim1=chr1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"brainmm: error: contig alias sim1=chr1: 'chr1' is not a contig of VCF {cohort['vcf']} (contigs: sim1)"
