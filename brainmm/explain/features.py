"""What each input column is: variants of a genotype matrix (ID, rsID, chrom, pos, gene from a BED), connectivity
edges (the two parcels, nilearn's lower-triangle order), parcels (label, MNI coordinates, network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainmm.errors import BrainmmError


def variant_columns(table_path: str, meta: dict[str, Any], dim: int) -> pd.DataFrame | None:
    """The variants of a genotype-matrix table in column order (variant_id, rsid, chrom, pos), or None when the
    table is not a genotype matrix (e.g. DNA-model embeddings) or has no variants sidecar (a table written without
    `brainmm genetics matrix`: its columns are then scored by index, with a warning)."""
    import logging

    from brainmm.data.genetics import read_variant_table
    from brainmm.embeddings import table_stem

    if meta.get("kind") != "genotype_matrix":
        return None
    stem = table_stem(table_path)
    if not stem.with_name(stem.name + ".variants.tsv").is_file():
        logging.getLogger("brainmm.explain").warning(
            "explain: genotype matrix %s has no %s.variants.tsv sidecar (not written by `brainmm genetics matrix`); "
            "its columns are scored by index, without variant IDs or positions", stem, stem.name)
        return None
    table = read_variant_table(table_path)
    if len(table) != dim:
        raise BrainmmError(f"genotype matrix {table_path}: its variants sidecar lists {len(table)} variants for "
                           f"{dim} columns")
    rsid = table["rsid"] if "rsid" in table else pd.Series([""] * len(table))
    return pd.DataFrame({"variant_id": table["variant_id"].astype(str), "rsid": rsid.astype(str).replace("", "."),
                         "chrom": table["contig"].astype(str), "pos": table["pos"].astype(np.int64)})


def read_genes(path: str) -> pd.DataFrame:
    """A BED of genes: chrom, start (0-based), end, name (the first four columns; header/track lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise BrainmmError(f"config field 'explain.genes': BED file {path} not found")
    import io

    lines = [line for line in p.read_text().splitlines() if line and not line.startswith(("#", "track", "browser"))]
    try:
        bed = pd.read_csv(io.StringIO("\n".join(lines)), sep="\t", header=None, usecols=[0, 1, 2, 3],
                          dtype={0: str, 3: str})
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise BrainmmError(f"genes BED {path}: expected tab-separated chrom, start, end, name ({err})") from None
    bed.columns = ["chrom", "start", "end", "name"]
    try:
        bed[["start", "end"]] = bed[["start", "end"]].astype(np.int64)
    except ValueError:
        raise BrainmmError(f"genes BED {path}: start/end must be integers") from None
    if (bed["end"] < bed["start"]).any() or bed.empty:
        raise BrainmmError(f"genes BED {path}: expected rows with start <= end")
    return bed.reset_index(drop=True)


def _bare(chrom: pd.Series) -> pd.Series:
    return chrom.astype(str).str.removeprefix("chr")


def assign_genes(variants: pd.DataFrame, genes: pd.DataFrame) -> pd.Series:
    """The gene of each variant (BED half-open [start, end), 1-based positions); overlapping genes joined by ','."""
    out = pd.Series([""] * len(variants), index=variants.index, dtype=object)
    vchrom, gchrom = _bare(variants["chrom"]), _bare(genes["chrom"])
    for chrom, g in genes.groupby(gchrom):
        on = np.flatnonzero(vchrom.to_numpy() == chrom)
        pos = variants["pos"].to_numpy()[on] - 1
        for row in g.itertuples(index=False):
            hit = on[(pos >= row.start) & (pos < row.end)]
            out.iloc[hit] = [f"{v},{row.name}" if v else row.name for v in out.iloc[hit]]
    return out


def edge_parcels(n_features: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(i, j, V) of the vectorised connectivity features: nilearn's lower triangle without diagonal (i > j)."""
    v = int(round((1 + np.sqrt(1 + 8 * n_features)) / 2))
    if v * (v - 1) // 2 != n_features:
        raise BrainmmError(f"connectivity table: {n_features} features is not V(V-1)/2 for any parcel count V")
    i, j = np.tril_indices(v, -1)
    return i, j, v


def parcel_table(dataset: str, n_parcels: int, networks: str = "") -> pd.DataFrame:
    """parcel, label, x, y, z (and network) of an ingested fMRI dataset's parcels (coords.tsv); networks from a TSV
    (label, network) when given, else from Schaefer-style labels (`7Networks_LH_Vis_1` -> Vis)."""
    path = Path(dataset) / "coords.tsv"
    if path.is_file():
        coords = pd.read_csv(path, sep="\t", dtype={"label": str})
    else:
        coords = pd.DataFrame({"parcel": np.arange(n_parcels), "label": [str(i) for i in range(n_parcels)],
                               "x": np.nan, "y": np.nan, "z": np.nan})
    if len(coords) != n_parcels:
        raise BrainmmError(f"fMRI dataset {dataset}: coords.tsv has {len(coords)} parcels, the connectivity table "
                           f"{n_parcels}")
    out = coords[["parcel", "label", "x", "y", "z"]].copy()
    if networks:
        out["network"] = _network_file(networks, out["label"])
    else:
        parts = out["label"].str.split("_")
        schaefer = out["label"].str.contains("Networks_", regex=False)
        if schaefer.all():
            out["network"] = parts.str[2]
    return out


def _network_file(path: str, labels: pd.Series) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise BrainmmError(f"config field 'explain.networks': file {path} not found")
    table = pd.read_csv(p, sep=None, engine="python", dtype=str)
    if not {"label", "network"} <= set(table.columns):
        raise BrainmmError(f"networks table {path}: expected columns label and network, got {list(table.columns)}")
    lookup = dict(zip(table["label"], table["network"]))
    missing = [lab for lab in labels if lab not in lookup]
    if missing:
        raise BrainmmError(f"networks table {path}: no network for parcels {missing[:5]}")
    return [lookup[lab] for lab in labels]
