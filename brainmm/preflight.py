"""Minimum cohort sizes, checked up front: every shortfall of a run in ONE message, with the numbers and the fix."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from brainmm.errors import BrainmmError

SPLITS = ("train", "val", "test")
SPLIT_FIX = ("give the short split(s) more subjects: ingest again with other `--split-fractions TRAIN,VAL,TEST` "
             "(e.g. 0.5,0.25,0.25), or with `--split-from SPLIT.csv` (your own table of subject_id,split), "
             "or add subjects")
PIPELINE_SPLIT_FIX = ("give the short split(s) more subjects: set ingest.split_fractions (e.g. [0.5, 0.25, 0.25]) or "
                      "ingest.split_from (your own table of subject_id,split; `brainmm fmri ingest --split-from`), "
                      "or add subjects")


@dataclass(frozen=True)
class Need:
    """`minimum` subjects in `split`, needed by `why` (a stage and what for)."""

    split: str
    minimum: int
    why: str


ALIGN_NEEDS = (Need("train", 2, "align (contrastive training pairs)"),
               Need("val", 2, "align (validation retrieval, used for model selection and early stopping)"))
BASELINE_NEEDS = (Need("train", 3, "the baselines (CCA, PLS, ridge fitted on train)"),
                  Need("test", 3, "the baselines (scored on test)"))


def retrieval_needs(splits: Iterable[str]) -> list[Need]:
    """Retrieval on each evaluated split needs 2 subjects (one query and one other candidate)."""
    return [Need(s, 2, f"evaluate (retrieval on {s})") for s in splits]


def split_sizes(n_groups: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> dict[str, int]:
    """The groups per split `brainmm.data.splits.make_split` gives `n_groups` groups (val/test get >= 1 when > 0)."""
    n_val = max(1, int(round(fractions[1] * n_groups))) if fractions[1] > 0 else 0
    n_test = max(1, int(round(fractions[2] * n_groups))) if fractions[2] > 0 else 0
    return {"train": n_groups - n_val - n_test, "val": n_val, "test": n_test}


def shortfalls(counts: Mapping[str, int], needs: Iterable[Need]) -> list[str]:
    """One phrase per short split: 'val has 1 subject; align (...) needs >= 2, evaluate (...) needs >= 2'."""
    by_split: dict[str, list[Need]] = {}
    for need in needs:
        if int(counts.get(need.split, 0)) < need.minimum:
            by_split.setdefault(need.split, []).append(need)
    out = []
    for split, unmet in by_split.items():
        have = int(counts.get(split, 0))
        whys = ", ".join(dict.fromkeys(f"{n.why} needs >= {n.minimum}" for n in unmet))
        out.append(f"{split} has {have} subject{'' if have == 1 else 's'} ({whys})")
    return out


def minimum_total(needs: Iterable[Need]) -> str:
    """'at least 6 subjects in all (train 2, val 2, test 2)': the smallest cohort meeting every need."""
    most = {s: 0 for s in SPLITS}
    for need in needs:
        most[need.split] = max(most.get(need.split, 0), need.minimum)
    parts = ", ".join(f"{s} {n}" for s, n in most.items() if n)
    return f"at least {sum(most.values())} subjects in all ({parts})"


def describe(counts: Mapping[str, int]) -> str:
    """'train 3, val 1, test 1'."""
    return ", ".join(f"{s} {int(counts.get(s, 0))}" for s in SPLITS)


def check_sizes(counts: Mapping[str, int], needs: Iterable[Need], where: str, fix: str = SPLIT_FIX) -> None:
    """Raise one BrainmmError listing every unmet need of `counts` (subjects per split), the sizes and the fix."""
    needs = list(needs)
    short = shortfalls(counts, needs)
    if short:
        raise BrainmmError(f"{where}: too few subjects ({describe(counts)}): {'; '.join(short)}; this needs "
                           f"{minimum_total(needs)}; {fix}")
