"""Synthetic genetics inputs for tests, demos and benchmarks: FASTA, phased VCFs, coalescent haplotypes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainmm.data.genetics.regions import Region
from brainmm.io import atomic_file, atomic_write_text

Genotype = tuple[int | None, ...] | None


@dataclass
class VcfRecord:
    """One VCF line: 1-based `pos`, alleles, and one genotype per sample (None: missing `./.`)."""

    contig: str
    pos: int
    ref: str
    alts: tuple[str, ...]
    genotypes: Sequence[Genotype]
    phased: bool = True
    id: str | None = None


def random_sequence(length: int, rng: np.random.Generator) -> str:
    """Uniform random A/C/G/T."""
    return "".join(np.array(list("ACGT"))[rng.integers(0, 4, size=length)])


def write_fasta(path: str | Path, contigs: dict[str, str], width: int = 60) -> Path:
    """Write a FASTA (atomically) and its .fai index."""
    import pysam

    path = Path(path)
    lines = []
    for name, seq in contigs.items():
        lines.append(f">{name}")
        lines.extend(seq[i: i + width] for i in range(0, len(seq), width))
    atomic_write_text(path, "\n".join(lines) + "\n")
    pysam.faidx(str(path))
    return path


def write_vcf(
    path: str | Path,
    contigs: dict[str, int],
    samples: list[str],
    records: Sequence[VcfRecord],
    index: bool = True,
) -> Path:
    """Write a bgzip-compressed VCF (`.vcf.gz`) with GT only, plus its tabix index when `index`."""
    import pysam

    path = Path(path)
    header = pysam.VariantHeader()
    for name, length in contigs.items():
        header.contigs.add(name, length=length)
    header.formats.add("GT", 1, "String", "Genotype")
    for s in samples:
        header.add_sample(s)
    with atomic_file(path, suffix=".vcf.gz") as tmp:
        with pysam.VariantFile(str(tmp), "wz", header=header) as out:
            for r in records:
                rec = out.new_record(contig=r.contig, start=r.pos - 1, alleles=(r.ref, *r.alts), id=r.id)
                for name, gt in zip(samples, r.genotypes):
                    call = rec.samples[name]
                    call["GT"] = (None, None) if gt is None else tuple(gt)
                    call.phased = r.phased and gt is not None
                out.write(rec)
    if index:
        pysam.tabix_index(str(path), preset="vcf", force=True)
    return path


def coalescent_haplotypes(n_haplotypes: int, theta: float, rng: np.random.Generator,
                          growth: float = 0.0) -> np.ndarray:
    """Carrier matrix [mutations, haplotypes] from a neutral Kingman coalescent with infinite sites.

    `theta` is the population mutation rate of the whole window (4 N0 mu L, N0 = present size). With
    `growth` > 0 the population grew exponentially (size N0 exp(-growth t) at time t in the past, time in
    2 N0 generations; Griffiths-Tavare time change), which lengthens external branches so that most
    variants are rare, as in human samples. No recombination inside the window.
    """
    n = n_haplotypes
    members = list(np.eye(n, dtype=bool))  # leaf set of each node
    active = list(range(n))
    birth = np.zeros(2 * n - 1)
    carriers = []
    tau = 0.0  # time on the constant-size scale
    while len(active) > 1:
        k = len(active)
        tau += rng.exponential(2.0 / (k * (k - 1)))
        time = np.log1p(growth * tau) / growth if growth > 0 else tau
        i, j = sorted(rng.choice(k, size=2, replace=False), reverse=True)
        a, b = active.pop(i), active.pop(j)
        for child in (a, b):
            for _ in range(rng.poisson(theta / 2 * (time - birth[child]))):
                carriers.append(members[child])
        members.append(members[a] | members[b])
        birth[len(members) - 1] = time
        active.append(len(members) - 1)
    return np.array(carriers, dtype=bool).reshape(-1, n)


def simulate_region_records(
    region: Region,
    ref_seq: str,
    n_samples: int,
    rng: np.random.Generator,
    theta_per_bp: float = 4e-3,
    growth: float = 100.0,
    indel_fraction: float = 0.1,
) -> list[VcfRecord]:
    """Phased records for one region: coalescent carriers, SNVs and short indels at distinct positions."""
    carriers = coalescent_haplotypes(2 * n_samples, theta_per_bp * region.length, rng, growth)
    records = []
    used = np.zeros(region.length + 8, dtype=bool)
    for hap in carriers:
        for _ in range(20):  # find a free position (distinct, non-overlapping spans)
            off = int(rng.integers(1, region.length - 6))
            if not used[off: off + 6].any():
                break
        else:
            continue
        base = ref_seq[off]
        if rng.random() < indel_fraction:
            size = int(rng.integers(1, 5))
            if rng.random() < 0.5:
                ref, alt = base, base + random_sequence(size, rng)
            else:
                ref, alt = ref_seq[off: off + 1 + size], base
        else:
            ref, alt = base, "ACGT".replace(base, "")[int(rng.integers(0, 3))]
        used[off: off + len(ref) + 1] = True
        gt = hap.astype(int).reshape(n_samples, 2)
        records.append(VcfRecord(region.contig, region.start + off + 1, ref, (alt,), [tuple(g) for g in gt]))
    records.sort(key=lambda r: r.pos)
    return records


def simulate_vcf_cohort(
    folder: str | Path,
    n_samples: int,
    n_regions: int,
    region_length: int = 1000,
    seed: int = 0,
    theta_per_bp: float = 4e-3,
    growth: float = 100.0,
) -> dict[str, Path]:
    """A random reference (one contig), regions BED and a phased VCF with coalescent allele frequencies.

    Defaults give about 10 variants per kb among 1000 people, ~85 % of them with AF < 1 % (growing
    population). Returns paths {'fasta', 'vcf', 'regions'}; regions are separated by 500 bp of flanks.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gap = 500
    length = gap + n_regions * (region_length + gap)
    genome = random_sequence(length, rng)
    regions = [Region(f"region{i:03d}", "sim1", gap + i * (region_length + gap),
                      gap + i * (region_length + gap) + region_length) for i in range(n_regions)]
    samples = [f"S{i:05d}" for i in range(n_samples)]
    records = []
    for region in regions:
        records += simulate_region_records(region, genome[region.start: region.end], n_samples, rng, theta_per_bp,
                                           growth)
    fasta = write_fasta(folder / "reference.fa", {"sim1": genome})
    vcf = write_vcf(folder / "cohort.vcf.gz", {"sim1": length}, samples, records)
    bed = atomic_write_text(folder / "regions.bed",
                            "".join(f"{r.contig}\t{r.start}\t{r.end}\t{r.name}\n" for r in regions))
    return {"fasta": fasta, "vcf": vcf, "regions": bed}
