"""Align inputs: tables and split read, checked and turned into row-aligned pairs per split."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from brainmm.align.config import AlignDataConfig
from brainmm.align.towers import BrainInputs, BrainSide
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.preflight import ALIGN_NEEDS, check_sizes

LOG = logging.getLogger("brainmm.align")
Adjust = Callable[["BrainRows", dict[str, EmbeddingTable], dict[str, str]], dict[str, EmbeddingTable]]


# ------------------------------------------------------------------------------------------------- data


def table_subjects(table: EmbeddingTable, where: str) -> list[str]:
    """Subject of every row: the ids themselves, or meta['subject_id'] (a {row id: subject} map or a list)."""
    mapping = table.meta.get("subject_id")
    if mapping is None:
        return list(table.ids)
    if isinstance(mapping, dict):
        missing = [i for i in table.ids if i not in mapping]
        if missing:
            raise BrainmmError(f"{where}: meta.subject_id has no subject for rows {missing[:5]}")
        return [str(mapping[i]) for i in table.ids]
    if isinstance(mapping, list) and len(mapping) == len(table.ids):
        return [str(s) for s in mapping]
    raise BrainmmError(f"{where}: meta.subject_id must map every row id to a subject (a dict, or a list of {len(table.ids)})")


def _load_table(path: str, where: str) -> EmbeddingTable:
    if not path:
        raise BrainmmError(f"align config field '{where}': expected the path of an embedding table, got nothing")
    table = EmbeddingTable.load(path)
    check_table_finite(table, f"embedding table {path} ({where})")
    return table


def check_table_finite(table: EmbeddingTable, what: str) -> None:
    bad = ~np.isfinite(table.vectors).all(axis=1)
    if bad.any():
        ids = [table.ids[i] for i in np.flatnonzero(bad)[:5]]
        raise BrainmmError(f"{what}: {int(bad.sum())} rows with NaN/inf values, e.g. {ids}")


@dataclass
class BrainRows:
    """The brain side's rows: ids (recordings or subjects), their subjects, and input vectors when precomputed
    (a table or frozen-tower embeddings); `vectors` is None when a trainable tower reads fMRI windows."""

    ids: list[str]
    subjects: list[str]
    vectors: np.ndarray | None
    dim: int  # width of the brain tower's output (= the table's width for tables)
    meta: dict[str, Any]
    source: str  # what the rows come from (a table path, or checkpoint on dataset)

    @classmethod
    def from_table(cls, table: EmbeddingTable, source: str) -> BrainRows:
        """Rows of an embedding table (subjects from its ids or meta.subject_id)."""
        return cls(list(table.ids), table_subjects(table, f"brain table {source}"), table.vectors, table.dim,
                   dict(table.meta), source)


@dataclass
class SplitData:
    """Row-aligned training pairs of one split: one row per brain row whose subject has some genetics."""

    row_ids: list[str]
    subjects: list[str]
    brain: torch.Tensor | None  # input vectors; None when `windows` feeds a brain tower
    genetics: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    labels: torch.Tensor  # subject index (unique over all splits)
    windows: BrainInputs | None = None  # the brain tower kind's input provider (BrainLM: windows)

    def __len__(self) -> int:
        return len(self.row_ids)


@dataclass
class AlignData:
    """Everything the driver needs from the inputs and the split."""

    brain: BrainRows
    genetics: dict[str, EmbeddingTable]
    genetics_subjects: dict[str, list[str]]
    split_of: dict[str, str]
    splits: dict[str, SplitData]
    recording_keyed: bool
    counts: dict[str, Any]
    brain_side: BrainSide | None = None  # what the brain tower kind built (its state, its input provider)
    precision: str = "fp32"  # the run's compute precision, resolved once (recorded in heads.json)


def load_align_data(cfg: AlignDataConfig, brain: BrainRows | None = None,
                    shuffle_seed: int | None = None, adjust: Adjust | None = None) -> AlignData:
    """Read the tables and the split, check overlap and leakage, and build row-aligned pairs per split.

    `brain` replaces the `cfg.brain` table (frozen-tower embeddings, or the recordings of a trainable tower).
    `shuffle_seed` (a shuffled-pair null run) pairs every train subject with the genetics of another train subject
    (a seeded permutation without fixed points, per modality); val and test keep their true pairs.
    `adjust` (confounds) replaces the brain vectors and the genetics tables before the pairs are built.
    """
    from brainmm.data.splits import SPLITS, load_split

    if not cfg.genetics:
        raise BrainmmError("align config field 'data.genetics': expected at least one genetics table (name: path)")
    if not cfg.split:
        raise BrainmmError("align config field 'data.split': expected the split table CSV, got nothing")
    split = load_split(cfg.split)  # raises on subjects/groups in two splits
    split_of = dict(zip(split["subject_id"].astype(str), split["split"]))
    if brain is None:
        brain = BrainRows.from_table(_load_table(cfg.brain, "data.brain"), cfg.brain)
    brain_subjects = brain.subjects
    recording_keyed = len(set(brain_subjects)) < len(brain_subjects) or brain_subjects != brain.ids
    genetics: dict[str, EmbeddingTable] = {}
    genetics_subjects: dict[str, list[str]] = {}
    gen_row: dict[str, dict[str, int]] = {}
    brain_set = set(brain_subjects)
    for m, path in cfg.genetics.items():
        table = _load_table(path, f"data.genetics.{m}")
        subjects = table_subjects(table, f"genetics table {path}")
        if len(set(subjects)) != len(subjects):
            raise BrainmmError(f"genetics table {path} ('{m}'): expected one row per subject, found repeated subjects")
        common = brain_set & set(subjects)
        if not common:
            raise BrainmmError(
                f"genetics table {path} ('{m}') and brain table {brain.source} share no subject id: "
                f"{len(brain_set)} brain subjects (e.g. {sorted(brain_set)[:3]}), {len(subjects)} genetics subjects "
                f"(e.g. {sorted(subjects)[:3]}); check that both are keyed by the same subject ids"
            )
        genetics[m], genetics_subjects[m] = table, subjects
        gen_row[m] = {s: i for i, s in enumerate(subjects)}
    if adjust is not None:
        genetics = adjust(brain, genetics, split_of)
        genetics_subjects = {m: table_subjects(t, f"genetics table {cfg.genetics[m]}") for m, t in genetics.items()}
        gen_row = {m: {s: i for i, s in enumerate(subjects)} for m, subjects in genetics_subjects.items()}
    if shuffle_seed is not None:
        for k, m in enumerate(genetics):
            gen_row[m] = _shuffled_train_rows(gen_row[m], brain_set, split_of, shuffle_seed + k, m)
    not_in_split = sorted({s for s in brain_set if s not in split_of})
    if len(not_in_split) == len(brain_set):
        raise BrainmmError(
            f"split table {cfg.split}: none of the {len(brain_set)} brain subjects is listed "
            f"(e.g. {sorted(brain_set)[:3]} vs {split['subject_id'].head(3).tolist()})"
        )
    if not_in_split:
        LOG.warning("align: %d brain subjects are not in the split table and are left out (e.g. %s)",
                    len(not_in_split), not_in_split[:3])
    label_of = {s: i for i, s in enumerate(sorted(brain_set))}
    splits: dict[str, SplitData] = {}
    counts: dict[str, Any] = {"brain_rows": len(brain.ids), "brain_subjects": len(brain_set),
                              "subjects_not_in_split": len(not_in_split)}
    for name in SPLITS:
        rows = [i for i, s in enumerate(brain_subjects)
                if split_of.get(s) == name and any(s in gen_row[m] for m in genetics)]
        subjects = [brain_subjects[i] for i in rows]
        gen, masks = {}, {}
        for m, table in genetics.items():
            present = np.array([s in gen_row[m] for s in subjects], dtype=bool)
            vectors = np.zeros((len(rows), table.dim), dtype=np.float32)
            if present.any():
                vectors[present] = table.vectors[[gen_row[m][s] for s, p in zip(subjects, present) if p]]
            gen[m], masks[m] = torch.from_numpy(vectors), torch.from_numpy(present)
        vectors = None if brain.vectors is None else torch.from_numpy(brain.vectors[rows])
        splits[name] = SplitData([brain.ids[i] for i in rows], subjects, vectors, gen, masks,
                                 torch.tensor([label_of[s] for s in subjects], dtype=torch.long))
        counts[f"{name}_pairs"] = len(rows)
        counts[f"{name}_subjects"] = len(set(subjects))
    sizes = {"train": min(len(splits["train"]), counts["train_subjects"]), "val": counts["val_subjects"],
             "test": counts["test_subjects"]}
    check_sizes(sizes, ALIGN_NEEDS, f"align (subjects with brain and genetics inputs in split table {cfg.split})")
    return AlignData(brain, genetics, genetics_subjects, split_of, splits, recording_keyed, counts)


def _shuffled_train_rows(rows: dict[str, int], brain_subjects: set[str], split_of: dict[str, str], seed: int,
                         modality: str) -> dict[str, int]:
    """Subject -> genetics row with the rows of the train subjects (those with brain data) deranged, seeded."""
    from alignment.baselines import shuffled_pairs

    train = sorted(s for s in rows if split_of.get(s) == "train" and s in brain_subjects)
    if len(train) < 2:
        raise BrainmmError(f"align config field 'train.shuffle_pairs': modality {modality!r} has {len(train)} train "
                           "subjects with brain data; need >= 2 to shuffle the pairs")
    perm = shuffled_pairs(len(train), seed)
    out = dict(rows)
    out.update({s: rows[train[j]] for s, j in zip(train, perm)})
    return out


def first_rows(data: SplitData, modality: str) -> list[int]:
    """One row per subject that has `modality` (the first), in row order."""
    seen: dict[str, int] = {}
    for i, (s, present) in enumerate(zip(data.subjects, data.masks[modality].tolist())):
        if present:
            seen.setdefault(s, i)
    return list(seen.values())

