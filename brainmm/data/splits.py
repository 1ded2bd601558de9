"""Subject-level splits (grouped by family/site when given), saved once and reused by every stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainmm.errors import BrainmmError
from brainmm.io import atomic_file
from brainmm.preflight import split_sizes

SPLITS = ("train", "val", "test")


def make_split(
    subject_ids: list[str] | pd.Series,
    groups: list[str] | pd.Series | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> pd.DataFrame:
    """Assign each subject to train/val/test; all subjects of one group land in the same split.

    Returns a DataFrame with columns subject_id, group, split (one row per unique subject).
    """
    subjects = pd.Series(subject_ids, dtype=str).reset_index(drop=True)
    if groups is None:
        grp = subjects.copy()
    else:
        grp = pd.Series(groups).reset_index(drop=True)
        if len(grp) != len(subjects):
            raise BrainmmError(f"split: {len(grp)} groups for {len(subjects)} subject ids")
        grp = grp.where(grp.notna(), subjects).astype(str)
    table = pd.DataFrame({"subject_id": subjects, "group": grp}).drop_duplicates()
    clash = table.groupby("subject_id")["group"].nunique()
    if (clash > 1).any():
        bad = clash[clash > 1].index[:5].tolist()
        raise BrainmmError(f"split: subjects {bad} belong to more than one group (column 'group')")
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise BrainmmError(f"split fractions {fractions}: expected three non-negative numbers summing to 1")
    unique_groups = np.array(sorted(table["group"].unique()))
    if len(unique_groups) < 3:
        raise BrainmmError(f"split: need at least 3 subjects/groups for train/val/test, got {len(unique_groups)}; add "
                           "subjects, or give your own assignment with `brainmm fmri ingest --split-from SPLIT.csv` "
                           "(a table of subject_id,split)")
    rng = np.random.default_rng(seed)
    order = unique_groups[rng.permutation(len(unique_groups))]
    n = len(order)
    sizes = split_sizes(n, tuple(fractions))
    n_train, n_val = sizes["train"], sizes["val"]
    if n_train < 1:
        raise BrainmmError(f"split: {n} subjects/groups are too few for fractions {fractions}")
    assign = {g: "train" for g in order[:n_train]}
    assign.update({g: "val" for g in order[n_train : n_train + n_val]})
    assign.update({g: "test" for g in order[n_train + n_val :]})
    table["split"] = table["group"].map(assign)
    return table.sort_values("subject_id").reset_index(drop=True)


def check_no_leakage(split: pd.DataFrame) -> None:
    """Raise if a subject or a group appears in two splits (names them)."""
    for col in ("subject_id", "group"):
        if col not in split:
            continue
        n = split.groupby(col)["split"].nunique()
        bad = n[n > 1].index.tolist()
        if bad:
            raise BrainmmError(f"split leakage: {col} {bad[:10]} appear in more than one split")


def save_split(split: pd.DataFrame, path: str | Path) -> Path:
    """Write the split table as CSV atomically."""
    check_no_leakage(split)
    path = Path(path)
    with atomic_file(path, suffix=".csv") as tmp:
        split.to_csv(tmp, index=False)
    return path


def load_split(path: str | Path) -> pd.DataFrame:
    """Read a split table and check it (columns subject_id, split; no leakage)."""
    path = Path(path)
    if not path.is_file():
        raise BrainmmError(f"split file {path}: not found")
    split = pd.read_csv(path, dtype={"subject_id": str, "group": str})
    for col in ("subject_id", "split"):
        if col not in split:
            raise BrainmmError(f"split file {path}: missing column '{col}'")
    bad = sorted(set(split["split"]) - set(SPLITS))
    if bad:
        raise BrainmmError(f"split file {path}: unknown split names {bad}; expected {list(SPLITS)}")
    check_no_leakage(split)
    return split


def subjects_in(split: pd.DataFrame, name: str) -> list[str]:
    """Subject ids of one split, sorted."""
    return sorted(split.loc[split["split"] == name, "subject_id"].astype(str).tolist())
