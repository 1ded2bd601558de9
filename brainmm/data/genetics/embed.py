"""Personal sequences -> DNA encoder -> one vector per subject, through the content-addressed cache.

Only sequences missing from the cache are embedded, each once however many people carry it. Under
torchrun (WORLD_SIZE > 1) every rank builds the same plan, rank 0 decides which sequences are missing,
each rank embeds a disjoint slice (strided over the length-sorted list) into the shared cache, and rank 0
assembles the table after a barrier.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from brainmm.config import save_config, to_dict
from brainmm.data.genetics.cache import EmbeddingCache
from brainmm.data.genetics.config import EncoderSection, GeneticsEmbedConfig, SequenceInputs
from brainmm.data.genetics.haplotypes import SequencePlan, build_plan
from brainmm.data.genetics.reference import Reference
from brainmm.data.genetics.regions import read_regions
from brainmm.data.genetics.subjects import match_samples, read_sample_map
from brainmm.data.genetics.variants import VariantSource
from brainmm.embeddings import EmbeddingTable, table_stem
from brainmm.errors import BrainmmError
from brainmm.runtime import LOG, progress


class SequenceEncoder(Protocol):
    """What the stage needs from a DNA encoder (encoders.dna.DNAEncoder provides it)."""

    @property
    def dim(self) -> int: ...

    def embed(self, sequences: list[str]) -> Any: ...

    def cache_key(self) -> str: ...


@dataclass
class EmbedStats:
    """Sequence counts of one run."""

    requested: int
    unique: int
    cached: int
    embedded: int
    embedded_here: int

    def line(self) -> str:
        """One human-readable summary line."""
        share = self.unique / self.requested if self.requested else 0.0
        return (f"sequences: {self.requested} requested, {self.unique} unique ({share:.2%}), "
                f"{self.cached} already cached, {self.embedded} embedded")


def make_plan(inputs: SequenceInputs, mode: str) -> SequencePlan:
    """Open the VCF, FASTA and regions, match samples to subjects, and build every region's sequences."""
    regions = read_regions(inputs.regions)
    reference = Reference(inputs.fasta)
    if inputs.bgen and inputs.vcf:
        raise BrainmmError("inputs.vcf / inputs.bgen: give one source of haplotypes, not both")
    if inputs.bgen:
        from brainmm.data.genetics.bgen_variants import BgenVariantSource

        vcf = BgenVariantSource(inputs.bgen, inputs.sample, inputs.contig_aliases)
    else:
        vcf = VariantSource(inputs.vcf, inputs.contig_aliases)
    try:
        sample_map = read_sample_map(inputs.cohort, inputs.sample_column) if inputs.cohort else None
        samples, subjects = match_samples(vcf.samples, str(vcf.path), sample_map, inputs.drop_unmatched_samples)
        return build_plan(vcf, reference, regions, samples, subjects, mode)
    finally:
        vcf.close()
        reference.close()


def create_encoder(section: EncoderSection, local_rank: int = 0) -> SequenceEncoder:
    """The DNA encoder named by the config section (one device per rank under torchrun)."""
    from encoders.dna import create_dna_encoder

    kwargs = section.create_kwargs()
    if str(kwargs["device"]).startswith("cuda") and ":" not in str(kwargs["device"]) and _world() > 1:
        kwargs["device"] = f"cuda:{local_rank}"
    return create_dna_encoder(section.family, **kwargs)


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def distributed_setup() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group); gloo under torchrun."""
    if _world() <= 1:
        return 0, 1, False
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    # A long timeout: ranks wait at the barrier while the slowest one finishes its slice.
    dist.init_process_group("gloo", timeout=timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size(), True


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def embed_into_cache(
    encoder: SequenceEncoder,
    cache: EmbeddingCache,
    sequences: list[str],
    chunk_size: int = 256,
    requested: int | None = None,
) -> EmbedStats:
    """Embed the sequences missing from `cache` (this rank's share under torchrun) and store them."""
    rank, world = (0, 1)
    if _world() > 1:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
    keys = [cache.key(s) for s in sequences]
    digest = hashlib.sha256(b"".join(keys)).hexdigest()
    if rank == 0:
        missing = sorted((i for i, k in enumerate(keys) if k not in cache), key=lambda i: (-len(sequences[i]), i))
        shared = (digest, missing)
    else:
        shared = None
    root_digest, missing = _broadcast(shared, world)
    if root_digest != digest:
        raise BrainmmError(f"rank {rank}: its sequence plan differs from rank 0's; every rank must read the "
                           "same inputs")
    mine = missing[rank::world]
    chunks = [mine[i: i + chunk_size] for i in range(0, len(mine), chunk_size)]
    bar = progress(chunks, desc="embedding", unit="chunk") if rank == 0 else chunks
    for chunk in bar:
        batch = [sequences[i] for i in chunk]
        out = encoder.embed(batch)
        vectors = (out.detach().float().cpu().numpy() if hasattr(out, "detach") else np.asarray(out, np.float32))
        if vectors.shape != (len(batch), cache.dim):
            raise BrainmmError(f"DNA encoder returned shape {list(vectors.shape)} for {len(batch)} sequences; "
                               f"expected [{len(batch)}, {cache.dim}]")
        if not np.isfinite(vectors).all():
            raise BrainmmError(f"DNA encoder {encoder.cache_key()} returned NaN/inf embeddings")
        cache.put_many([keys[i] for i in chunk], vectors)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    cache.refresh()
    n = len(sequences)
    return EmbedStats(requested if requested is not None else n, n, n - len(missing), len(missing), len(mine))


def subject_vectors(plan: SequencePlan, cache: EmbeddingCache, subtract_reference: bool,
                    combine: str) -> np.ndarray:
    """[subjects, regions x D] (concat) or [subjects, D] (mean) from cached sequence embeddings."""
    unique = plan.unique_sequences()
    row = {s: i for i, s in enumerate(unique)}
    table = cache.get_many([cache.key(s) for s in unique])
    blocks = []
    for r in plan.regions:
        e_ref = table[row[r.reference]]
        emb = table[[row[s] for s in r.sequences]] if r.sequences else np.zeros((0, cache.dim), np.float32)
        vec = np.asarray(r.weights @ (emb - e_ref), dtype=np.float32)
        if not subtract_reference:
            vec = vec + e_ref
        blocks.append(vec)
    if combine == "concat":
        return np.concatenate(blocks, axis=1)
    if combine == "mean":
        return np.mean(np.stack(blocks), axis=0)
    raise BrainmmError(f"combine_regions {combine!r}: expected 'concat' or 'mean'")


def data_hash(plan: SequencePlan, cache: EmbeddingCache) -> str:
    """SHA-256 of exactly what the encoder sees per subject: subject ids, sequences and weights per region."""
    h = hashlib.sha256("\n".join(plan.subjects).encode())
    for r in plan.regions:
        h.update(r.region.name.encode() + cache.key(r.reference))
        for s in r.sequences:
            h.update(cache.key(s))
        w = r.weights.tocsr()
        for arr in (w.indptr, w.indices, w.data):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """`<brainmm data dir>/dna-embeddings` ($BRAINMM_DATA_DIR or ~/.cache/brainmm)."""
    from brainmm.data.fetch import data_dir

    return data_dir() / "dna-embeddings"


def run_embed(cfg: GeneticsEmbedConfig, encoder: SequenceEncoder | None = None) -> EmbeddingTable | None:
    """The whole stage; returns the subject table on rank 0 (None on other ranks) and writes it to `cfg.out`."""
    cfg.require_inputs()
    rank, world, started = distributed_setup()
    try:
        plan = make_plan(cfg.inputs, cfg.mode)
        if encoder is None:
            encoder = create_encoder(cfg.encoder, int(os.environ.get("LOCAL_RANK", "0")))
        cache = EmbeddingCache(cfg.cache_dir or default_cache_dir(), encoder.cache_key(), encoder.dim)
        stats = embed_into_cache(encoder, cache, plan.unique_sequences(), cfg.chunk_size, plan.requested)
        if rank != 0:
            return None
        LOG.info("%s", stats.line())
        vectors = subject_vectors(plan, cache, cfg.subtract_reference, cfg.combine_regions)
        resolved = getattr(encoder, "config", None)
        meta = {
            "kind": "dna_embeddings",
            "model": encoder.cache_key(),
            "layer": getattr(resolved, "layer", cfg.encoder.layer),
            "pooling": getattr(resolved, "pooling", cfg.encoder.pooling),
            "rc": getattr(resolved, "rc", cfg.encoder.rc),
            "encoder": to_dict(cfg.encoder),
            "mode": cfg.mode,
            "subtract_reference": cfg.subtract_reference,
            "combine_regions": cfg.combine_regions,
            "region_dim": int(encoder.dim),
            "regions": [r.region.to_dict() for r in plan.regions],
            "inputs": to_dict(cfg.inputs),
            "data_hash": data_hash(plan, cache),
            "plan": plan.stats(),
            "sequences": vars(stats),
            "world_size": world,
        }
        if plan.samples != plan.subjects:
            meta["vcf_samples"] = plan.samples
        table = EmbeddingTable(plan.subjects, vectors, meta)
        out = table_stem(cfg.out)
        save_config(cfg, out.with_name(out.name + ".config.yaml"))
        table.save(out)
        return table
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
