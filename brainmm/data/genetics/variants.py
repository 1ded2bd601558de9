"""VCF/BCF access for haplotype building: contig names, sample checks, per-region genotype blocks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainmm.data.genetics.reference import Reference, file_compression
from brainmm.data.genetics.regions import Region
from brainmm.errors import BrainmmError
from brainmm.runtime import LOG

_BASES = re.compile(r"^[ACGTN]+$")


@dataclass
class VariantCounts:
    """What happened to the VCF records read for haplotypes (summed over regions)."""

    records: int = 0
    crossing_region_boundary: int = 0
    multiallelic: int = 0
    symbolic_alleles: int = 0
    missing_alleles: int = 0
    haploid_calls: int = 0
    lowercase_alleles: int = 0

    def add(self, other: VariantCounts) -> None:
        """Add another block's counts to these."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class VariantBlock:
    """The records of one region (all inside it) and the selected samples' genotypes.

    `alleles[j]` lists REF then each ALT of record j; an ALT that is not a plain sequence (symbolic `<DEL>`,
    `*`, breakends) is None and is treated as the reference allele. `gt[s, h, j]` is the allele index on
    haplotype h of sample s (0 where the call is missing), `het_unphased[s, j]` flags heterozygous calls
    written without phase.
    """

    starts: np.ndarray
    alleles: list[list[str | None]]
    labels: list[str]
    gt: np.ndarray
    het_unphased: np.ndarray
    counts: VariantCounts = field(default_factory=VariantCounts)

    @property
    def n_records(self) -> int:
        """Number of records kept for this region."""
        return len(self.alleles)


def _check_indexed_vcf(path: Path) -> None:
    kind = file_compression(path)
    if kind != "bgzf":
        what = "plain text" if kind == "plain" else "gzip-compressed but not bgzip"
        raise BrainmmError(
            f"VCF {path}: {what}; haplotypes need a bgzip-compressed, indexed VCF/BCF "
            f"(run `bgzip` on the plain VCF, then `tabix -p vcf`)"
        )
    if any(Path(f"{path}{ext}").is_file() for ext in (".tbi", ".csi")):
        return
    import pysam
    from pysam import bcftools

    LOG.info("VCF %s: building the index", path)
    try:
        if path.name.endswith(".bcf"):
            bcftools.index(str(path))
        else:
            pysam.tabix_index(str(path), preset="vcf", force=True)
    except (OSError, pysam.utils.SamtoolsError) as err:
        raise BrainmmError(
            f"VCF {path}: no index (.tbi/.csi) and building one failed ({' '.join(str(err).split())[:200]}); "
            f"run `bcftools index {path}` (the file must be bgzip-compressed and sorted)"
        ) from None


class VariantSource:
    """An indexed VCF/BCF restricted to chosen samples, with contig aliases and REF checks."""

    def __init__(self, path: str | Path, contig_aliases: dict[str, str] | None = None) -> None:
        import pysam

        self.path = Path(path)
        if not self.path.is_file():
            raise BrainmmError(f"VCF {self.path}: not found")
        _check_indexed_vcf(self.path)
        try:
            self._vcf = pysam.VariantFile(str(self.path))
        except (OSError, ValueError) as err:
            raise BrainmmError(f"VCF {self.path}: unreadable ({err})") from None
        self.samples: list[str] = list(self._vcf.header.samples)
        if not self.samples:
            raise BrainmmError(f"VCF {self.path}: no samples (no genotype columns); expected one per person")
        index = self._vcf.index
        self.contigs: set[str] = set(self._vcf.header.contigs) | set(index.keys() if index is not None else ())
        if index is None or next(self._first_record(), None) is None:
            raise BrainmmError(f"VCF {self.path}: no variant records")
        self._vcf.close()
        self._vcf = pysam.VariantFile(str(self.path))  # a fresh handle: samples can be subset before fetching
        self.selected = list(self.samples)
        self.aliases = dict(contig_aliases or {})
        for fasta_name, vcf_name in self.aliases.items():
            if vcf_name not in self.contigs:
                raise BrainmmError(f"contig alias {fasta_name}={vcf_name}: {vcf_name!r} is not a contig of VCF "
                                   f"{self.path} (contigs: {', '.join(sorted(self.contigs)[:10])})")

    def _first_record(self):
        for contig in self._vcf.index.keys():
            yield from self._vcf.fetch(contig)

    def select_samples(self, names: list[str]) -> None:
        """Restrict genotype reads to `names` (VCF sample ids), in that order of the VCF header."""
        known, wanted = set(self.samples), set(names)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BrainmmError(f"VCF {self.path}: unknown sample(s) {unknown[:5]}"
                               f"{' ...' if len(unknown) > 5 else ''} (the VCF has {len(self.samples)} samples)")
        order = [s for s in self.samples if s in wanted]
        if order != list(names):
            raise BrainmmError(f"VCF {self.path}: samples must be selected in VCF header order")
        self._vcf.subset_samples(order)
        self.selected = order

    def vcf_contig(self, contig: str) -> str:
        """The VCF's name for FASTA contig `contig` (through the aliases); raises with a hint when it differs."""
        name = self.aliases.get(contig, contig)
        if name in self.contigs:
            return name
        other = contig[3:] if contig.startswith("chr") else f"chr{contig}"
        hint = (f"; the VCF calls it {other!r}: add the alias {contig}={other} (config "
                f"inputs.contig_aliases, flag --contig-alias)") if other in self.contigs else ""
        raise BrainmmError(
            f"contig {contig!r} (reference FASTA / regions) is not in VCF {self.path} "
            f"(VCF contigs: {', '.join(sorted(self.contigs)[:10])}){hint}"
        )

    def region_block(self, region: Region, ref_seq: str, reference: Reference) -> VariantBlock:
        """Records of `region` with the selected samples' genotypes; REF alleles checked against the FASTA.

        Records not entirely inside the region (e.g. a deletion crossing its start or end) are skipped and
        counted; every record that overlaps the region has its REF checked.
        """
        counts = VariantCounts()
        starts, alleles, labels, gts, unphased = [], [], [], [], []
        n = len(self.selected)
        contig = self.vcf_contig(region.contig)
        for rec in self._vcf.fetch(contig, region.start, region.end):
            counts.records += 1
            ref = rec.ref.upper()
            if rec.ref != ref:
                counts.lowercase_alleles += 1
            label = f"{rec.chrom}:{rec.pos} {rec.ref}/{','.join(rec.alts or ('.',))}"
            inside = rec.start >= region.start and rec.stop <= region.end
            ref_end = rec.start + len(ref)  # rec.stop follows INFO/END for symbolic alleles
            fasta = (ref_seq[rec.start - region.start: ref_end - region.start] if inside
                     else reference.fetch(region.contig, rec.start, min(ref_end, reference.contigs[region.contig])))
            if fasta != ref:
                raise BrainmmError(
                    f"VCF {self.path}: REF allele of {label} does not match the reference FASTA {reference.path} "
                    f"(FASTA has {fasta!r} at {region.contig}:{rec.pos}); wrong genome build or FASTA?"
                )
            if not inside:
                counts.crossing_region_boundary += 1
                continue
            alts = list(rec.alts or ())
            if len(alts) > 1:
                counts.multiallelic += 1
            allele_seqs: list[str | None] = [ref]
            for alt in alts:
                up = alt.upper()
                if up != alt:
                    counts.lowercase_alleles += 1
                if _BASES.match(up):
                    allele_seqs.append(up)
                elif alt == "*" or alt.startswith("<") or "[" in alt or "]" in alt or alt == ".":
                    counts.symbolic_alleles += 1
                    allele_seqs.append(None)
                else:
                    raise BrainmmError(f"VCF {self.path}: ALT allele {alt!r} of {label} has characters other than "
                                       "A, C, G, T, N (IUPAC codes are not allowed in alleles)")
            gt = np.zeros((n, 2), dtype=np.int16)
            het_unphased = np.zeros(n, dtype=bool)
            for i, call in enumerate(rec.samples.values()):
                idx = call.allele_indices
                if len(idx) == 1:
                    counts.haploid_calls += 1
                    idx = (idx[0], idx[0])
                elif len(idx) != 2:
                    raise BrainmmError(f"VCF {self.path}: {label} sample {self.selected[i]!r} has ploidy "
                                       f"{len(idx)}; expected diploid or haploid calls")
                a, b = idx
                if a is None or b is None:
                    counts.missing_alleles += (a is None) + (b is None)
                    a, b = a or 0, b or 0
                gt[i, 0], gt[i, 1] = a, b
                het_unphased[i] = a != b and not call.phased
            starts.append(rec.start)
            alleles.append(allele_seqs)
            labels.append(label)
            gts.append(gt)
            unphased.append(het_unphased)
        gt_arr = np.stack(gts, axis=2) if gts else np.zeros((n, 2, 0), dtype=np.int16)
        unph_arr = np.stack(unphased, axis=1) if unphased else np.zeros((n, 0), dtype=bool)
        # Symbolic alleles behave as the reference allele.
        for j, seqs in enumerate(alleles):
            for k, s in enumerate(seqs):
                if s is None:
                    gt_arr[:, :, j][gt_arr[:, :, j] == k] = 0
        return VariantBlock(np.asarray(starts, dtype=np.int64), alleles, labels, gt_arr, unph_arr, counts)

    def close(self) -> None:
        """Close the file handle."""
        self._vcf.close()
