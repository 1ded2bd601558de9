"""Phased BGEN as a source of personal haplotypes (`brainmm genetics embed --bgen`), same interface as the
VCF `VariantSource`: per region, each haplotype carries its most probable allele of every variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainmm.data.genetics.reference import Reference
from brainmm.data.genetics.regions import Region
from brainmm.data.genetics.sources import BgenSource
from brainmm.data.genetics.variants import _BASES, VariantBlock, VariantCounts
from brainmm.errors import BrainmmError


class BgenVariantSource:
    """A BGEN (phased for haplotypes; unphased hets are flagged) with its samples, contigs and region blocks."""

    def __init__(self, path: str | Path, sample: str | Path | None = None,
                 contig_aliases: dict[str, str] | None = None) -> None:
        import bgen

        self._meta = BgenSource(path, sample, ref_option=None)  # haplotypes need REF first
        self.path = self._meta.path
        self.samples = self._meta.samples
        self.selected = list(self.samples)
        self._index = np.arange(len(self.samples))
        records = self._meta.variants.groupby(self._meta._record, sort=True).first()  # one row per BGEN record
        self._record_ids = records.index.to_numpy()
        self._records = records.reset_index(drop=True)
        self.contigs = set(self._records["contig"])
        self.aliases = dict(contig_aliases or {})
        for fasta_name, name in self.aliases.items():
            if name not in self.contigs:
                raise BrainmmError(f"contig alias {fasta_name}={name}: {name!r} is not a contig of BGEN {self.path}")
        self._reader = bgen.BgenReader(str(self.path), delay_parsing=False)

    def select_samples(self, names: list[str]) -> None:
        """Restrict reads to `names` (BGEN sample ids, in file order)."""
        position = {s: i for i, s in enumerate(self.samples)}
        unknown = [n for n in names if n not in position]
        if unknown:
            raise BrainmmError(f"BGEN {self.path}: unknown sample(s) {unknown[:5]}")
        self._index = np.asarray([position[n] for n in names])
        self.selected = list(names)

    def vcf_contig(self, contig: str) -> str:
        """The BGEN's name for a FASTA contig (through the aliases)."""
        name = self.aliases.get(contig, contig)
        if name in self.contigs:
            return name
        raise BrainmmError(f"contig {contig!r} (reference FASTA / regions) is not in BGEN {self.path} (contigs: "
                           f"{', '.join(sorted(self.contigs)[:10])}); map it with contig_aliases")

    def region_block(self, region: Region, ref_seq: str, reference: Reference) -> VariantBlock:
        """Records inside `region`: REF checked against the FASTA, haplotype alleles = most probable allele."""
        counts = VariantCounts()
        contig = self.vcf_contig(region.contig)
        recs = np.flatnonzero((self._records["contig"].to_numpy() == contig)
                              & (self._records["pos"].to_numpy() > region.start)
                              & (self._records["pos"].to_numpy() <= region.end))
        n = len(self._index)
        starts, alleles, labels, gts, unphased = [], [], [], [], []
        for r in recs:
            var = self._reader[int(self._record_ids[r])]
            ref = var.alleles[0].upper()
            start = var.pos - 1
            label = f"{var.chrom}:{var.pos} {var.alleles[0]}/{','.join(var.alleles[1:])}"
            counts.records += 1
            if start + len(ref) > region.end:
                counts.crossing_region_boundary += 1
                continue
            if ref_seq[start - region.start: start - region.start + len(ref)] != ref:
                raise BrainmmError(f"BGEN {self.path}: REF allele of {label} does not match the reference FASTA "
                                   f"{reference.path}; wrong genome build, or is the first allele not REF?")
            seqs: list[str | None] = [ref]
            for alt in var.alleles[1:]:
                up = alt.upper()
                seqs.append(up if _BASES.match(up) else None)
                counts.symbolic_alleles += seqs[-1] is None
            counts.multiallelic += len(var.alleles) > 2
            k = len(var.alleles)
            probs = var.probabilities[self._index]
            missing = np.isnan(probs).any(axis=1)
            counts.missing_alleles += 2 * int(missing.sum())
            if var.is_phased:
                gt = np.nan_to_num(probs).reshape(n, -1, k)[:, :2].argmax(axis=2)
                het_unph = np.zeros(n, dtype=bool)
            else:  # unphased diploid: most probable genotype, hets flagged as unphased
                order = [(a, b) for b in range(k) for a in range(b + 1)]
                best = np.nan_to_num(probs).argmax(axis=1)
                gt = np.asarray([order[i] for i in best])
                het_unph = gt[:, 0] != gt[:, 1]
            gt = np.where(missing[:, None], 0, gt)
            for j, s in enumerate(seqs):
                if s is None:
                    gt[gt == j] = 0
            starts.append(start)
            alleles.append(seqs)
            labels.append(label)
            gts.append(gt.astype(np.int16))
            unphased.append(het_unph & ~missing)
        gt_arr = np.stack(gts, axis=2) if gts else np.zeros((n, 2, 0), dtype=np.int16)
        unph = np.stack(unphased, axis=1) if unphased else np.zeros((n, 0), dtype=bool)
        return VariantBlock(np.asarray(starts, dtype=np.int64), alleles, labels, gt_arr, unph, counts)

    def close(self) -> None:
        """Close the BGEN."""
        self._reader.close()
