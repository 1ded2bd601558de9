"""Personal sequences per region: two haplotypes per person (phased) or one window per variant (unphased).

Each region yields its unique sequences and a sparse weight matrix W [subjects, sequences] such that the
subject's region vector is `W @ (E - e_ref)` (+ `e_ref` when the reference is not subtracted), where E holds
the sequences' embeddings and e_ref the reference window's. For haplotypes W puts 1/2 on each of the two
haplotypes; for variant deltas W holds dosage/2 of each ALT allele, so both modes agree to first order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from brainmm.data.genetics.reference import Reference
from brainmm.data.genetics.regions import Region
from brainmm.data.genetics.variants import VariantBlock, VariantCounts, VariantSource
from brainmm.errors import BrainmmError
from brainmm.runtime import progress
from encoders.dna.sequences import reverse_complement

Mode = Literal["haplotypes", "variant_deltas"]


def apply_variants(ref_seq: str, offset: int, variants: Iterable[tuple[int, str, str]]) -> tuple[str, int]:
    """Apply (start, REF, ALT) edits (0-based starts, sorted) to `ref_seq`, which starts at `offset`.

    A variant whose REF starts inside an already applied variant's REF span is skipped (as `bcftools
    consensus` does). Returns (sequence, number of skipped overlapping variants).
    """
    pieces: list[str] = []
    cursor = 0
    skipped = 0
    for start, ref, alt in variants:
        s = start - offset
        if s < cursor:
            skipped += 1
            continue
        pieces.append(ref_seq[cursor:s])
        pieces.append(alt)
        cursor = s + len(ref)
    pieces.append(ref_seq[cursor:])
    return "".join(pieces), skipped


@dataclass
class RegionSequences:
    """One region: reference window, unique personal sequences and the subject weights over them."""

    region: Region
    reference: str
    sequences: list[str]
    weights: sp.csr_matrix
    index: np.ndarray | None = None  # haplotypes mode: [subjects, 2] sequence index of each haplotype
    requested: int = 0  # sequences a per-person approach would embed for this region


@dataclass
class SequencePlan:
    """Every region's sequences for a set of subjects (the input of the DNA encoder)."""

    mode: Mode
    samples: list[str]
    subjects: list[str]
    regions: list[RegionSequences]
    counts: VariantCounts = field(default_factory=VariantCounts)
    overlapping_skipped: int = 0
    lowercase_reference_bases: int = 0

    def unique_sequences(self) -> list[str]:
        """All distinct sequences (references included), in first-seen order."""
        return list(dict.fromkeys(s for r in self.regions for s in (r.reference, *r.sequences)))

    @property
    def requested(self) -> int:
        """Sequences a per-person approach would embed (2 x subjects x regions for haplotypes)."""
        return sum(r.requested for r in self.regions)

    def stats(self) -> dict[str, int]:
        """Counts for logs and metadata."""
        out = {"subjects": len(self.subjects), "regions": len(self.regions), "requested_sequences": self.requested,
               "unique_sequences": len(self.unique_sequences()),
               "overlapping_variants_skipped": self.overlapping_skipped,
               "lowercase_reference_bases": self.lowercase_reference_bases}
        out.update({f"vcf_{k}": v for k, v in vars(self.counts).items()})
        return out


def _oriented(seq: str, region: Region) -> str:
    return reverse_complement(seq) if region.strand == "-" else seq


def check_phase(block: VariantBlock, region: Region, samples: list[str], source: str) -> None:
    """Raise when a person's haplotypes depend on unknown phase (>= 2 heterozygous calls, one unphased)."""
    if block.n_records == 0:
        return
    het = block.gt[:, 0, :] != block.gt[:, 1, :]
    bad = np.flatnonzero((het.sum(axis=1) >= 2) & block.het_unphased.any(axis=1))
    if bad.size:
        s = int(bad[0])
        j = int(np.flatnonzero(block.het_unphased[s])[0])
        raise BrainmmError(
            f"VCF {source}: sample {samples[s]!r} has {int(het[s].sum())} heterozygous calls in region "
            f"{region.name!r} ({region.locus}), some unphased (e.g. {block.labels[j]}), so its two haplotypes "
            f"are unknown ({bad.size} samples affected); phase the VCF (e.g. Beagle, SHAPEIT) or use "
            "mode: variant_deltas"
        )


def region_haplotypes(block: VariantBlock, ref_seq: str, region: Region) -> tuple[RegionSequences, int]:
    """Unique haplotype sequences of one region and the 1/2-weights of each subject on them."""
    n = block.gt.shape[0]
    rows = block.gt.reshape(2 * n, block.n_records)  # row 2*s + h
    carried = np.flatnonzero(rows.any(axis=0))
    rows = rows[:, carried]
    if carried.size:
        patterns, inverse = np.unique(rows, axis=0, return_inverse=True)
    else:
        patterns, inverse = np.zeros((1, 0), dtype=rows.dtype), np.zeros(2 * n, dtype=np.int64)
    inverse = inverse.reshape(-1)
    copies = np.bincount(inverse, minlength=len(patterns))
    seq_index: dict[str, int] = {}
    pattern_to_seq = np.empty(len(patterns), dtype=np.int64)
    skipped = 0
    for p, pattern in enumerate(patterns):
        edits = [(int(block.starts[j]), block.alleles[j][0], block.alleles[j][a])
                 for j, a in zip(carried, pattern) if a > 0]
        seq, sk = apply_variants(ref_seq, region.start, edits)
        skipped += sk * int(copies[p])
        pattern_to_seq[p] = seq_index.setdefault(_oriented(seq, region), len(seq_index))
    index = pattern_to_seq[inverse].reshape(n, 2)
    weights = sp.csr_matrix(
        (np.full(2 * n, 0.5, dtype=np.float32), (np.repeat(np.arange(n), 2), index.reshape(-1))),
        shape=(n, len(seq_index)),
    )
    weights.sum_duplicates()
    return RegionSequences(region, _oriented(ref_seq, region), list(seq_index), weights, index, 2 * n), skipped


def region_variant_windows(block: VariantBlock, ref_seq: str, region: Region) -> RegionSequences:
    """One window per (record, ALT allele) carried by someone, with dosage/2 weights (works unphased)."""
    n = block.gt.shape[0]
    seq_index: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for j in range(block.n_records):
        gt = block.gt[:, :, j]
        for a in np.unique(gt[gt > 0]):
            dosage = (gt == a).sum(axis=1)
            carriers = np.flatnonzero(dosage)
            seq, _ = apply_variants(ref_seq, region.start, [(int(block.starts[j]), block.alleles[j][0],
                                                             block.alleles[j][int(a)])])
            k = seq_index.setdefault(_oriented(seq, region), len(seq_index))
            rows.append(carriers)
            cols.append(np.full(carriers.size, k))
            vals.append(dosage[carriers].astype(np.float32) / 2)
    if rows:
        weights = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                shape=(n, len(seq_index)))
        weights.sum_duplicates()
    else:
        weights = sp.csr_matrix((n, 0), dtype=np.float32)
    return RegionSequences(region, _oriented(ref_seq, region), list(seq_index), weights, None, int(weights.nnz))


def build_plan(
    vcf: VariantSource,
    reference: Reference,
    regions: list[Region],
    samples: list[str],
    subjects: list[str],
    mode: Mode = "haplotypes",
) -> SequencePlan:
    """Sequences of every region for the given VCF samples (mapped to `subjects`), REF-checked."""
    if mode not in ("haplotypes", "variant_deltas"):
        raise BrainmmError(f"mode {mode!r}: expected 'haplotypes' or 'variant_deltas'")
    for region in regions:
        reference.check_region(region)
        vcf.vcf_contig(region.contig)
    vcf.select_samples(samples)
    plan = SequencePlan(mode, list(samples), list(subjects), [])
    lower_before = reference.lowercase_bases
    for region in progress(regions, desc="regions", unit="region"):
        ref_seq = reference.fetch(region.contig, region.start, region.end)
        block = vcf.region_block(region, ref_seq, reference)
        plan.counts.add(block.counts)
        if mode == "haplotypes":
            check_phase(block, region, samples, str(vcf.path))
            seqs, skipped = region_haplotypes(block, ref_seq, region)
            plan.overlapping_skipped += skipped
        else:
            seqs = region_variant_windows(block, ref_seq, region)
        for i, s in enumerate(seqs.sequences):
            if not s:
                raise BrainmmError(f"region {region.name!r} ({region.locus}): personal sequence {i} is empty "
                                   "after applying the variants; use a larger region")
        plan.regions.append(seqs)
    plan.lowercase_reference_bases = reference.lowercase_bases - lower_before
    return plan
