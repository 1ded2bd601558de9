"""Genotype sources: VCF/BCF, PLINK 1 .bed, PLINK 2 .pgen and BGEN behind one block-reading interface.

A source exposes its sample ids, a variant table (one row per ALT allele: variant_id, contig, pos, ref, alt,
rsid, info) and `blocks(samples, rows, size)`, which yields ALT-allele dosages [samples, rows in block] as
float32 with NaN for missing calls, reading only one block of variants at a time (a VCF is read twice: sites
only, then genotypes). Variant ids are `contig:pos:ref:alt` for every format.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from brainmm.data.genetics.sidecars import (
    allele_reference,
    check_allele_order,
    check_embedded_ids,
    read_oxford_sample,
    read_psam,
    read_pvar,
)
from brainmm.errors import BrainmmError
from brainmm.runtime import LOG, progress

VARIANT_COLUMNS = ["variant_id", "contig", "pos", "ref", "alt", "rsid", "info", "allele"]
INFO_KEYS = ("INFO", "R2", "DR2", "IMPINFO")  # imputation-quality INFO fields, first present wins


def variant_table(rows: list[tuple], source: Path | str) -> pd.DataFrame:
    """Variant table from (contig, pos, ref, alt, rsid, info, allele index) rows; duplicate ids are errors."""
    frame = pd.DataFrame(rows, columns=VARIANT_COLUMNS[1:])
    frame["contig"] = frame["contig"].astype(str)
    frame["pos"] = frame["pos"].astype(np.int64)
    frame["info"] = frame["info"].astype(float)
    frame.insert(0, "variant_id", frame["contig"] + ":" + frame["pos"].astype(str) + ":" + frame["ref"] + ":"
                 + frame["alt"])
    dup = frame["variant_id"][frame["variant_id"].duplicated()].unique().tolist()
    if dup:
        raise BrainmmError(f"genotypes {source}: variant(s) {dup[:5]} appear more than once; remove duplicates "
                           "(e.g. `bcftools norm -d exact`, `plink2 --rm-dup`)")
    if frame.empty:
        raise BrainmmError(f"genotypes {source}: no variants")
    return frame


class GenotypeSource:
    """Samples, variants and block reads of one genotype file set."""

    kind = "genotypes"
    path: Path
    samples: list[str]
    variants: pd.DataFrame
    phased: bool = False  # PLINK 2: any phased hard call; BGEN: the first variant is phased
    multiallelic_split: int = 0
    star_alleles_skipped: int = 0
    allele_check: dict | None = None  # BGEN: the allele-order comparison with a .pvar/.bim beside it

    def blocks(self, samples: np.ndarray, rows: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows of this block, dosages [len(samples), len(block)]) for `rows` of the variant table, in order.

        `samples` are increasing positions in `self.samples`.
        """
        for start in range(0, len(rows), size):
            block = rows[start:start + size]
            try:
                values = self._read(samples, block)
            except BrainmmError:
                raise
            except Exception as err:  # the readers raise RuntimeError/ValueError/OSError on damaged files
                raise BrainmmError(f"{self.kind} {self.path}: unreadable ({err.__class__.__name__}: {err}); "
                                   "truncated or damaged?") from None
            yield block, values
            del values  # one block alive at a time

    def _read(self, samples: np.ndarray, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles."""


def _vcf_info(rec) -> float:
    for key in INFO_KEYS:
        if key in rec.header.info and key in rec.info:
            value = rec.info[key]
            value = value[0] if isinstance(value, tuple) else value
            return float(value) if value is not None else np.nan
    return np.nan


class VcfSource(GenotypeSource):
    """A VCF/BCF (GT field), read twice: sites only for the variant table, then genotypes block by block.

    Multi-allelic records become one row per ALT allele (`*` alleles are skipped and counted); a haploid call
    counts as homozygous (0/2).
    """

    kind = "VCF"

    def __init__(self, path: str | Path) -> None:
        from brainmm.data.genetics.reference import file_compression

        self.path = Path(path)
        if not self.path.is_file():
            raise BrainmmError(f"VCF {self.path}: not found")
        if file_compression(self.path) == "gzip":
            raise BrainmmError(f"VCF {self.path}: gzip-compressed but not bgzip, which htslib cannot read; "
                               "recompress it with `bgzip` (or decompress it)")
        vcf = self._open()
        self.samples = list(vcf.header.samples)
        if not self.samples:
            vcf.close()
            raise BrainmmError(f"VCF {self.path}: no samples (no genotype columns); expected one per person")
        vcf.subset_samples([])
        rows = []
        for rec in self._records(vcf):
            alts = rec.alts or ()
            self.multiallelic_split += len(alts) > 1
            info = _vcf_info(rec)
            for a, alt in enumerate(alts, 1):
                if alt == "*":
                    self.star_alleles_skipped += 1
                    continue
                rows.append((rec.chrom, rec.pos, rec.ref, alt, rec.id or "", info, a))
        if not rows:
            raise BrainmmError(f"VCF {self.path}: no variant records")
        self.variants = variant_table(rows, self.path)
        if self.multiallelic_split:
            LOG.info("VCF %s: %d multi-allelic records split into one column per ALT allele", self.path,
                     self.multiallelic_split)

    def _open(self):
        import pysam

        try:
            return pysam.VariantFile(str(self.path))
        except (OSError, ValueError, NotImplementedError) as err:  # plain gzip: "seek not implemented"
            hint = (" (gzip but not bgzip? recompress with `bgzip`)" if "seek" in str(err) or "compress" in str(err)
                    else "")
            raise BrainmmError(f"VCF {self.path}: unreadable ({err}){hint}") from None

    def _records(self, vcf):
        try:
            yield from vcf
        except OSError as err:
            raise BrainmmError(f"VCF {self.path}: unreadable ({err}); is it bgzip-compressed (not plain "
                               "gzip)?") from None
        finally:
            vcf.close()

    def blocks(self, samples: np.ndarray, rows: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Dosage blocks from one pass over the records (rows must be increasing)."""
        vcf = self._open()
        vcf.subset_samples([self.samples[i] for i in samples])
        n = len(samples)
        wanted = np.zeros(len(self.variants), dtype=bool)
        wanted[rows] = True
        out = np.empty((n, min(size, len(rows))), dtype=np.float32)
        row = filled = start = 0
        for rec in progress(self._records(vcf), desc="reading VCF", unit="record"):
            if filled == len(rows):
                break
            alts = [a for a in (rec.alts or ()) if a != "*"]
            if not wanted[row:row + len(alts)].any():
                row += len(alts)
                continue
            gt = _diploid_gt_text(rec, n)
            if gt is None:
                gt = self._gt_calls(rec, n)
            missing = (gt < 0).any(axis=1)
            for a, alt in enumerate(rec.alts or (), 1):
                if alt == "*":
                    continue
                if wanted[row]:
                    dosage = (gt == a).sum(axis=1).astype(np.float32)
                    dosage[missing] = np.nan
                    out[:, filled - start] = dosage
                    filled += 1
                    if filled - start == out.shape[1]:
                        yield rows[start:filled], out
                        start = filled
                        out = np.empty((n, min(size, len(rows) - filled)), dtype=np.float32)
                row += 1

    def _gt_calls(self, rec, n: int) -> np.ndarray:
        """[n, 2] allele indices of one record from pysam's calls (-1: missing); the reference for the text path."""
        flat = []
        for call in rec.samples.values():
            idx = call.allele_indices
            if len(idx) == 1:
                idx = idx * 2  # haploid call counts as homozygous (0/2 coding)
            elif len(idx) != 2:
                raise BrainmmError(f"VCF {self.path}: {rec.chrom}:{rec.pos} has a call of ploidy {len(idx)}; "
                                   "expected diploid or haploid calls")
            flat.extend(-1 if a is None else a for a in idx)
        return np.asarray(flat, dtype=np.int16).reshape(n, 2)


def _diploid_gt_text(rec, n: int) -> np.ndarray | None:
    """[n, 2] allele indices (-1: missing) parsed from the record's VCF text in one vectorised pass when its FORMAT
    is GT alone and every call is 3 characters (`0|1`, `1/1`, `./.`: single-digit alleles, diploid); None otherwise
    (haploid, 10+ alleles, other FORMAT fields: the per-call path). 10,000 samples: 16-19x the per-call loop."""
    line = str(rec)
    parts = line.rstrip("\n").split("\t", 9)
    if len(parts) < 10 or parts[8] != "GT" or len(parts[9]) != 4 * n - 1:
        return None
    calls = np.frombuffer((parts[9] + "\t").encode("ascii"), dtype=np.uint8).reshape(n, 4)
    sep, tab = calls[:, 1], calls[:, 3]
    if not (((sep == ord("|")) | (sep == ord("/"))).all() and (tab == ord("\t")).all()):
        return None
    alleles = calls[:, [0, 2]].astype(np.int16) - ord("0")
    dot = alleles == ord(".") - ord("0")
    if ((alleles < 0) | (alleles > 9))[~dot].any():
        return None
    alleles[dot] = -1
    return alleles


class BedSource(GenotypeSource):
    """PLINK 1 .bed/.bim/.fam (bed-reader); dosage of allele 1 (.bim column 5), sample id = IID."""

    kind = "PLINK genotypes"

    def __init__(self, path: str | Path) -> None:
        from bed_reader import open_bed

        self.path = Path(path)
        check_plink_magic(self.path, self.kind, ".bed", ".bim and .fam")
        for ext in (".bed", ".bim", ".fam"):
            f = self.path.with_suffix(ext)
            if not f.is_file():
                raise BrainmmError(f"PLINK genotypes {self.path}: {f.name} not found (expected .bed, .bim and .fam)")
        try:
            self._bed = open_bed(self.path)
            self.samples = [str(s) for s in self._bed.iid]
            rows = list(zip([str(c) for c in self._bed.chromosome], self._bed.bp_position.astype(int),
                            [str(a) for a in self._bed.allele_2], [str(a) for a in self._bed.allele_1],
                            [str(s) for s in self._bed.sid], [np.nan] * self._bed.sid_count,
                            [1] * self._bed.sid_count))
        except Exception as err:  # bed-reader raises ValueError/OSError/RuntimeError for broken trios
            raise BrainmmError(f"PLINK genotypes {self.path}: unreadable ({err.__class__.__name__}: {err})") from None
        self.variants = variant_table(rows, self.path)

    def _read(self, samples: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self._bed.read(index=np.s_[samples, rows], dtype="float32", order="F", num_threads=1)  # variant-major

    def close(self) -> None:
        """Close the .bed."""
        self._bed.__exit__(None, None, None)


PLINK_MAGIC = b"\x6c\x1b"  # the first two bytes of every .bed and .pgen


def check_plink_magic(path: Path, kind: str, ext: str, beside: str) -> None:
    """A PLINK 1 .bed / PLINK 2 .pgen starts with 0x6c 0x1b; anything else is named as the wrong file."""
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head != PLINK_MAGIC:
        raise BrainmmError(f"{kind} {path}: not a {ext} file (it does not start with the PLINK magic bytes 6c 1b); "
                           f"expected the binary {ext} with {beside} of the same name beside it")


def _info_value(field: str) -> float:
    for item in str(field).split(";"):
        key, _, value = item.partition("=")
        if key in INFO_KEYS and value:
            try:
                return float(value.split(",")[0])
            except ValueError:
                return np.nan
    return np.nan


class PgenSource(GenotypeSource):
    """PLINK 2 .pgen/.pvar/.psam (pgenlib); dosages of each ALT allele (hard calls or stored dosages)."""

    kind = "PLINK 2 genotypes"

    def __init__(self, path: str | Path) -> None:
        import pgenlib

        self.path = Path(path)
        if not self.path.is_file():
            raise BrainmmError(f"PLINK 2 genotypes {self.path}: not found")
        check_plink_magic(self.path, self.kind, ".pgen", ".pvar and .psam")
        pvar = read_pvar(self.path.with_suffix(".pvar"))
        psam = self.path.with_suffix(".psam")
        self.samples = read_psam(psam)
        info = pvar["INFO"].map(_info_value) if "INFO" in pvar else pd.Series(np.nan, index=pvar.index)
        rows, offsets = [], [0]
        for rec in zip(pvar["CHROM"], pvar["POS"], pvar["REF"], pvar["ALT"], pvar["ID"], info):
            alts = rec[3].split(",")
            self.multiallelic_split += len(alts) > 1
            for a, alt in enumerate(alts, 1):
                rows.append((rec[0], int(rec[1]), rec[2], alt, rec[4], rec[5], a))
            offsets.append(offsets[-1] + 1 + len(alts))
        self.variants = variant_table(rows, self.path)
        self._record = np.repeat(np.arange(len(pvar)), np.diff(offsets) - 1)
        allele_offsets = np.asarray(offsets, dtype=np.uintp) if self.multiallelic_split else None
        try:
            self._pgen = pgenlib.PgenReader(str(self.path).encode(), raw_sample_ct=len(self.samples),
                                            variant_ct=len(pvar), allele_idx_offsets=allele_offsets)
        except RuntimeError as err:
            msg = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else str(err)
            raise BrainmmError(f"PLINK 2 genotypes {self.path}: unreadable with {psam.name} ({len(self.samples)} "
                               f"samples) and {self.path.with_suffix('.pvar').name} ({len(pvar)} variants): "
                               f"{msg.strip()}") from None
        self.phased = bool(self._pgen.hardcall_phase_present())
        self._subset: np.ndarray | None = None
        self._negative = np.empty((0, 0), bool)

    def _read(self, samples: np.ndarray, rows: np.ndarray) -> np.ndarray:
        subset = samples.astype(np.uint32)
        if self._subset is None or not np.array_equal(subset, self._subset):
            self._pgen.change_sample_subset(None if len(subset) == len(self.samples) else subset)
            self._subset = subset
        records = self._record[rows].astype(np.uint32)
        alleles = self.variants["allele"].to_numpy()[rows]
        out = np.empty((len(rows), len(samples)), dtype=np.float32)
        first = alleles == 1
        if first.all():
            self._pgen.read_dosages_list(records, out)
        elif first.any():
            buf = np.empty((int(first.sum()), len(samples)), dtype=np.float32)
            self._pgen.read_dosages_list(records[first], buf)
            out[first] = buf
        for j in np.flatnonzero(~first):
            self._pgen.read_dosages(int(records[j]), out[j], int(alleles[j]))
        if self._negative.shape != out.shape:  # kept from block to block: a fresh one costs its page faults
            self._negative = np.empty(out.shape, bool)
        np.copyto(out, np.float32(np.nan), where=np.less(out, 0, out=self._negative))  # pgenlib writes -9: missing
        return out.T

    def close(self) -> None:
        """Close the .pgen."""
        self._pgen.close()


def _diploid_counts(n_alleles: int) -> np.ndarray:
    """[genotypes, alleles] allele counts of unphased diploid genotypes in BGEN order (colex)."""
    rows = []
    for b in range(n_alleles):
        for a in range(b + 1):
            counts = np.zeros(n_alleles)
            counts[a] += 1
            counts[b] += 1
            rows.append(counts)
    return np.asarray(rows)


class BgenSource(GenotypeSource):
    """BGEN 1.1/1.2/1.3 (layouts 1 and 2; zlib, zstd or none; 1-32 bits; phased or not) via the `bgen` reader.

    `ref="first"`: the first allele is REF and each further allele an ALT (UK Biobank and `plink2 --export
    bgen-1.2 ref-first` convention); `ref="last"`: the last allele is REF (plink2's default BGEN export, ALT
    first). Dosage = expected count of the ALT allele from the probabilities. Sample ids stored in the BGEN must
    equal its .sample file's; a .pvar/.bim of the same name beside it is checked for the allele order.
    """

    kind = "BGEN"

    def __init__(self, path: str | Path, sample: str | Path | None = None, ref: str = "first",
                 ref_option: str | None = "bgen_ref (--bgen-ref)") -> None:
        import bgen

        self.path = Path(path)
        if not self.path.is_file():
            raise BrainmmError(f"BGEN {self.path}: not found")
        self._check_header()
        try:
            self._bgen = bgen.BgenReader(str(self.path), delay_parsing=True)
            n = self._bgen.header.nsamples
            embedded = list(self._bgen.samples) if self._bgen.header.has_sample_ids else None
        except Exception as err:
            raise BrainmmError(f"BGEN {self.path}: unreadable ({err.__class__.__name__}: {err})") from None
        if sample and not Path(sample).is_file():
            raise BrainmmError(f"BGEN samples {sample}: not found or not a file (expected the Oxford .sample file of "
                               f"{self.path.name})")
        sample = Path(sample) if sample else self.path.with_suffix(".sample")
        if ref not in ("first", "last"):
            raise BrainmmError(f"config field 'bgen_ref': expected 'first' or 'last', got {ref!r}")
        self.ref_allele = ref
        if sample.is_file():
            self.samples = read_oxford_sample(sample)
            if len(self.samples) != n:
                raise BrainmmError(f"BGEN samples {sample}: {len(self.samples)} samples, but {self.path.name} holds "
                                   f"{n}; expected the .sample file of this BGEN")
            if embedded is not None:
                check_embedded_ids(self.path, sample, embedded, self.samples)
        elif embedded is not None and len(embedded) == n:
            self.samples = embedded
        else:
            raise BrainmmError(f"BGEN {self.path}: sample file {sample} not found and the BGEN stores no sample "
                               "ids; pass --sample FILE.sample")
        rows, self._offsets = [], []
        try:
            for rec, var in enumerate(self._bgen):
                alleles = var.alleles
                self.multiallelic_split += len(alleles) > 2
                if rec == 0:  # reading the phase flag decompresses the variant, so only the first one
                    self.phased = bool(var.is_phased)
                r = 0 if ref == "first" else len(alleles) - 1
                for a, alt in enumerate(alleles):
                    if a != r:
                        rows.append((var.chrom, var.pos, alleles[r], alt, var.rsid or var.varid, np.nan, a))
                        self._offsets.append(rec)
        except Exception as err:
            raise BrainmmError(f"BGEN {self.path}: unreadable ({err.__class__.__name__}: {err}); truncated or "
                               "damaged?") from None
        finally:
            self._bgen.close()
        self.variants = variant_table(rows, self.path)
        self._record = np.asarray(self._offsets, dtype=np.int64)
        reference = allele_reference(self.path)
        self.allele_check = (check_allele_order(self.variants, self.path, reference, ref_option)
                             if reference else None)

    def _check_header(self) -> None:
        """Layout (1 or 2) and compression (none, zlib, zstd) from the header flags, before the reader sees them."""
        with open(self.path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BrainmmError(f"BGEN {self.path}: truncated (shorter than its header)")
            length = int.from_bytes(head[4:8], "little")
            fh.seek(4 + length - 4)
            flags_bytes = fh.read(4)
        if len(flags_bytes) < 4 or length < 20:
            raise BrainmmError(f"BGEN {self.path}: truncated or not a BGEN file (header length {length})")
        flags = int.from_bytes(flags_bytes, "little")
        compression, layout = flags & 3, (flags >> 2) & 15
        if compression == 3 or layout not in (1, 2):
            raise BrainmmError(f"BGEN {self.path}: unsupported layout {layout} / compression code {compression}; "
                               "expected layout 1 or 2 with compression 0 (none), 1 (zlib) or 2 (zstd)")

    def blocks(self, samples: np.ndarray, rows: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Dosage blocks, reading the file once in order (rows must be increasing)."""
        import bgen

        alleles = self.variants["allele"].to_numpy()
        full = len(samples) == len(self.samples)
        wanted: dict[int, list[int]] = {}
        for j, row in enumerate(rows):
            wanted.setdefault(int(self._record[row]), []).append(j)
        out = np.empty((min(size, len(rows)), len(samples)), dtype=np.float32)  # variant-major, as .pgen blocks
        done = start = 0
        try:
            reader = bgen.BgenReader(str(self.path), delay_parsing=True)
            for rec, var in enumerate(reader):
                if done == len(rows):
                    break
                for j in wanted.get(rec, ()):
                    dosage = self._dosage(var, int(alleles[rows[j]]))
                    out[j - start] = dosage if full else dosage[samples]
                    done += 1
                    if done - start == out.shape[0]:
                        yield rows[start:done], out.T
                        start = done
                        out = np.empty((min(size, len(rows) - done), len(samples)), dtype=np.float32)
            reader.close()
        except Exception as err:
            raise BrainmmError(f"BGEN {self.path}: unreadable ({err.__class__.__name__}: {err}); truncated or "
                               "damaged?") from None
        if done != len(rows):
            raise BrainmmError(f"BGEN {self.path}: ended before all its variants were read; truncated?")

    @staticmethod
    def _dosage(var, a: int) -> np.ndarray:
        n_alleles = len(var.alleles)
        if n_alleles == 2:
            return var.alt_dosage if a == 1 else 2.0 - var.alt_dosage
        probs = var.probabilities.astype(np.float64)
        if var.is_phased:
            return probs.reshape(len(probs), -1, n_alleles)[:, :, a].sum(axis=1)
        return probs @ _diploid_counts(n_alleles)[:, a]



def open_source(vcf: str | None = None, bed: str | None = None, pgen: str | None = None, bgen: str | None = None,
                sample: str | None = None, bgen_ref: str = "first") -> GenotypeSource:
    """The genotype source for whichever one path is given."""
    if vcf:
        return VcfSource(vcf)
    if bed:
        return BedSource(bed)
    if pgen:
        return PgenSource(pgen)
    if bgen:
        return BgenSource(bgen, sample, bgen_ref)
    raise BrainmmError("genotypes: give one source (--vcf, --bed, --pgen or --bgen)")
