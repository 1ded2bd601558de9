"""Genotype matrices: SNP dosages from a VCF, PLINK 1 .bed, PLINK 2 .pgen or BGEN -> subjects x variants table.

Variants stream through in blocks (`brainmm.data.genetics.sources`): per block, missing calls are imputed and
variants filtered with statistics fitted on the training split only, and kept columns go straight into the
output matrix (peak memory: the output plus one block). The fitted statistics go to a sidecar
`<stem>.variants.tsv` (one row per kept variant) and the table's meta. Variant ids are `contig:pos:ref:alt`
for every source (PLINK 1: ref = allele 2, alt = allele 1 of the .bim; BGEN: the first allele is REF).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainmm.config import save_config
from brainmm.data.genetics.config import GenotypeMatrixConfig, GenotypeSourceConfig
from brainmm.data.genetics.selection import Selection, select_variants
from brainmm.data.genetics.sources import GenotypeSource, open_source
from brainmm.data.genetics.store import InPlaceTable
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


def read_vcf_dosages(path: str | Path) -> Dosages:
    """Dosages from a VCF/BCF's GT field; multi-allelic records become one column per ALT allele."""
    from brainmm.data.genetics.sources import VcfSource

    src = VcfSource(path)
    rows = np.arange(len(src.variants))
    _, values = next(src.blocks(np.arange(len(src.samples)), rows, len(rows)))
    return Dosages(src.samples, src.variants, values, src.multiallelic_split, src.star_alleles_skipped)


def read_plink_dosages(path: str | Path) -> Dosages:
    """Dosages of allele 1 (.bim column 5) from a PLINK 1 .bed/.bim/.fam trio; sample ids = IID."""
    from brainmm.data.genetics.sources import BedSource

    src = BedSource(path)
    try:
        rows = np.arange(len(src.variants))
        _, values = next(src.blocks(np.arange(len(src.samples)), rows, len(rows)))
    finally:
        src.close()
    return Dosages(src.samples, src.variants, values)


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
    n_obs = np.zeros(train.shape[1], dtype=np.int64)
    alt_sum = np.zeros(train.shape[1])
    mode_counts = np.zeros((3, train.shape[1]), dtype=np.int64)
    for c in range(0, train.shape[1], 256):  # column chunks keep the temporaries small
        part = train[:, c:c + 256]
        observed = ~np.isnan(part)
        n_obs[c:c + 256] = np.count_nonzero(observed, axis=0)
        called = np.where(observed, part, np.float32(0))  # missing calls count as 0 below
        alt_sum[c:c + 256] = called.sum(axis=0, dtype=np.float64)
        if impute == "mode":  # of the rounded dosages (hard calls stay as they are), all in {0, 1, 2}
            rounded = np.rint(called, out=called)
            twos = np.count_nonzero(rounded > 1.5, axis=0)
            ones = np.rint(rounded.sum(axis=0, dtype=np.float64)).astype(np.int64) - 2 * twos
            mode_counts[:, c:c + 256] = [n_obs[c:c + 256] - ones - twos, ones, twos]
    missing_rate = 1.0 - n_obs / train.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        alt_freq = alt_sum / (2.0 * n_obs)
    maf = np.minimum(alt_freq, 1.0 - alt_freq)
    keep = (n_obs > 0) & (maf >= min_maf) & (missing_rate <= max_missing)
    if impute == "mean":
        fill = 2.0 * alt_freq
    elif impute == "mode":
        fill = mode_counts.argmax(axis=0).astype(np.float64)
    else:
        raise BrainmmError(f"impute {impute!r}: expected 'mode' or 'mean'")
    fill = np.where(n_obs > 0, fill, np.nan)
    return GenotypeStats(alt_freq, missing_rate, fill.astype(np.float32), keep, int(train.shape[0]))


def train_rows(values: np.ndarray, is_train: np.ndarray) -> np.ndarray:
    """values[is_train], gathered along the contiguous axis (variant-major blocks from pgenlib are 10x faster)."""
    if values.flags.f_contiguous and not values.flags.c_contiguous:
        return np.compress(is_train, values.T, axis=1).T
    return np.compress(is_train, values, axis=0)


def hard_calls(values: np.ndarray, threshold: float) -> np.ndarray:
    """Round dosages within `threshold` of 0, 1 or 2; the others become missing (in place)."""
    rounded = np.rint(values)
    values[np.abs(values - rounded) > threshold] = np.nan
    np.copyto(values, rounded, where=~np.isnan(values))
    return values


class PolygenicScores:
    """Scores [subjects, n_scores] = effect-allele dosages @ weights, accumulated block by block.

    The table (CSV/TSV) has `variant_id` (contig:pos:ref:alt or the VCF/PLINK id), `effect_allele` and one
    numeric column per score. Variants absent from the genotypes are skipped (counted in the meta).
    """

    def __init__(self, path: str | Path, n_subjects: int) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise BrainmmError(f"PGS weights {self.path}: not found")
        sep = "," if self.path.suffix == ".csv" else "\t"
        try:
            weights = pd.read_csv(self.path, sep=sep, dtype={"variant_id": str, "effect_allele": str})
        except (ValueError, UnicodeDecodeError) as err:  # ragged rows (ParserError), bad encoding, no columns
            raise BrainmmError(f"PGS weights {self.path}: not a readable table ({' '.join(str(err).split())})") from None
        for col in ("variant_id", "effect_allele"):
            if col not in weights:
                raise BrainmmError(f"PGS weights {self.path}: missing column {col!r} (expected variant_id, "
                                   "effect_allele, then one numeric column per score)")
        self.scores = [c for c in weights.columns if c not in ("variant_id", "effect_allele")]
        bad = [c for c in self.scores if not pd.api.types.is_numeric_dtype(weights[c])]
        if not self.scores or bad:
            raise BrainmmError(f"PGS weights {self.path}: score columns must be numeric (bad: {bad or 'none given'})")
        self.weights = weights
        self.values = np.zeros((n_subjects, len(self.scores)))
        self.used = 0

    def add(self, variants: pd.DataFrame, dosages: np.ndarray) -> None:
        """Add the contribution of one block (imputed dosages of its variants)."""
        index = {v: i for i, v in enumerate(variants["variant_id"])}
        index.update({r: i for i, r in enumerate(variants["rsid"]) if r and r != "." and r not in index})
        cols, flips, w_rows = [], [], []
        for row in self.weights.itertuples(index=False):
            j = index.get(row.variant_id)
            if j is None:
                continue
            effect = str(row.effect_allele).upper()
            ref, alt = variants["ref"].iat[j], variants["alt"].iat[j]
            if effect not in (alt.upper(), ref.upper()):
                raise BrainmmError(f"PGS weights {self.path}: effect allele {row.effect_allele!r} of "
                                   f"{row.variant_id} is neither REF {ref!r} nor ALT {alt!r}")
            cols.append(j)
            flips.append(effect != alt.upper())
            w_rows.append([getattr(row, c) for c in self.scores])
        if not cols:
            return
        d = dosages[:, cols].astype(np.float64)
        d = np.where(np.asarray(flips)[None, :], 2.0 - d, d)
        usable = ~np.isnan(d).any(axis=0)  # variants never observed in training have no fill value
        self.values += d[:, usable] @ np.asarray(w_rows, dtype=np.float64)[usable]
        self.used += int(usable.sum())

    def table(self, subjects: list[str], source: str, imputation: str) -> EmbeddingTable:
        """The scores as an embedding table (error when no weighted variant was found)."""
        if not self.used:
            raise BrainmmError(f"PGS weights {self.path}: none of its {len(self.weights)} variants is in the "
                               "genotypes")
        meta = {"kind": "polygenic_scores", "weights": str(self.path), "source": source, "scores": self.scores,
                "variants_in_weights": len(self.weights), "variants_used": self.used, "imputation": imputation}
        return EmbeddingTable(subjects, self.values.astype(np.float32), meta)


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_file(path, suffix=".tsv") as tmp:
        frame.to_csv(tmp, sep="\t", index=False)


@dataclass
class GenotypeInputs:
    """An opened source with its samples matched to subjects and its variants selected."""

    source: GenotypeSource
    sample_index: np.ndarray  # positions in source.samples, increasing
    samples: list[str]
    subjects: list[str]
    selection: Selection

    def blocks(self, cfg: GenotypeSourceConfig):
        """(variant rows, dosages [subjects, block]) with swapped alleles flipped and hard calls applied."""
        flip_all = self.selection.flip
        done = 0
        for rows, values in self.source.blocks(self.sample_index, self.selection.rows,
                                                 cfg.block_for(len(self.sample_index))):
            flip = flip_all[done:done + len(rows)]
            done += len(rows)
            if flip.any():
                values[:, flip] = 2.0 - values[:, flip]
            if cfg.hard_call_threshold is not None:
                hard_calls(values, cfg.hard_call_threshold)
            yield rows, values
            del values

    def variant_rows(self, rows: np.ndarray) -> pd.DataFrame:
        """Variant-table rows (alleles as counted: flipped rows have REF and ALT swapped)."""
        table = self.source.variants.iloc[rows].drop(columns=["allele"]).reset_index(drop=True)
        flip = self.selection.flip[np.searchsorted(self.selection.rows, rows)]
        if flip.any():
            ref = table["ref"].copy()
            table.loc[flip, "ref"] = table.loc[flip, "alt"]
            table.loc[flip, "alt"] = ref[flip]
            table["variant_id"] = (table["contig"] + ":" + table["pos"].astype(str) + ":" + table["ref"] + ":"
                                   + table["alt"])
        return table

    def meta(self) -> dict:
        """Provenance of the source and the selection."""
        return {"source": str(self.source.path), "source_format": self.source.kind,
                "multiallelic_split": self.source.multiallelic_split,
                "star_alleles_skipped": self.source.star_alleles_skipped, **self.selection.counts}


def open_inputs(cfg: GenotypeSourceConfig, split_map: dict[str, str] | None, split_path: str | None) -> GenotypeInputs:
    """Open the source, match its samples to subjects (cohort table or split table) and select variants."""
    cfg.require_source()
    src = open_source(cfg.vcf, cfg.bed, cfg.pgen, cfg.bgen, cfg.sample)
    source = str(src.path)
    if cfg.cohort:
        samples, subjects = match_samples(src.samples, source, read_sample_map(cfg.cohort, cfg.sample_column),
                                          cfg.drop_unmatched_samples)
        extra = [s for s in subjects if split_map is not None and s not in split_map]
        if extra:
            raise BrainmmError(f"split table {split_path}: subjects {extra[:5]} of the cohort table are missing")
    elif split_map is not None:
        samples, subjects = match_samples(src.samples, source, {s: s for s in split_map},
                                          cfg.drop_unmatched_samples, where=f"split table {split_path}")
    else:
        samples, subjects = match_samples(src.samples, source, None)
    if len(set(src.samples)) != len(src.samples):
        raise BrainmmError(f"genotypes {source}: sample ids repeat; expected one id per person")
    position = {s: i for i, s in enumerate(src.samples)}
    index = np.asarray([position[s] for s in samples], dtype=np.int64)
    selection = select_variants(src.variants, source, cfg.variants, cfg.regions, cfg.min_info)
    return GenotypeInputs(src, index, samples, subjects, selection)


def run_matrix(cfg: GenotypeMatrixConfig) -> EmbeddingTable:
    """Stream dosages, fit imputation/filters on train, write `<out>` (+ .variants.tsv, .config.yaml, `<out>_pgs`)."""
    cfg.require_inputs()
    split = load_split(cfg.split)
    split_map = dict(zip(split["subject_id"].astype(str), split["split"]))
    inputs = open_inputs(cfg, split_map, cfg.split)
    subjects, source = inputs.subjects, str(inputs.source.path)
    is_train = np.array([split_map[s] == "train" for s in subjects])
    if not is_train.any():
        raise BrainmmError("genotype matrix: no training subjects; statistics are fitted on the 'train' split")
    n_candidates = len(inputs.selection.rows)
    out = table_stem(cfg.out)
    pgs = PolygenicScores(cfg.pgs_weights, len(subjects)) if cfg.pgs_weights else None
    kept_parts, n_missing = [], 0
    # The matrix is filled in place in the output's temp file (a memory map): kept columns fill the left of each
    # row and are compacted at the end; pages never written are never resident (nor stored: the file is sparse).
    with InPlaceTable(out, len(subjects), n_candidates) as written:
        for rows, values in progress(inputs.blocks(cfg), desc="reading genotypes", unit="block",
                                     total=-(-n_candidates // cfg.block_for(len(subjects)))):
            stats = fit_genotype_stats(train_rows(values, is_train), cfg.impute, cfg.min_maf, cfg.max_missing)
            keep = np.flatnonzero(stats.keep)
            missing = np.isnan(values)
            missing_per_variant = np.count_nonzero(missing, axis=0)
            n_missing += int(missing_per_variant[keep].sum())
            if missing_per_variant.any():
                np.copyto(values, np.broadcast_to(stats.fill, values.shape), where=missing)
            table = inputs.variant_rows(rows)
            if pgs is not None:
                pgs.add(table, values)
            written.append(values if len(keep) == values.shape[1] else values[:, keep])
            kept_parts.append(table.iloc[keep].assign(train_alt_freq=stats.alt_freq[keep],
                                                      train_missing_rate=stats.missing_rate[keep],
                                                      fill=stats.fill[keep]))
            del values, missing  # before the next block is read
        inputs.source.close()
        k = written.columns
        if not k:
            raise BrainmmError(f"genotype matrix {source}: no variant passes min_maf={cfg.min_maf} and "
                               f"max_missing={cfg.max_missing} on the {int(is_train.sum())} training subjects")
        kept = pd.concat(kept_parts, ignore_index=True).drop(columns=["info"])
        meta = {
            "kind": "genotype_matrix",
            **inputs.meta(),
            "split": str(cfg.split),
            "fitted_on": "train",
            "n_train": int(is_train.sum()),
            "impute": cfg.impute,
            "min_maf": cfg.min_maf,
            "max_missing": cfg.max_missing,
            "hard_call_threshold": cfg.hard_call_threshold,
            "variants_in": n_candidates,
            "variants_kept": k,
            "calls_imputed": n_missing,
            "variants_file": out.name + ".variants.tsv",
            "dosage": "expected count of the ALT allele (PLINK 1: allele 1; BGEN: the second allele)",
        }
        if inputs.samples != subjects:
            meta["genotype_samples"] = inputs.samples
        LOG.info("genotype matrix: %d subjects x %d variants (of %d; MAF >= %g, missing <= %g on %d train subjects); "
                 "%d missing calls imputed (%s)", len(subjects), k, n_candidates, cfg.min_maf, cfg.max_missing,
                 int(is_train.sum()), n_missing, cfg.impute)
        pgs_table = pgs.table(subjects, source, f"{cfg.impute}, fitted on train") if pgs is not None else None
        save_config(cfg, out.with_name(out.name + ".config.yaml"))
        _write_tsv(kept, out.with_name(out.name + ".variants.tsv"))
        if pgs_table is not None:
            pgs_table.save(out.with_name(out.name + "_pgs"))
        written.finish(subjects, meta)
    vectors = written.vectors()
    return EmbeddingTable(subjects, vectors, meta)


def table_stem(path: str | Path) -> Path:
    """An output table path without its .safetensors/.json suffix."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def read_variant_table(stem: str | Path) -> pd.DataFrame:
    """The `<stem>.variants.tsv` sidecar of a genotype matrix (kept variants and train statistics)."""
    stem = table_stem(stem)
    path = stem.with_name(stem.name + ".variants.tsv")
    if not path.is_file():
        raise BrainmmError(f"genotype matrix {stem}: sidecar {path.name} not found")
    return pd.read_csv(path, sep="\t", dtype={"variant_id": str, "contig": str, "rsid": str}, keep_default_na=False)

