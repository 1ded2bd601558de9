"""`brainmm genetics`: personal haplotypes, genotype matrices, DNA-encoder embeddings, precomputed tables.

Sharded embedding at cohort scale: `torchrun --nproc_per_node N -m brainmm.cli genetics embed ...`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `genetics` command group."""
    p = sub.add_parser("genetics", help="genetics inputs: haplotypes, genotype matrix, DNA embeddings")
    group = p.add_subparsers(dest="genetics_command", metavar="ACTION")

    h = group.add_parser("haplotypes", help="write personal haplotype sequences per region as FASTA")
    _sequence_flags(h)
    h.add_argument("--samples", default=None, help="comma-separated subject ids to write (default: all)")
    h.add_argument("--out", required=True, help="output FASTA (records >subject|region|hap1 / hap2)")
    h.set_defaults(func=_haplotypes)

    e = group.add_parser("embed", help="haplotypes -> DNA encoder -> subject embedding table (cached)")
    e.add_argument("--config", default=None, help="YAML config (GeneticsEmbedConfig)")
    _sequence_flags(e)
    e.add_argument("--encoder", dest="encoder_family", default=None, help="DNA encoder family (e.g. generator)")
    e.add_argument("--encoder-path", default=None, help="local model folder")
    e.add_argument("--mode", choices=("haplotypes", "variant_deltas"), default=None)
    e.add_argument("--combine-regions", choices=("concat", "mean"), default=None)
    e.add_argument("--keep-reference", action="store_true",
                   help="do not subtract the reference window's embedding")
    e.add_argument("--cache-dir", default=None, help="embedding cache (default <data dir>/dna-embeddings)")
    e.add_argument("--out", default=None, help="output table stem")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override")
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides (same as --set)")
    e.set_defaults(func=_embed)

    m = group.add_parser("matrix", help="SNP dosages (VCF, PLINK .bed/.pgen, BGEN) -> subject x variant table")
    m.add_argument("--config", default=None, help="YAML config (GenotypeMatrixConfig)")
    _genotype_flags(m)
    m.add_argument("--split", default=None, help="split table CSV (statistics are fitted on 'train')")
    m.add_argument("--impute", choices=("mode", "mean"), default=None)
    m.add_argument("--pgs-weights", default=None, help="weights table for polygenic scores (extra table)")
    m.add_argument("--out", default=None, help="output table stem")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override")
    m.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides (same as --set)")
    m.set_defaults(func=_matrix)

    c = group.add_parser("pca", help="genetic principal components (plink2 --pca standardisation) per subject")
    c.add_argument("--config", default=None, help="YAML config (GeneticPcaConfig)")
    _genotype_flags(c)
    c.add_argument("--split", default=None, help="split table CSV: fit on 'train', project val/test "
                   "(default: every sample fits, with a warning)")
    c.add_argument("--n-pcs", type=int, default=None, help="number of components (default 10)")
    c.add_argument("--ld-prune-r2", type=float, default=None, help="greedy LD pruning at this r^2 (default off)")
    c.add_argument("--ld-window", type=int, default=None, help="LD pruning window, in variants (default 200)")
    c.add_argument("--out", default=None, help="output table stem")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides (same as --set)")
    c.set_defaults(func=_pca)

    i = group.add_parser(
        "import", help="precomputed per-subject vectors (Parquet/CSV/NPY/NPZ) -> table",
        description="Turn per-subject vectors computed elsewhere (polygenic scores, an external model's embeddings) "
        "into an embedding table (<out>.safetensors + <out>.json) that `brainmm align` takes as a genetics modality "
        "(data.genetics.<name>). Parquet/CSV/TSV: an id column plus numeric columns (or one list-valued column); "
        ".npz: arrays `ids` and `vectors`; .npy: a [subjects, dim] array with --ids naming its rows (default "
        "<stem>.ids.txt).")
    i.add_argument("--table", required=True, help="input file (.parquet, .csv, .tsv, .npy, .npz)")
    i.add_argument("--id-column", default="subject_id", help="column holding the subject ids (default subject_id)")
    i.add_argument("--ids", default=None, help="ids file for .npy input (one per line; default <stem>.ids.txt)")
    i.add_argument("--out", required=True, help="output table stem")
    i.set_defaults(func=_import)


def _genotype_flags(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--vcf", default=None, help="VCF/BCF with GT")
    src.add_argument("--bed", default=None, help="PLINK 1 .bed (with .bim/.fam beside it)")
    src.add_argument("--pgen", default=None, help="PLINK 2 .pgen (with .pvar/.psam beside it)")
    src.add_argument("--bgen", default=None, help="BGEN 1.1/1.2/1.3 (with --sample or FILE.sample beside it)")
    p.add_argument("--sample", default=None, help="Oxford .sample file of --bgen (default: beside it)")
    p.add_argument("--bgen-ref", choices=("first", "last"), default=None,
                   help="which --bgen allele is REF: first (UK Biobank) or last (plink2's default ALT-first export)")
    p.add_argument("--cohort", default=None, help="cohort table mapping genotype sample ids to subject_id")
    p.add_argument("--sample-column", default=None, help="cohort column holding the genotype sample ids")
    p.add_argument("--drop-unmatched-samples", action="store_true", default=None)
    p.add_argument("--variants", default=None, help="variant ID list (contig:pos:ref:alt or rsid; a .variants.tsv)")
    p.add_argument("--regions", default=None, help="BED file: keep variants inside these regions")
    p.add_argument("--min-info", type=float, default=None, help="keep variants with INFO/R2 >= this (VCF, .pvar)")
    p.add_argument("--hard-call-threshold", type=float, default=None,
                   help="dosages within this of 0/1/2 are rounded, others set missing (default: keep dosages)")
    p.add_argument("--min-maf", type=float, default=None)
    p.add_argument("--max-missing", type=float, default=None)
    p.add_argument("--block-size", type=int, default=None, help="variants read at a time (default: ~16 MiB of dosages)")


def _genotype_values(args: argparse.Namespace) -> dict[str, Any]:
    names = ("vcf", "bed", "pgen", "bgen", "sample", "bgen_ref", "cohort", "sample_column", "drop_unmatched_samples", "variants",
             "regions", "min_info", "hard_call_threshold", "min_maf", "max_missing", "block_size", "split", "out")
    return {n: getattr(args, n) for n in names}


def _sequence_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vcf", default=None, help="bgzip-compressed, indexed VCF/BCF")
    p.add_argument("--bgen", default=None, help="phased BGEN instead of --vcf (with --sample or FILE.sample beside it)")
    p.add_argument("--sample", default=None, help="Oxford .sample file of --bgen (default: beside it)")
    p.add_argument("--fasta", default=None, help="reference FASTA (plain or bgzip; index built if missing)")
    p.add_argument("--regions", default=None, help="BED or gene table (name, contig, start, end[, strand])")
    p.add_argument("--cohort", default=None, help="cohort table with subject_id (and a sample-id column)")
    p.add_argument("--sample-column", default=None, help="cohort column holding the VCF sample ids")
    p.add_argument("--drop-unmatched-samples", action="store_true", default=None,
                   help="drop (and log) VCF samples missing from the cohort table instead of failing")
    p.add_argument("--contig-alias", action="append", default=None, metavar="FASTA=VCF",
                   help="VCF name of a FASTA contig, e.g. 20=chr20 (repeatable)")


def _aliases(values: list[str] | None) -> dict[str, str] | None:
    from brainmm.errors import BrainmmError

    if values is None:
        return None
    out = {}
    for v in values:
        if "=" not in v:
            raise BrainmmError(f"--contig-alias {v!r}: expected FASTA_NAME=VCF_NAME, e.g. 20=chr20")
        k, name = v.split("=", 1)
        out[k] = name
    return out


def _overrides(pairs: dict[str, Any]) -> list[str]:
    """Flag values as dotted overrides (JSON is YAML, so strings stay strings)."""
    return [f"{k}={json.dumps(v)}" for k, v in pairs.items() if v is not None]


def _inputs_flags(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    return {f"{prefix}vcf": args.vcf, f"{prefix}bgen": args.bgen, f"{prefix}sample": args.sample,
            f"{prefix}fasta": args.fasta, f"{prefix}regions": args.regions,
            f"{prefix}cohort": args.cohort, f"{prefix}sample_column": args.sample_column,
            f"{prefix}drop_unmatched_samples": args.drop_unmatched_samples,
            f"{prefix}contig_aliases": _aliases(args.contig_alias)}


def _haplotypes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from brainmm.config import from_dict
    from brainmm.data.genetics.config import SequenceInputs
    from brainmm.data.genetics.embed import make_plan
    from brainmm.errors import BrainmmError
    from brainmm.io import atomic_file

    flags = {k: v for k, v in _inputs_flags(args, "").items() if v is not None}
    inputs = from_dict(SequenceInputs, flags)
    for name in ("vcf", "fasta", "regions"):
        if not getattr(inputs, name) and not (name == "vcf" and inputs.bgen):
            raise BrainmmError(f"--{name}: required" + (" (or --bgen)" if name == "vcf" else ""))
    plan = make_plan(inputs, "haplotypes")
    wanted = set(args.samples.split(",")) if args.samples else None
    if wanted is not None and wanted - set(plan.subjects):
        raise BrainmmError(f"--samples: unknown subject id(s) {sorted(wanted - set(plan.subjects))[:5]}")
    with atomic_file(Path(args.out), suffix=".fa") as tmp, open(tmp, "w") as fh:
        for s, subject in enumerate(plan.subjects):
            if wanted is not None and subject not in wanted:
                continue
            for r in plan.regions:
                for h in range(2):
                    fh.write(f">{subject}|{r.region.name}|hap{h + 1}\n{r.sequences[r.index[s, h]]}\n")
    print(json.dumps(plan.stats()))
    print(args.out)
    return 0


def _embed(args: argparse.Namespace) -> int:
    from pathlib import Path

    from brainmm.config import load_config
    from brainmm.data.genetics.config import GeneticsEmbedConfig
    from brainmm.io import run_lock
    from brainmm.runtime import log_to_file

    flags = _inputs_flags(args, "inputs.")
    flags.update({"encoder.family": args.encoder_family, "encoder.path": args.encoder_path, "mode": args.mode,
                  "combine_regions": args.combine_regions, "cache_dir": args.cache_dir, "out": args.out,
                  "subtract_reference": False if args.keep_reference else None})
    cfg = load_config(GeneticsEmbedConfig, args.config, _overrides(flags) + list(args.set) + list(args.overrides))
    cfg.require_inputs()
    from brainmm.data.genetics.embed import run_embed, table_stem  # after the config checks: loads torch

    out = table_stem(cfg.out)
    log_to_file(out.parent if str(out.parent) else Path("."))
    with run_lock(out):
        table = run_embed(cfg)
    if table is not None:
        s = table.meta["sequences"]
        print(f"sequences: {s['requested']} requested, {s['unique']} unique, {s['cached']} already cached, "
              f"{s['embedded']} embedded")
        print(f"{out} ({len(table.ids)} subjects x {table.dim})")
    return 0


def _matrix(args: argparse.Namespace) -> int:
    from brainmm.config import load_config
    from brainmm.data.genetics.config import GenotypeMatrixConfig
    from brainmm.io import run_lock
    from brainmm.runtime import log_to_file

    flags = {**_genotype_values(args), "impute": args.impute, "pgs_weights": args.pgs_weights}
    cfg = load_config(GenotypeMatrixConfig, args.config, _overrides(flags) + list(args.set) + list(args.overrides))
    cfg.require_inputs()
    from brainmm.data.genetics.embed import table_stem
    from brainmm.data.genetics.matrix import run_matrix

    out = table_stem(cfg.out)
    log_to_file(out.parent)
    with run_lock(out):
        table = run_matrix(cfg)
    print(f"{out} ({len(table.ids)} subjects x {table.dim} variants)")
    return 0


def _pca(args: argparse.Namespace) -> int:
    from brainmm.config import load_config
    from brainmm.data.genetics.config import GeneticPcaConfig
    from brainmm.io import run_lock
    from brainmm.runtime import log_to_file

    flags = {**_genotype_values(args), "n_pcs": args.n_pcs, "ld_prune_r2": args.ld_prune_r2,
             "ld_window": args.ld_window}
    cfg = load_config(GeneticPcaConfig, args.config, _overrides(flags) + list(args.set) + list(args.overrides))
    cfg.require_source()
    from brainmm.data.genetics.embed import table_stem
    from brainmm.data.genetics.pca import run_pca

    out = table_stem(cfg.out)
    log_to_file(out.parent)
    with run_lock(out):
        table = run_pca(cfg)
    print(f"{out} ({len(table.ids)} subjects x {table.dim} PCs, {table.meta['variants_used']} variants)")
    return 0


def _import(args: argparse.Namespace) -> int:
    from brainmm.data.genetics.embed import table_stem
    from brainmm.data.genetics.precomputed import read_precomputed
    from brainmm.io import run_lock

    table = read_precomputed(args.table, args.id_column, args.ids)
    with run_lock(table_stem(args.out)):
        out = table.save(table_stem(args.out))
    print(f"{out} ({len(table.ids)} subjects x {table.dim})")
    return 0
