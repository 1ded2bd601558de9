"""Byte-reproducible writers for the cohort folder: bgzipped+tabixed VCF, npz, FASTA(+fai), BED."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps so the same arrays give the same bytes
VCF_CHUNK_CALLS = 5_000_000  # genotype calls formatted at a time when writing a VCF
GT_UNPHASED = np.array(["0/0", "0/1", "1/1", "./."])


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Like np.savez_compressed, but with fixed zip timestamps (byte-identical for identical arrays)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)
    return path


def write_vcf(
    path: Path,
    sample_ids: list[str],
    chrom: np.ndarray,
    pos: np.ndarray,
    ids: np.ndarray,
    ref: np.ndarray,
    alt: np.ndarray,
    contig_lengths: dict[str, int],
    source: str,
    dosages: np.ndarray | None = None,
    haplotypes: np.ndarray | None = None,
) -> Path:
    """Write a bgzipped, tabix-indexed VCF with GT only: unphased from `dosages` [N, P] (NaN = './.') or
    phased from `haplotypes` [N, 2, P]. `path` must end in .vcf.gz; the index is `path`.tbi."""
    import pysam

    if (dosages is None) == (haplotypes is None):
        raise ValueError("write_vcf: pass exactly one of dosages or haplotypes")
    header = ["##fileformat=VCFv4.2", f"##source={source}"]
    header += [f"##contig=<ID={c},length={n}>" for c, n in contig_lengths.items()]
    header.append('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">')
    header.append("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *sample_ids]))
    plain = path.with_name(path.name.removesuffix(".gz"))
    n_samples = len(sample_ids)
    step = max(1, VCF_CHUNK_CALLS // max(n_samples, 1))  # variants per chunk: bounds memory at large N x P
    with open(plain, "w") as fh:
        fh.write("\n".join(header) + "\n")
        for start in range(0, len(pos), step):
            part = slice(start, start + step)
            if dosages is not None:
                d = dosages[:, part]
                codes = np.where(np.isfinite(d), np.nan_to_num(d), 3).astype(np.int64).T  # [p, N]
                calls = GT_UNPHASED[codes]
            else:
                h = haplotypes[:, :, part]
                calls = np.char.add(np.char.add(h[:, 0].T.astype(str), "|"), h[:, 1].T.astype(str))
            fh.writelines(
                f"{c}\t{p}\t{i}\t{r}\t{a}\t.\tPASS\t.\tGT\t" + "\t".join(row) + "\n"
                for c, p, i, r, a, row in zip(chrom[part], pos[part], ids[part], ref[part], alt[part], calls.tolist())
            )
    pysam.tabix_index(str(plain), preset="vcf", force=True)  # bgzips to `path`, removes `plain`, writes .tbi
    return path


def write_fasta(path: Path, sequences: dict[str, str], width: int = 60) -> Path:
    """FASTA with fixed line width plus a samtools .fai index."""
    import pysam

    with open(path, "w") as fh:
        for name, seq in sequences.items():
            fh.write(f">{name}\n")
            fh.writelines(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
    pysam.faidx(str(path))
    return path


def write_bed(path: Path, regions: list[tuple[str, int, int]]) -> Path:
    """BED3 + name (region_1, ...): 0-based half-open."""
    path.write_text("".join(f"{c}\t{s}\t{e}\tregion_{i + 1}\n" for i, (c, s, e) in enumerate(regions)))
    return path
