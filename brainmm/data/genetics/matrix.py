"""Genotype matrices: SNP dosages from a VCF or PLINK 1 .bed -> subjects x variants EmbeddingTable.

Missing calls are imputed and variants filtered with statistics fitted on the training split only; the
fitted statistics go to a sidecar `<stem>.variants.tsv` (one row per kept variant) and the table's meta.
Variant ids are `contig:pos:ref:alt` for both sources (PLINK: ref = allele 2, alt = allele 1 of the .bim).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainmm.config import save_config
from brainmm.data.genetics.config import GenotypeMatrixConfig
from brainmm.data.genetics.embed import table_stem
from brainmm.data.genetics.subjects import match_samples, read_sample_map
from brainmm.data.splits import load_split
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.io import atomic_file
from brainmm.runtime import LOG, progress


@dataclass
class Dosages:
    """ALT-allele dosages [samples, variants] (NaN = missing call) and the variant table."""

    samples: list[str]
    variants: pd.DataFrame  # variant_id, contig, pos, ref, alt, rsid
    values: np.ndarray
    multiallelic_split: int = 0
    star_alleles_skipped: int = 0


def _variant_id(contig: str, pos: int, ref: str, alt: str) -> str:
    return f"{contig}:{pos}:{ref}:{alt}"


def _check_ids(variants: pd.DataFrame, source: Path) -> None:
    dup = variants["variant_id"][variants["variant_id"].duplicated()].unique().tolist()
    if dup:
        raise BrainmmError(f"genotypes {source}: variant(s) {dup[:5]} appear more than once; remove duplicates "
                           "(e.g. `bcftools norm -d exact`)")


def read_vcf_dosages(path: str | Path) -> Dosages:
    """Dosages from a VCF/BCF's GT field; multi-allelic records become one column per ALT allele."""
    import pysam

    from brainmm.data.genetics.reference import file_compression

    path = Path(path)
    if not path.is_file():
        raise BrainmmError(f"VCF {path}: not found")
    if file_compression(path) == "gzip":
        raise BrainmmError(f"VCF {path}: gzip-compressed but not bgzip, which htslib cannot read; recompress it "
                           "with `bgzip` (or decompress it)")
    try:
        vcf = pysam.VariantFile(str(path))
    except (OSError, ValueError, NotImplementedError) as err:  # plain gzip: "seek not implemented"
        hint = " (gzip but not bgzip? recompress with `bgzip`)" if "seek" in str(err) or "compress" in str(err) else ""
        raise BrainmmError(f"VCF {path}: unreadable ({err}){hint}") from None
    samples = list(vcf.header.samples)
    if not samples:
        raise BrainmmError(f"VCF {path}: no samples (no genotype columns); expected one per person")
    n = len(samples)
    columns: list[np.ndarray] = []
    rows: list[tuple[str, str, int, str, str, str]] = []
    multi = star = 0
    try:
        for rec in progress(vcf, desc="reading VCF", unit="record"):
            alts = rec.alts or ()
            if len(alts) > 1:
                multi += 1
            flat = []
            for call in rec.samples.values():
                idx = call.allele_indices
                if len(idx) == 1:
                    idx = idx * 2  # haploid call counts as homozygous (0/2 coding)
                elif len(idx) != 2:
                    raise BrainmmError(f"VCF {path}: {rec.chrom}:{rec.pos} has a call of ploidy {len(idx)}; "
                                       "expected diploid or haploid calls")
                flat.extend(-1 if a is None else a for a in idx)
            gt = np.asarray(flat, dtype=np.int16).reshape(n, 2)
            missing = (gt < 0).any(axis=1)
            for a, alt in enumerate(alts, 1):
                if alt == "*":
                    star += 1
                    continue
                dosage = (gt == a).sum(axis=1).astype(np.float32)
                dosage[missing] = np.nan
                columns.append(dosage)
                rows.append((_variant_id(rec.chrom, rec.pos, rec.ref, alt), rec.chrom, rec.pos, rec.ref, alt,
                             rec.id or ""))
    except OSError as err:
        raise BrainmmError(f"VCF {path}: unreadable ({err}); is it bgzip-compressed (not plain gzip)?") from None
    finally:
        vcf.close()
    if not columns:
        raise BrainmmError(f"VCF {path}: no variant records")
    variants = pd.DataFrame(rows, columns=["variant_id", "contig", "pos", "ref", "alt", "rsid"])
    _check_ids(variants, path)
    if multi:
        LOG.info("VCF %s: %d multi-allelic records split into one column per ALT allele", path, multi)
    return Dosages(samples, variants, np.stack(columns, axis=1), multi, star)


def read_plink_dosages(path: str | Path) -> Dosages:
    """Dosages of allele 1 (.bim column 5) from a PLINK 1 .bed/.bim/.fam trio; sample ids = IID."""
    from bed_reader import open_bed

    path = Path(path)
    for ext in (".bed", ".bim", ".fam"):
        f = path.with_suffix(ext)
        if not f.is_file():
            raise BrainmmError(f"PLINK genotypes {path}: {f.name} not found (expected .bed, .bim and .fam)")
    try:
        with open_bed(path) as bed:
            values = bed.read(dtype="float32")
            samples = [str(s) for s in bed.iid]
            variants = pd.DataFrame({"contig": [str(c) for c in bed.chromosome], "pos": bed.bp_position.astype(int),
                                     "ref": [str(a) for a in bed.allele_2], "alt": [str(a) for a in bed.allele_1],
                                     "rsid": [str(s) for s in bed.sid]})
    except Exception as err:  # bed-reader raises ValueError/OSError/RuntimeError for broken trios
        raise BrainmmError(f"PLINK genotypes {path}: unreadable ({err.__class__.__name__}: {err})") from None
    if not len(variants):
        raise BrainmmError(f"PLINK genotypes {path}: no variants")
    variants.insert(0, "variant_id", [_variant_id(*r) for r in variants[["contig", "pos", "ref", "alt"]].itertuples(
        index=False)])
    _check_ids(variants, path)
    return Dosages(samples, variants, values)


@dataclass
class GenotypeStats:
    """Per-variant statistics fitted on the training rows."""

    alt_freq: np.ndarray
    missing_rate: np.ndarray
    fill: np.ndarray
    keep: np.ndarray
    n_train: int


def fit_genotype_stats(train: np.ndarray, impute: str, min_maf: float, max_missing: float) -> GenotypeStats:
    """Allele frequency, missingness, imputation value and the MAF/missingness filter from training rows."""
    if train.shape[0] == 0:
        raise BrainmmError("genotype matrix: no training subjects; statistics are fitted on the 'train' split")
    observed = ~np.isnan(train)
    n_obs = observed.sum(axis=0)
    missing_rate = 1.0 - n_obs / train.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        alt_freq = np.nansum(train, axis=0) / (2.0 * n_obs)
    maf = np.minimum(alt_freq, 1.0 - alt_freq)
    keep = (n_obs > 0) & (maf >= min_maf) & (missing_rate <= max_missing)
    if impute == "mean":
        fill = 2.0 * alt_freq
    elif impute == "mode":
        counts = np.stack([(train == d).sum(axis=0) for d in (0, 1, 2)])
        fill = counts.argmax(axis=0).astype(np.float64)
    else:
        raise BrainmmError(f"impute {impute!r}: expected 'mode' or 'mean'")
    fill = np.where(n_obs > 0, fill, np.nan)
    return GenotypeStats(alt_freq, missing_rate, fill.astype(np.float32), keep, int(train.shape[0]))


def impute(values: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Replace NaN in each column by that column's fill value."""
    out = values.copy()
    rows, cols = np.nonzero(np.isnan(out))
    out[rows, cols] = fill[cols]
    return out


def polygenic_scores(path: str | Path, variants: pd.DataFrame, dosages: np.ndarray) -> tuple[np.ndarray, dict]:
    """Scores [subjects, n_scores] = effect-allele dosages @ weights, from a weights table.

    The table (CSV/TSV) has `variant_id` (contig:pos:ref:alt or the VCF/PLINK id), `effect_allele` and one
    numeric column per score. Variants absent from the genotypes are skipped (counted in the meta).
    """
    path = Path(path)
    if not path.is_file():
        raise BrainmmError(f"PGS weights {path}: not found")
    sep = "," if path.suffix == ".csv" else "\t"
    try:
        weights = pd.read_csv(path, sep=sep, dtype={"variant_id": str, "effect_allele": str})
    except (ValueError, UnicodeDecodeError) as err:  # ragged rows (ParserError), bad encoding, no columns
        raise BrainmmError(f"PGS weights {path}: not a readable table ({' '.join(str(err).split())})") from None
    for col in ("variant_id", "effect_allele"):
        if col not in weights:
            raise BrainmmError(f"PGS weights {path}: missing column {col!r} (expected variant_id, effect_allele, "
                               "then one numeric column per score)")
    scores = [c for c in weights.columns if c not in ("variant_id", "effect_allele")]
    bad = [c for c in scores if not pd.api.types.is_numeric_dtype(weights[c])]
    if not scores or bad:
        raise BrainmmError(f"PGS weights {path}: score columns must be numeric (bad: {bad or 'none given'})")
    index = {v: i for i, v in enumerate(variants["variant_id"])}
    index.update({r: i for i, r in enumerate(variants["rsid"]) if r and r != "." and r not in index})
    cols, sign_rows, w_rows = [], [], []
    for row in weights.itertuples(index=False):
        j = index.get(row.variant_id)
        if j is None:
            continue
        effect = str(row.effect_allele).upper()
        if effect == variants["alt"].iat[j].upper():
            flip = False
        elif effect == variants["ref"].iat[j].upper():
            flip = True
        else:
            raise BrainmmError(f"PGS weights {path}: effect allele {row.effect_allele!r} of {row.variant_id} is "
                               f"neither REF {variants['ref'].iat[j]!r} nor ALT {variants['alt'].iat[j]!r}")
        cols.append(j)
        sign_rows.append(flip)
        w_rows.append([getattr(row, c) for c in scores])
    if not cols:
        raise BrainmmError(f"PGS weights {path}: none of its {len(weights)} variants is in the genotypes")
    d = dosages[:, cols]
    d = np.where(np.asarray(sign_rows)[None, :], 2.0 - d, d)
    usable = ~np.isnan(d).any(axis=0)  # variants never observed in training have no fill value
    w = np.asarray(w_rows, dtype=np.float64)
    values = d[:, usable] @ w[usable]
    return values.astype(np.float32), {"scores": scores, "variants_in_weights": len(weights),
                                       "variants_used": int(usable.sum())}


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_file(path, suffix=".tsv") as tmp:
        frame.to_csv(tmp, sep="\t", index=False)


def run_matrix(cfg: GenotypeMatrixConfig) -> EmbeddingTable:
    """Read dosages, fit imputation/filters on train, write `<out>` (+ .variants.tsv, .config.yaml, `<out>_pgs`)."""
    cfg.require_inputs()
    source = Path(cfg.vcf or cfg.bed)
    dos = read_vcf_dosages(source) if cfg.vcf else read_plink_dosages(source)
    split = load_split(cfg.split)
    split_map = dict(zip(split["subject_id"].astype(str), split["split"]))
    if cfg.cohort:
        sample_map = read_sample_map(cfg.cohort, cfg.sample_column)
        samples, subjects = match_samples(dos.samples, str(source), sample_map, cfg.drop_unmatched_samples)
        extra = [s for s in subjects if s not in split_map]
        if extra:
            raise BrainmmError(f"split table {cfg.split}: subjects {extra[:5]} of the cohort table are missing")
    else:
        samples, subjects = match_samples(dos.samples, str(source), {s: s for s in split_map},
                                          cfg.drop_unmatched_samples, where=f"split table {cfg.split}")
    position = {s: i for i, s in enumerate(dos.samples)}
    values = dos.values[[position[s] for s in samples]]
    is_train = np.array([split_map[s] == "train" for s in subjects])
    stats = fit_genotype_stats(values[is_train], cfg.impute, cfg.min_maf, cfg.max_missing)
    if not stats.keep.any():
        raise BrainmmError(f"genotype matrix {source}: no variant passes min_maf={cfg.min_maf} and "
                           f"max_missing={cfg.max_missing} on the {stats.n_train} training subjects")
    imputed = impute(values, stats.fill)
    keep = np.flatnonzero(stats.keep)
    out = table_stem(cfg.out)
    kept = dos.variants.iloc[keep].reset_index(drop=True).assign(
        train_alt_freq=stats.alt_freq[keep], train_missing_rate=stats.missing_rate[keep], fill=stats.fill[keep])
    n_missing = int(np.isnan(values[:, keep]).sum())
    meta = {
        "kind": "genotype_matrix",
        "source": str(source),
        "split": str(cfg.split),
        "fitted_on": "train",
        "n_train": stats.n_train,
        "impute": cfg.impute,
        "min_maf": cfg.min_maf,
        "max_missing": cfg.max_missing,
        "variants_in": int(len(dos.variants)),
        "variants_kept": int(len(keep)),
        "calls_imputed": n_missing,
        "multiallelic_split": dos.multiallelic_split,
        "star_alleles_skipped": dos.star_alleles_skipped,
        "variants_file": out.name + ".variants.tsv",
        "dosage": "count of the ALT allele (PLINK: allele 1)",
    }
    if samples != subjects:
        meta["genotype_samples"] = samples
    vectors = imputed[:, keep]
    meta["data_hash"] = hashlib.sha256(vectors.tobytes() + "\n".join(subjects).encode()).hexdigest()
    LOG.info("genotype matrix: %d subjects x %d variants (of %d; MAF >= %g, missing <= %g on %d train subjects); "
             "%d missing calls imputed (%s)", len(subjects), len(keep), len(dos.variants), cfg.min_maf,
             cfg.max_missing, stats.n_train, n_missing, cfg.impute)
    pgs = None
    if cfg.pgs_weights:  # computed (and checked) before anything is written
        scores, info = polygenic_scores(cfg.pgs_weights, dos.variants, imputed)
        pgs_meta = {"kind": "polygenic_scores", "weights": cfg.pgs_weights, "source": str(source), **info,
                    "imputation": f"{cfg.impute}, fitted on train"}
        pgs = EmbeddingTable(subjects, scores, pgs_meta)
    table = EmbeddingTable(subjects, vectors, meta)
    save_config(cfg, out.with_name(out.name + ".config.yaml"))
    _write_tsv(kept, out.with_name(out.name + ".variants.tsv"))
    if pgs is not None:
        pgs.save(out.with_name(out.name + "_pgs"))
    table.save(out)
    return table


def read_variant_table(stem: str | Path) -> pd.DataFrame:
    """The `<stem>.variants.tsv` sidecar of a genotype matrix (kept variants and train statistics)."""
    stem = table_stem(stem)
    path = stem.with_name(stem.name + ".variants.tsv")
    if not path.is_file():
        raise BrainmmError(f"genotype matrix {stem}: sidecar {path.name} not found")
    return pd.read_csv(path, sep="\t", dtype={"variant_id": str, "contig": str, "rsid": str}, keep_default_na=False)

