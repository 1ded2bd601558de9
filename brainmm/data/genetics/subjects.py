"""Match genotype sample ids (VCF/PLINK) to cohort `subject_id`s."""

from __future__ import annotations

from pathlib import Path

from brainmm.errors import BrainmmError
from brainmm.runtime import LOG


def read_sample_map(cohort: str | Path, column: str | None = None) -> dict[str, str]:
    """Map genotype sample id -> subject_id from a cohort table (`column` holds the sample ids; None: identity).

    Rows with an empty sample id (subjects without genotypes) are left out.
    """
    from brainmm.data.cohort import check_unique, read_table, require_columns

    key = column or "subject_id"
    table = read_table(cohort, text_columns=("subject_id", key))
    require_columns(table, ["subject_id", key])
    table = table[table[key].notna() & (table[key].astype(str).str.strip() != "")]
    check_unique(table, [key], what=f"genotype sample id column {key!r} repeats a sample")
    if key != "subject_id":
        check_unique(table, ["subject_id"], what="a subject maps to more than one genotype sample")
    return dict(zip(table[key].astype(str).str.strip(), table["subject_id"].astype(str)))


def match_samples(
    samples: list[str],
    source: str,
    sample_map: dict[str, str] | None,
    drop_unmatched: bool = False,
    where: str = "cohort table",
) -> tuple[list[str], list[str]]:
    """(kept genotype sample ids, their subject ids), in the genotype file's order.

    Samples absent from `sample_map` raise a BrainmmError, or with `drop_unmatched` are dropped and the
    count is logged. `sample_map` None means the genotype sample ids are the subject ids.
    """
    if sample_map is None:
        return list(samples), list(samples)
    missing = [s for s in samples if s not in sample_map]
    if missing and not drop_unmatched:
        raise BrainmmError(
            f"{len(missing)} of {len(samples)} samples of {source} are not in the {where} "
            f"(e.g. {', '.join(missing[:5])}); add them, map them with a sample-id column, or drop them "
            "explicitly (drop_unmatched_samples / --drop-unmatched-samples)"
        )
    if missing:
        LOG.warning("dropping %d of %d samples of %s that are not in the %s (e.g. %s)",
                    len(missing), len(samples), source, where, ", ".join(missing[:3]))
    kept = [s for s in samples if s in sample_map]
    if not kept:
        raise BrainmmError(f"no sample of {source} is in the {where}")
    absent = len(sample_map) - len(kept)
    if absent > 0:
        LOG.info("%d subjects of the %s have no genotypes in %s", absent, where, source)
    return kept, [sample_map[s] for s in kept]


def warn_missing_subjects(split_map: dict[str, str], subjects: list[str], source: str, what: str) -> int:
    """Warn with the count (per split) of split-table subjects that have no genotypes in `source`; returns it."""
    have = set(subjects)
    missing = [s for s in split_map if s not in have]
    if missing:
        per = {name: sum(split_map[s] == name for s in missing) for name in ("train", "val", "test")}
        LOG.warning("%s: %d of %d subjects of the split table have no genotypes in %s (train %d, val %d, test %d; "
                    "e.g. %s); they get no row", what, len(missing), len(split_map), source, per["train"],
                    per["val"], per["test"], ", ".join(missing[:3]))
    return len(missing)
