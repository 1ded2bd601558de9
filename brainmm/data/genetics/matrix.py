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
from brainmm.data.genetics.store import ColumnTable
from brainmm.data.genetics.subjects import match_samples, read_sample_map, warn_missing_subjects
from brainmm.data.splits import load_split
from brainmm.embeddings import EmbeddingTable, table_stem
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
    """Per-variant statistics fitted on the training rows, and the block's missing calls (all rows)."""

    alt_freq: np.ndarray
    missing_rate: np.ndarray
    fill: np.ndarray
    keep: np.ndarray
    n_train: int
    n_missing: np.ndarray
    calls: np.ndarray | None = None  # hard-call blocks: uint8 [block, subjects] (valid until the next block)


class BlockImputer:
    """Fit allele frequency, missingness, the imputation value and the MAF/missingness filter on the training rows
    of each block of dosages [subjects, block] (NaN = missing), then fill its missing calls in place.

    Sums over subjects are dot products with the 0/1 training weights along each variant's contiguous row; counts
    of 0/1/2 calls (mode) come from the sums of the rounded dosages and of their squares. All are sums of small
    integers, exact in float32; fractional dosages are summed in float64. Missing calls, being sparse, are handled
    by position. A block of hard calls also comes back as one byte per call (`GenotypeStats.calls`: 0/1/2, and an
    imputed call as its fill's code, 3 for a fractional fill), a quarter of the memory for the table to keep. The
    work goes a few variants at a time (TILE_BYTES), with scratch buffers kept from block to block.
    """

    TILE_BYTES = 512 << 10

    def __init__(self, is_train: np.ndarray, impute: str, min_maf: float, max_missing: float) -> None:
        if impute not in ("mode", "mean"):
            raise BrainmmError(f"impute {impute!r}: expected 'mode' or 'mean'")
        self.n_train = int(np.count_nonzero(is_train))
        if self.n_train == 0:
            raise BrainmmError("genotype matrix: no training subjects; statistics are fitted on the 'train' split")
        self.w = np.asarray(is_train, dtype=np.float32)
        self.weights = np.stack([self.w, np.ones_like(self.w)], axis=1)  # [subjects, 2]: train, all
        self.impute, self.min_maf, self.max_missing = impute, min_maf, max_missing
        self.tile = max(1, self.TILE_BYTES // (4 * len(self.w)))
        self._floats = np.empty((self.tile, len(self.w)), np.float32)
        self._flags = np.empty((2, self.tile, len(self.w)), bool)
        self._calls = np.empty((0, len(self.w)), np.uint8)

    def __call__(self, values: np.ndarray) -> GenotypeStats:
        """The block's statistics; its missing calls are filled with them."""
        x = values.T  # variant-major: contiguous rows for pgenlib's blocks
        b, n = x.shape
        n_obs, n_missing = np.full(b, self.n_train, np.int64), np.zeros(b, np.int64)
        alt_sum, total, squares = np.empty(b), np.empty(b), np.empty(b)
        if self._calls.shape[0] < b:
            self._calls = np.empty((b, n), np.uint8)
        calls, hard, holes = self._calls[:b], True, []
        mode = self.impute == "mode"
        for t0 in range(0, b, self.tile):
            t1 = min(b, t0 + self.tile)
            tile, part = x[t0:t1], slice(t0, t1)
            floats, missing, differs = self._floats[:t1 - t0], self._flags[0, :t1 - t0], self._flags[1, :t1 - t0]
            at = np.flatnonzero(np.isnan(tile, out=missing))  # missing calls are sparse: kept as flat positions
            if at.size:
                rows = at // n
                n_missing[part] = np.bincount(rows, minlength=t1 - t0)
                n_obs[part] -= np.rint(np.bincount(rows, self.w[at - rows * n], t1 - t0)).astype(np.int64)
                tile.flat[at] = 0  # 0 in the sums; filled below
                holes.append((t0, t1, at, rows))
            codes = calls[part]
            with np.errstate(invalid="ignore"):  # exact for hard calls, which is what the next line checks
                np.copyto(codes, tile, casting="unsafe")
            if hard and not np.not_equal(codes, tile, out=differs).any() and codes.max() <= 2:  # hard calls
                alt_sum[part] = total[part] = tile @ self.w
                if mode:
                    squares[part] = np.square(tile, out=floats) @ self.w
            else:  # fractional dosages (or integers outside 0..2): kept as values
                hard = False
                alt_sum[part] = np.add.reduce(np.multiply(tile, self.w, out=floats), axis=1, dtype=np.float64)
                if mode:
                    rounded = np.rint(tile, out=floats)
                    total[part], squares[part] = rounded @ self.w, np.square(rounded, out=rounded) @ self.w
        with np.errstate(invalid="ignore", divide="ignore"):
            fill = (_mode(n_obs, total, squares) if mode else alt_sum / n_obs).astype(np.float32)
        code = np.where(np.isin(fill, (0, 1, 2)), fill, 3).astype(np.uint8)  # a fractional fill is code 3
        for t0, t1, at, rows in holes:
            x[t0:t1].flat[at] = fill[t0 + rows]
            calls[t0:t1].flat[at] = code[t0 + rows]
        missing_rate = 1.0 - n_obs / self.n_train
        with np.errstate(invalid="ignore", divide="ignore"):
            alt_freq = alt_sum / (2.0 * n_obs)
        maf = np.minimum(alt_freq, 1.0 - alt_freq)
        keep = (n_obs > 0) & (maf >= self.min_maf) & (missing_rate <= self.max_missing)
        return GenotypeStats(alt_freq, missing_rate, fill, keep, self.n_train, n_missing, calls if hard else None)


def _mode(n_obs: np.ndarray, total: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """The most frequent of 0/1/2 (the first on ties; NaN without calls) from the count and the sums of the rounded
    dosages and of their squares: sum = ones + 2 twos, squares = ones + 4 twos."""
    twos = np.rint((squares - total) / 2).astype(np.int64)
    ones = np.rint(total).astype(np.int64) - 2 * twos
    mode = np.stack([n_obs - ones - twos, ones, twos]).argmax(axis=0).astype(np.float32)
    return np.where(n_obs > 0, mode, np.float32(np.nan))


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
        if not self.scores:
            raise BrainmmError(f"PGS weights {self.path}: score columns must be numeric (bad: none given)")
        for col in self.scores:
            values = pd.to_numeric(weights[col], errors="coerce")
            bad = ~np.isfinite(values.to_numpy(dtype=np.float64))
            if bad.any():
                i = int(bad.argmax())
                raise BrainmmError(f"PGS weights {self.path}: row {i + 1} (variant {weights['variant_id'].iloc[i]!r}), "
                                   f"score column {col!r}: {str(weights[col].iloc[i])[:40]!r} is not a finite number "
                                   "(expected a weight; 0 leaves a variant out)")
            weights[col] = values
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
    src = open_source(cfg.vcf, cfg.bed, cfg.pgen, cfg.bgen, cfg.sample, cfg.bgen_ref)
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
    no_genotypes = warn_missing_subjects(split_map, subjects, source, "genotype matrix")
    if not is_train.any():
        raise BrainmmError("genotype matrix: no training subjects; statistics are fitted on the 'train' split")
    n_candidates = len(inputs.selection.rows)
    out = table_stem(cfg.out)
    pgs = PolygenicScores(cfg.pgs_weights, len(subjects)) if cfg.pgs_weights else None
    kept_parts, n_missing = [], 0
    impute = BlockImputer(is_train, cfg.impute, cfg.min_maf, cfg.max_missing)
    # Kept columns are held column-major as read (pgenlib's blocks: no copy) and written as rows at the end.
    with ColumnTable(out, len(subjects), n_candidates) as written:
        for rows, values in progress(inputs.blocks(cfg), desc="reading genotypes", unit="block",
                                     total=-(-n_candidates // cfg.block_for(len(subjects)))):
            stats = impute(values)
            keep = np.flatnonzero(stats.keep)
            n_missing += int(stats.n_missing[keep].sum())
            table = inputs.variant_rows(rows)
            if pgs is not None:
                pgs.add(table, values)
            written.append(values, None if len(keep) == values.shape[1] else keep, stats.calls, stats.fill)
            kept_parts.append(table.iloc[keep].assign(train_alt_freq=stats.alt_freq[keep],
                                                      train_missing_rate=stats.missing_rate[keep],
                                                      fill=stats.fill[keep]))
            del values  # before the next block is read
        inputs.source.close()
        k = written.columns
        if not k:
            raise BrainmmError(f"genotype matrix {source}: no variant passes min_maf={cfg.min_maf} and "
                               f"max_missing={cfg.max_missing} on the {int(is_train.sum())} training subjects")
        kept = pd.concat(kept_parts, ignore_index=True).drop(columns=["info"])
        allele_order = bgen_allele_order(inputs, kept)
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
            "split_subjects_without_genotypes": no_genotypes,
            "variants_file": out.name + ".variants.tsv",
            "dosage": "expected count of the ALT allele (PLINK 1: allele 1; BGEN: every allele but the REF one, "
                      "the first by default: bgen_ref)",
        }
        if allele_order is not None:
            meta["allele_order"] = allele_order
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


def bgen_allele_order(inputs: GenotypeInputs, kept: pd.DataFrame) -> dict | None:
    """A BGEN's allele order and its evidence: the check against a .pvar/.bim beside it, else the training
    frequency of the counted allele; a counted allele that is the major one in most variants is warned about."""
    src = inputs.source
    if src.kind != "BGEN":
        return None
    freq = kept["train_alt_freq"].to_numpy()
    order = {"ref_allele": getattr(src, "ref_allele", "first"), "median_counted_frequency": float(np.median(freq)),
             "counted_major_share": float(np.mean(freq > 0.5)),
             "flipped_by_variant_list": int(inputs.selection.flip.sum())}
    if src.allele_check is not None:
        return {**order, **src.allele_check}
    if order["median_counted_frequency"] > 0.6 and not order["flipped_by_variant_list"]:
        LOG.warning("BGEN %s: the counted (ALT) allele is the more common one in %.0f %% of the %d kept variants "
                    "(median training frequency %.2f), as when the BGEN lists ALT first (plink2's default export); "
                    "if so set bgen_ref=last (--bgen-ref last), or put its .pvar/.bim beside it to be checked",
                    src.path, 100 * order["counted_major_share"], len(freq), order["median_counted_frequency"])
    return order


def read_variant_table(stem: str | Path) -> pd.DataFrame:
    """The `<stem>.variants.tsv` sidecar of a genotype matrix (kept variants and train statistics)."""
    stem = table_stem(stem)
    path = stem.with_name(stem.name + ".variants.tsv")
    if not path.is_file():
        raise BrainmmError(f"genotype matrix {stem}: sidecar {path.name} not found")
    return pd.read_csv(path, sep="\t", dtype={"variant_id": str, "contig": str, "rsid": str}, keep_default_na=False)

