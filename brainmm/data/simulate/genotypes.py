"""Genotypes for the simulated cohort: LD-block haplotypes (with sibships) or a real VCF/npz base."""

from __future__ import annotations

import gzip
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainmm.data.simulate.config import GenotypeConfig, PopulationConfig
from brainmm.errors import BrainmmError

BASES = np.array(list("ACGT"))
FLANK_BP = 10  # no SNP within this many bp of a region edge
DRAW_ELEMENTS = 4_000_000  # latent Gaussians per chunk when drawing haplotypes (bounds memory at large N x P)


@dataclass
class Genotypes:
    """Phased truth haplotypes, observed dosages (NaN = missing call) and the variant table."""

    subject_ids: list[str]
    family_ids: list[str]
    haplotypes: np.ndarray  # [N, 2, P] uint8 ALT-allele indicators (truth; random phase for a file base)
    observed: np.ndarray  # [N, P] float32 dosages 0/1/2, NaN for missing calls
    chrom: np.ndarray  # [P] str
    pos: np.ndarray  # [P] int64, 1-based
    snp_ids: np.ndarray  # [P] str
    ref: np.ndarray  # [P] str
    alt: np.ndarray  # [P] str
    regions: list[tuple[str, int, int]]  # (chrom, start, end), 0-based half-open, sorted
    groups: np.ndarray | None = None  # [N] ancestry group index (None: no population structure)
    group_af: np.ndarray | None = None  # [G, P] Balding-Nichols ALT frequencies per group
    ancestral_af: np.ndarray | None = None  # [P] ALT frequencies they drifted from

    @property
    def dosages(self) -> np.ndarray:
        """Truth dosages [N, P] (float64, complete)."""
        return self.haplotypes.sum(axis=1, dtype=np.float64)


def _truncated_beta(rng: np.random.Generator, shape: float, low: float, n: int) -> np.ndarray:
    """Beta(shape, shape) truncated to [low, 1 - low] by inverse-CDF sampling."""
    from scipy.special import betainc, betaincinv

    lo, hi = betainc(shape, shape, np.array([low, 1 - low]))
    return betaincinv(shape, shape, rng.uniform(lo, hi, n))


def _family_layout(cfg: GenotypeConfig, n_subjects: int) -> tuple[int, int]:
    """(number of sibships, number of unrelated subjects)."""
    n_fam = int(round(cfg.family_fraction * n_subjects / cfg.sibship_size))
    n_fam = min(n_fam, n_subjects // cfg.sibship_size)
    return n_fam, n_subjects - n_fam * cfg.sibship_size


def balding_nichols(af: np.ndarray, fst: float, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Group ALT frequencies [G, P]: p_g ~ Beta(p (1 - F) / F, (1 - p)(1 - F) / F), so E p_g = p and
    Var p_g = F p (1 - p) (Balding & Nichols 1995)."""
    scale = (1 - fst) / fst
    return rng.beta(af * scale, (1 - af) * scale, size=(n_groups, len(af)))


def simulate_genotypes(
    cfg: GenotypeConfig,
    n_subjects: int,
    rng: np.random.Generator,
    population: PopulationConfig | None = None,
    pop_rng: np.random.Generator | None = None,
) -> Genotypes:
    """Haplotypes from a thresholded AR(1) Gaussian per LD block; siblings inherit one parental haplotype per block.

    With `population.n_groups` > 1, every family belongs to a random group (drawn from `pop_rng`) whose allele
    frequencies drifted from the ancestral ones (Balding-Nichols); the Gaussian draws from `rng` are the same
    either way, so one group reproduces the unstructured cohort exactly.
    """
    from scipy.special import ndtri

    n_blocks, per_block = cfg.n_blocks, cfg.snps_per_block
    n_snps = n_blocks * per_block
    af = _truncated_beta(rng, cfg.af_shape, cfg.min_af, n_snps)
    af = np.minimum(af, 1 - af)  # ALT = minor allele
    n_fam, n_single = _family_layout(cfg, n_subjects)
    structured = population is not None and population.n_groups > 1
    if structured:
        assert pop_rng is not None
        group_af = balding_nichols(af, population.fst, population.n_groups, pop_rng)
        family_group = pop_rng.integers(0, population.n_groups, n_fam + n_single)
    else:
        group_af, family_group = af[None], np.zeros(n_fam + n_single, dtype=np.int64)
    threshold = ndtri(group_af).reshape(len(group_af), n_blocks, per_block)  # P(z < threshold) = af, z ~ N(0, 1)
    lags = np.abs(np.subtract.outer(np.arange(per_block), np.arange(per_block)))
    chol = np.linalg.cholesky(cfg.ld_rho**lags)

    def draw(groups: np.ndarray) -> np.ndarray:  # one haplotype per entry of `groups`: [n, B, S] uint8
        # In chunks of haplotypes: the generator fills sequentially, so chunking draws the same numbers.
        out = np.empty((len(groups), n_blocks, per_block), dtype=np.uint8)
        step = max(1, DRAW_ELEMENTS // n_snps)
        for i in range(0, len(groups), step):
            g = groups[i : i + step]
            z = rng.standard_normal((len(g), n_blocks, per_block)) @ chol.T
            out[i : i + step] = z < threshold[g]
        return out

    sib = cfg.sibship_size
    parents = draw(np.repeat(family_group[:n_fam], 4)).reshape(n_fam, 2, 2, n_blocks, per_block)
    pick = rng.integers(0, 2, size=(n_fam, sib, 2, n_blocks, 1))  # which parental haplotype per block
    kids = np.where(pick == 0, parents[:, None, :, 0], parents[:, None, :, 1])  # [fam, sib, parent, B, S]
    singles = draw(np.repeat(family_group[n_fam:], 2))
    haplotypes = np.concatenate([kids.reshape(n_fam * sib, 2, n_snps), singles.reshape(n_single, 2, n_snps)])
    groups = np.concatenate([np.repeat(family_group[:n_fam], sib), family_group[n_fam:]])
    width = max(4, len(str(n_subjects)))
    subject_ids = [f"sub-{i + 1:0{width}d}" for i in range(n_subjects)]
    family_ids = [f"fam-{f + 1:0{width}d}" for f in range(n_fam) for _ in range(sib)]
    family_ids += [f"fam-{n_fam + i + 1:0{width}d}" for i in range(n_single)]

    # Variant table: block b is region [start_b, start_b + block_bp) on one contig.
    starts = cfg.gap_bp + np.arange(n_blocks) * (cfg.block_bp + cfg.gap_bp)  # 0-based
    offsets = np.stack([
        np.sort(rng.choice(np.arange(FLANK_BP, cfg.block_bp - FLANK_BP), per_block, replace=False))
        for _ in range(n_blocks)
    ])
    pos = (starts[:, None] + offsets + 1).reshape(-1).astype(np.int64)
    ref_code = rng.integers(0, 4, n_snps)
    alt_code = (ref_code + rng.integers(1, 4, n_snps)) % 4
    chrom = np.full(n_snps, cfg.contig)
    ref, alt = BASES[ref_code], BASES[alt_code]
    observed = haplotypes.sum(axis=1).astype(np.float32)
    observed[rng.random(observed.shape) < cfg.missing_rate] = np.nan
    regions = [(cfg.contig, int(s), int(s + cfg.block_bp)) for s in starts]
    return Genotypes(subject_ids, family_ids, haplotypes, observed, chrom, pos,
                     _variant_ids(chrom, pos, ref, alt), ref, alt, regions,
                     groups if structured else None, group_af if structured else None, af if structured else None)


def _variant_ids(chrom: np.ndarray, pos: np.ndarray, ref: np.ndarray, alt: np.ndarray) -> np.ndarray:
    return np.array([f"{c}:{p}:{r}:{a}" for c, p, r, a in zip(chrom, pos, ref, alt)])


def read_vcf_dosages(path: Path) -> dict[str, np.ndarray]:
    """Biallelic SNVs of a VCF/BCF as ALT dosages [samples, variants] (NaN = missing) plus the variant table."""
    import pysam

    try:
        vcf = pysam.VariantFile(str(path))
    except NotImplementedError:  # plain gzip (not bgzip): htslib cannot open it; read a decompressed copy
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / "plain.vcf"
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return read_vcf_dosages(plain)
    except (OSError, ValueError) as err:
        raise BrainmmError(f"genotype file {path}: not a readable VCF/BCF ({err})") from None
    samples = list(vcf.header.samples)
    if not samples:
        raise BrainmmError(f"genotype file {path}: no samples in the header (expected genotype columns)")
    rows, chrom, pos, ids, ref, alt = [], [], [], [], [], []
    with vcf:
        for rec in vcf:
            if rec.alts is None or len(rec.alts) != 1 or len(rec.ref) != 1 or len(rec.alts[0]) != 1:
                continue
            if rec.alts[0] not in "ACGT" or rec.ref not in "ACGT":
                continue
            gts = [s.get("GT") or (None,) for s in rec.samples.values()]
            row = [np.nan if any(a is None for a in gt) else float(sum(a > 0 for a in gt)) for gt in gts]
            rows.append(row)
            chrom.append(rec.chrom)
            pos.append(rec.pos)
            ids.append(rec.id or "")
            ref.append(rec.ref)
            alt.append(rec.alts[0])
    if not rows:
        raise BrainmmError(f"genotype file {path}: no biallelic SNVs found (expected GT calls of SNVs)")
    return {
        "dosages": np.asarray(rows, dtype=np.float32).T,
        "sample_ids": np.array(samples),
        "chrom": np.array(chrom),
        "pos": np.array(pos, dtype=np.int64),
        "snp_ids": np.array(ids),
        "ref": np.array(ref),
        "alt": np.array(alt),
    }


def read_npz_dosages(path: Path) -> dict[str, np.ndarray]:
    """An .npz in the genotypes.npz layout: `dosages` [N, P] and `sample_ids` (or `subject_ids`) required."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise BrainmmError(f"genotype file {path}: not a readable .npz ({err})") from None
    if "sample_ids" not in arrays and "subject_ids" in arrays:
        arrays["sample_ids"] = arrays.pop("subject_ids")
    for key in ("dosages", "sample_ids"):
        if key not in arrays:
            raise BrainmmError(f"genotype file {path}: missing array '{key}' (expected dosages [N, P], sample_ids [N])")
    dos = np.asarray(arrays["dosages"], dtype=np.float32)
    if dos.ndim != 2 or dos.shape[0] != len(arrays["sample_ids"]):
        raise BrainmmError(f"genotype file {path}: 'dosages' must be [len(sample_ids), P], got {list(dos.shape)}")
    arrays["dosages"] = dos
    return arrays


def load_genotype_base(
    cfg: GenotypeConfig, n_subjects: int, rng: np.random.Generator, seq_rng: np.random.Generator
) -> Genotypes:
    """Real genotypes as the base: pick `n_subjects` samples; random phase, missing calls drawn from the AF."""
    path = Path(cfg.path)
    if not path.is_file():
        raise BrainmmError(f"genotypes.path {path}: not found (expected a VCF/BCF or .npz of dosages)")
    data = read_npz_dosages(path) if path.suffix == ".npz" else read_vcf_dosages(path)
    dos = data["dosages"]
    called = np.isfinite(dos)
    if not np.all(np.isin(dos[called], (0.0, 1.0, 2.0))):
        raise BrainmmError(f"genotype file {path}: dosages must be 0/1/2 or missing (NaN), found other values")
    n_avail, n_snps = dos.shape
    if n_subjects > n_avail:
        raise BrainmmError(f"n_subjects={n_subjects}: the genotype file {path} holds only {n_avail} samples")
    keep = np.sort(rng.choice(n_avail, n_subjects, replace=False))
    dos, called = dos[keep], called[keep]
    sample_ids = [str(s) for s in data["sample_ids"][keep]]
    if len(set(sample_ids)) != len(sample_ids):
        raise BrainmmError(f"genotype file {path}: duplicate sample ids")

    # Truth haplotypes: called genotypes with a random phase; missing alleles drawn from the called ALT frequency.
    af = np.nansum(dos, axis=0) / np.maximum(2 * called.sum(axis=0), 1)
    het_first = rng.integers(0, 2, dos.shape)
    h0 = np.where(dos == 2, 1, np.where(dos == 1, het_first, 0))
    h1 = np.where(dos == 2, 1, np.where(dos == 1, 1 - het_first, 0))
    fill = (rng.random((2, *dos.shape)) < af).astype(np.uint8)
    haplotypes = np.stack([np.where(called, h0, fill[0]), np.where(called, h1, fill[1])], axis=1).astype(np.uint8)

    chrom = data.get("chrom", np.full(n_snps, cfg.contig)).astype(str)
    pos = data.get("pos", 1 + FLANK_BP + 100 * np.arange(n_snps)).astype(np.int64)
    if "ref" in data and "alt" in data:
        ref, alt = data["ref"].astype(str), data["alt"].astype(str)
    else:
        ref_code = seq_rng.integers(0, 4, n_snps)
        ref, alt = BASES[ref_code], BASES[(ref_code + seq_rng.integers(1, 4, n_snps)) % 4]
    order = np.lexsort((pos, chrom))
    if np.any(order != np.arange(n_snps)):
        raise BrainmmError(f"genotype file {path}: variants must be sorted by chromosome and position")
    ids = data.get("snp_ids", np.full(n_snps, "")).astype(str)
    synthetic = _variant_ids(chrom, pos, ref, alt)
    ids = np.where((ids == "") | (ids == "."), synthetic, ids)
    if len(set(ids)) != n_snps:
        ids = synthetic
    regions = _cover_regions(chrom, pos, cfg.block_bp)
    return Genotypes(sample_ids, sample_ids.copy(), haplotypes, dos.astype(np.float32), chrom, pos, ids,
                     ref, alt, regions)


def _cover_regions(chrom: np.ndarray, pos: np.ndarray, length: int) -> list[tuple[str, int, int]]:
    """Greedy windows of `length` bp (0-based half-open) covering every variant, starting FLANK_BP before one."""
    regions: list[tuple[str, int, int]] = []
    for c, p in zip(chrom, pos):
        if regions and regions[-1][0] == c and p - 1 < regions[-1][2]:
            continue
        start = max(0, int(p) - 1 - FLANK_BP)
        if regions and regions[-1][0] == c:
            start = max(start, regions[-1][2])  # no overlap with the previous region
        regions.append((str(c), start, start + length))
    return regions
