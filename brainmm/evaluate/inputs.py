"""What an evaluation reads: the align run (by MLflow run id or folder), its heads and shared-space embeddings, the
input tables, the split and the cohort phenotypes; every check on them (NaN rows, split leakage, unknown columns)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.evaluate.config import SPLIT_NAMES, EvaluateConfig

LOG = logging.getLogger("brainmm.evaluate")


# ------------------------------------------------------------------------------------------- align run


@dataclass
class AlignRun:
    """An align run: folder, MLflow run id, tracking URI, experiment name and resolved config."""

    run_dir: Path
    run_id: str
    tracking_uri: str
    experiment: str
    config: Any  # brainmm.align.AlignConfig
    tags: dict[str, str] = field(default_factory=dict)


def _read_run_json(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    if not path.is_file():
        raise BrainmmError(f"align folder {run_dir}: no run.json (it names the MLflow run); did the align run finish?")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise BrainmmError(f"align folder {run_dir}: run.json is not valid JSON ({err})") from None


def resolve_align_run(cfg: EvaluateConfig) -> AlignRun:
    """Find the align run from `cfg.run_id` (its tags/params name the folder) or `cfg.align_dir` (run.json names
    the run); the folder must hold config.yaml, the heads and the embeddings."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from brainmm.align import AlignConfig
    from brainmm.config import load_config
    from brainmm.tracking import check_tracking_server, resolve_tracking_uri

    if not cfg.run_id and not cfg.align_dir:
        raise BrainmmError("evaluate: pass the align run, by MLflow run id (--run / run_id) or folder (--align-dir)")
    recorded: dict[str, Any] = {}
    run_dir = None
    if cfg.align_dir:
        run_dir = Path(cfg.align_dir)
        if not run_dir.is_dir():
            raise BrainmmError(f"align folder {run_dir}: does not exist (expected the output_dir of `brainmm align`)")
        recorded = _read_run_json(run_dir)
    uri = resolve_tracking_uri(cfg.tracking_uri or recorded.get("tracking_uri"))
    check_tracking_server(uri)
    run_id = cfg.run_id or str(recorded.get("mlflow_run_id") or "")
    if not run_id:
        raise BrainmmError(f"align folder {run_dir}: run.json has no 'mlflow_run_id'")
    if cfg.run_id and recorded and recorded.get("mlflow_run_id") != cfg.run_id:
        raise BrainmmError(
            f"run_id {cfg.run_id} and align_dir {run_dir} disagree: {run_dir}/run.json names run "
            f"{recorded.get('mlflow_run_id')}; pass one of them"
        )
    client = mlflow.MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise BrainmmError(f"align run id {run_id!r}: not found in the MLflow backend {uri}") from None
    tags, params = run.data.tags, run.data.params
    stage = tags.get("brainmm.stage")
    if stage != "align":
        raise BrainmmError(f"MLflow run {run_id}: tag brainmm.stage is {stage!r}, expected an 'align' run")
    if run_dir is None:
        where = tags.get("brainmm.run_dir") or params.get("output_dir")
        if not where:
            raise BrainmmError(f"align run {run_id}: neither tag brainmm.run_dir nor param output_dir names its folder; "
                               "pass --align-dir")
        run_dir = Path(where)
        if not run_dir.is_dir():
            raise BrainmmError(f"align run {run_id}: its folder {run_dir} (from the run's tags/params) does not exist "
                               "here; pass --align-dir with its current location")
        if (run_dir / "run.json").is_file() and _read_run_json(run_dir).get("mlflow_run_id") != run_id:
            raise BrainmmError(f"align run {run_id}: folder {run_dir} holds another run (see its run.json); pass "
                               "--align-dir")
    for name in ("config.yaml", "heads.json", "heads.safetensors", "embeddings"):
        if not (run_dir / name).exists():
            raise BrainmmError(f"align folder {run_dir}: {name} is missing (expected a finished `brainmm align` run)")
    experiment = client.get_experiment(run.info.experiment_id).name
    config = load_config(AlignConfig, run_dir / "config.yaml")
    return AlignRun(run_dir, run_id, uri, experiment, config, dict(tags))


# ---------------------------------------------------------------------------------------------- tables


def finite_table(path: str | Path, where: str, mmap: bool = False) -> EmbeddingTable:
    """Load an embedding table (`mmap`: memory-mapped) and refuse rows with NaN/inf (naming the table, the count
    and some ids)."""
    table = EmbeddingTable.load(path, mmap=mmap)
    check_finite_rows(table, path, where)
    return table


def check_finite_rows(table: EmbeddingTable, path: str | Path, where: str, block: int = 1024) -> None:
    """Refuse rows with NaN/inf (naming the table, the count and some ids); checked in row blocks."""
    v = table.vectors
    bad = np.concatenate([~np.isfinite(v[i:i + block]).all(axis=1) for i in range(0, len(v), block)] or
                         [np.zeros(0, dtype=bool)])
    if bad.any():
        ids = [table.ids[i] for i in np.flatnonzero(bad)[:5]]
        raise BrainmmError(f"embedding table {path} ({where}): {int(bad.sum())} rows contain NaN/inf, e.g. {ids}")


def subject_mean(vectors: np.ndarray, subjects: list[str], normalize: bool) -> tuple[list[str], np.ndarray]:
    """One row per subject (sorted): the mean of its rows; with `normalize`, of L2-normalised rows, renormalised."""
    order = sorted(set(subjects))
    index = {s: i for i, s in enumerate(order)}
    x = np.asarray(vectors, dtype=np.float64)
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    codes = np.array([index[s] for s in subjects], dtype=np.int64)
    rows = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[rows]) != 0])  # one run of rows per subject, in order
    out = np.add.reduceat(x[rows], starts, axis=0) / np.bincount(codes)[:, None]
    if normalize:
        out = out / np.linalg.norm(out, axis=1, keepdims=True)
    return order, out.astype(np.float32)


@dataclass
class Side:
    """Rows of one table with the subject of every row."""

    table: EmbeddingTable
    subjects: list[str]
    path: str

    def __post_init__(self) -> None:
        self.subject_set = set(self.subjects)

    def subject_level(self, keep: list[str], normalize: bool) -> np.ndarray:
        """Subject-level matrix for the subjects `keep` (in that order)."""
        wanted = set(keep)
        rows = [i for i, s in enumerate(self.subjects) if s in wanted]
        order, x = subject_mean(self.table.vectors[rows], [self.subjects[i] for i in rows], normalize)
        index = {s: i for i, s in enumerate(order)}
        return x[[index[s] for s in keep]]

    def rows_of(self, keep: list[str]) -> tuple[np.ndarray, list[str]]:
        """All rows (e.g. recordings) of the subjects `keep`, with their subject labels."""
        wanted = set(keep)
        rows = [i for i, s in enumerate(self.subjects) if s in wanted]
        return self.table.vectors[rows], [self.subjects[i] for i in rows]


@dataclass
class EvalInputs:
    """Everything an evaluation computes on."""

    run: AlignRun
    modalities: list[str]
    split: pd.DataFrame
    split_path: str
    split_of: dict[str, str]
    brain: Side | None  # input brain table (subjects or recordings); None for a brain tower without data.brain
    genetics: dict[str, Side]  # input genetics tables (subjects; dosages for a genotype tower)
    shared: dict[str, dict[str, Side]]  # split -> 'brain' | modality -> shared-space table of that split
    heads: Any  # alignment.DualEncoder (identity towers)
    projectors: dict[str, nn.Module]  # 'brain' | modality -> input table rows to the (unnormalised) shared space
    phenotypes: pd.DataFrame | None  # one row per subject (index subject_id)
    cohort_path: str | None
    group_of: dict[str, str]  # subject -> CV group (family/site or the subject)
    brain_tower: str | None = None  # kind of the brain tower (e.g. 'brainlm') when the brain side had one
    tower_features: Callable[[], Side] | None = None  # a brain tower's input features, computed when first needed
    brain_fc: Side | None = None  # connectivity table for the fc_* baselines (data.brain_fc)
    fc_pca: Side | None = None  # brain_fc reduced to baselines.fc_pca train-fitted components (set when first used)

    def subjects(self, split: str, modality: str, shared: bool = True, brain: Side | None = None) -> list[str]:
        """Sorted subjects of `split` with a brain row and a `modality` row (shared-space or input tables; `brain`
        replaces the input brain table, e.g. the connectivity table)."""
        if shared:
            tables = self.shared.get(split, {})
            if "brain" not in tables or modality not in tables:
                return []
            return sorted(tables["brain"].subject_set & tables[modality].subject_set)
        side = brain or self.input_brain("baselines")
        return sorted({s for s in side.subjects if self.split_of.get(s) == split} & self.genetics[modality].subject_set)

    def pairs(self, split: str, modality: str, shared: bool = True,
              brain: Side | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Subject-level paired rows (subjects, brain, genetics) of one split: shared space (recordings of a subject
        averaged after L2 normalisation) or input tables (plain mean; `brain` replaces the input brain table)."""
        subjects = self.subjects(split, modality, shared, brain)
        if shared:
            b, g = self.shared[split]["brain"], self.shared[split][modality]
        else:
            b, g = brain or self.input_brain("baselines"), self.genetics[modality]
        return subjects, b.subject_level(subjects, shared), g.subject_level(subjects, shared)

    def input_brain(self, what: str) -> Side:
        """The input brain table (a brain tower without data.brain: its features, by the tower's kind, e.g. `brainmm
        embed` of the align run on its fMRI dataset, cached), or an error saying how to provide one."""
        if self.brain is None and self.tower_features is not None:
            self.brain = self.tower_features()
        if self.brain is None:
            raise BrainmmError(
                f"{what} need the brain input embeddings, but align run {self.run.run_id} read fMRI through a "
                f"{self.brain_tower} tower (no data.brain table): set the evaluate config field 'data.brain' to a "
                "table of the tower's features (e.g. from `brainmm embed`), or leave them out "
                "(baselines.methods=[], probes.representations without brain and concat)"
            )
        return self.brain


def read_side(path: str, where: str, mmap: bool = False) -> Side:
    """A finite embedding table and the subject of each row (`where` names it in errors; `mmap`: memory-mapped)."""
    from brainmm.align import table_subjects

    table = finite_table(path, where, mmap)
    return Side(table, table_subjects(table, f"embedding table {path}"), str(path))


def side_of(table: EmbeddingTable, path: str, where: str) -> Side:
    """A table in memory as a Side, refused with NaN/inf rows like `finite_table`."""
    from brainmm.align import table_subjects

    check_finite_rows(table, path, where)
    return Side(table, table_subjects(table, f"embedding table {path}"), path)


def load_inputs(cfg: EvaluateConfig, run: AlignRun) -> EvalInputs:
    """Read and check the inputs of an evaluation (NaN rows, leakage between splits, phenotype columns)."""
    from alignment.retrieval import check_disjoint_splits
    from brainmm.align import load_heads
    from brainmm.data.cohort import check_numeric_cells
    from brainmm.data.splits import load_split

    data = run.config.data
    brain_path = cfg.data.brain or data.brain
    genetics_paths = dict(cfg.data.genetics or data.genetics)
    split_path = cfg.data.split or data.split
    unknown = sorted(set(genetics_paths) - set(data.genetics))
    if unknown:
        raise BrainmmError(f"evaluate config field 'data.genetics': modalities {unknown} were not aligned in run "
                           f"{run.run_id} (it has {sorted(data.genetics)})")
    genetics_paths = {m: genetics_paths.get(m, p) for m, p in data.genetics.items()}
    split = load_split(split_path)  # raises when a subject or group sits in two splits
    split_subjects = split["subject_id"].astype(str).tolist()
    split_labels = split["split"].astype(str).tolist()
    split_of = dict(zip(split_subjects, split_labels))

    brain = read_side(brain_path, "data.brain") if brain_path else None
    brain_fc = read_side(cfg.data.brain_fc, "data.brain_fc", mmap=True) if cfg.data.brain_fc else None  # [N, edges]
    genetics = {m: read_side(p, f"data.genetics.{m}") for m, p in genetics_paths.items()}
    heads = load_heads(run.run_dir)
    modalities = list(genetics)
    if sorted(heads.modalities) != sorted(modalities):
        raise BrainmmError(f"align folder {run.run_dir}: heads.json has modalities {heads.modalities}, its config "
                           f"{modalities}")
    projectors, brain_tower = _projectors(run.run_dir, heads)
    # the pipeline aligns on a composite [BrainLM, connectivity PCA] table (kind brain_inputs) and evaluates the
    # baselines on its BrainLM part: another width by design; a run aligned on a plain table needs that width
    composite = brain_path != data.brain and _table_kind(data.brain) == "brain_inputs"
    tables = {**({"brain": (brain, brain_path)} if brain is not None and brain_tower is None and not composite
                 else {}),
              **{m: (genetics[m], genetics_paths[m]) for m in modalities}}
    for key, (side, path) in tables.items():
        check_width(side, path, projectors[key], "data.brain" if key == "brain" else f"data.genetics.{key}", run)

    shared: dict[str, dict[str, Side]] = {}
    for name in SPLIT_NAMES:
        folder = run.run_dir / "embeddings" / name
        sides = {}
        for key in ["brain", *modalities]:
            stem = folder / key
            if stem.with_name(key + ".json").is_file():
                sides[key] = read_side(str(stem), f"shared-space {key} embeddings of split {name!r}")
                # leakage guard: every subject of this table must belong to this split in the split table
                check_disjoint_splits(sides[key].subjects, [name] * len(sides[key].subjects), split_subjects, split_labels)
        shared[name] = sides
    for name in cfg.retrieval.splits:
        if not any(_pairs_in(shared.get(name, {}), m) for m in modalities):
            raise BrainmmError(f"evaluate config field 'retrieval.splits': split {name!r} has no shared-space brain "
                               f"and genetics embeddings in {run.run_dir / 'embeddings' / name}")

    phenotypes, cohort_path = None, None
    columns = list(dict.fromkeys([*cfg.probes.targets, *([cfg.probes.group_col] if cfg.probes.group_col else []),
                                  *([cfg.figures.color_by] if cfg.figures.color_by else [])]))
    if columns:
        if not cfg.data.cohort:
            raise BrainmmError(f"evaluate config field 'data.cohort': probes/figures need phenotype columns {columns}; "
                               "set it to the fMRI dataset folder or a CSV/TSV/Parquet table with subject_id")
        cohort_path = cfg.data.cohort
        cohort = read_cohort(cohort_path)
        missing = [c for c in columns if c not in cohort.columns]
        if missing:
            available = [c for c in cohort.columns if c != "subject_id"]
            raise BrainmmError(f"cohort table {cohort_path}: no column(s) {missing} (from probes.targets / "
                               f"probes.group_col / figures.color_by); available: {available}")
        if "split" in cohort.columns:  # a cohort written by ingestion carries the split: it must agree
            known = cohort["split"].notna()
            check_disjoint_splits(cohort.loc[known, "subject_id"].astype(str).tolist(),
                             cohort.loc[known, "split"].astype(str).tolist(), split_subjects, split_labels)
        for col in cfg.probes.targets:
            if cfg.probes.tasks.get(col) != "classification":
                check_numeric_cells(cohort[col], cohort["subject_id"], f"probe target {col!r}", cohort_path,
                                    f"set probes.tasks.{col}: classification")
        phenotypes = subject_phenotypes(cohort, columns, cohort_path, text=[cfg.probes.group_col])

    group_of = {s: s for s in split_subjects}
    if cfg.probes.group_col:
        column = phenotypes[cfg.probes.group_col]
        group_of.update({s: str(g) for s, g in column.items() if pd.notna(g)})
    elif "group" in split.columns:
        group_of.update({s: str(g) for s, g in zip(split_subjects, split["group"]) if pd.notna(g)})
    features = _tower_features(run, brain_tower) if brain is None and brain_tower is not None else None
    return EvalInputs(run, modalities, split, str(split_path), split_of, brain, genetics, shared, heads, projectors,
                      phenotypes, cohort_path, group_of, brain_tower, features, brain_fc)


def _tower_features(run: AlignRun, kind: str) -> Callable[[], Side] | None:
    """The input features of the align run's brain tower, by its kind (checked now, computed when first needed;
    BrainLM: `brainmm embed model=<align run>` on its fMRI dataset, tiled windows, mean per recording, cached)."""
    from brainmm.align import tower_kind

    features = tower_kind(kind, "brain").input_features(run.run_dir, run.config)
    if features is None:
        return None

    def side() -> Side:
        table, where = features()
        return side_of(table, where, f"{kind} tower features of align run {run.run_dir}")

    return side


def _projectors(run_dir: Path, heads: Any) -> tuple[dict[str, nn.Module], str | None]:
    """Per side, the module from input-table rows to the shared space before normalisation: the head, or genotype
    tower + head; and the kind of the brain tower, if any (its head then takes the tower's features)."""
    from brainmm.align import load_towers

    towers = json.loads((run_dir / "heads.json").read_text()).get("towers") or {}
    loaded = load_towers(run_dir, only=[m for m in heads.genetics_heads if m in towers])
    modules: dict[str, nn.Module] = {"brain": heads.brain_head}
    for m, head in heads.genetics_heads.items():
        modules[m] = nn.Sequential(loaded[m], head).eval() if m in loaded else head
    return modules, (towers.get("brain") or {}).get("kind")


def _table_kind(path: str | None) -> str | None:
    """meta.kind of an embedding table from its .json alone (None when absent or unreadable)."""
    if not path:
        return None
    stem = Path(path)
    stem = stem.with_suffix("") if stem.suffix in (".json", ".safetensors") else stem
    try:
        return json.loads(stem.with_name(stem.name + ".json").read_text()).get("meta", {}).get("kind")
    except (OSError, ValueError, RecursionError, AttributeError):
        return None


def check_width(side: Side, path: str, projector: nn.Module, field: str, run: AlignRun) -> None:
    """An input table must have the width its head (or genotype tower) was trained on."""
    width = getattr(projector, "in_dim", None)
    if width is None:
        width = next((m.in_features for m in projector.modules() if isinstance(m, nn.Linear)), None)
    dim = side.table.vectors.shape[1]
    if width is not None and dim != width:
        raise BrainmmError(f"evaluate config field {field!r}: table {path} has {dim} columns, but align run "
                           f"{run.run_dir} was trained on {width}; give the table it was trained on (or one built "
                           "the same way)")


def _pairs_in(sides: dict[str, Side], modality: str) -> bool:
    return "brain" in sides and modality in sides


def read_cohort(path: str | Path) -> pd.DataFrame:
    """The cohort table of an fMRI dataset folder, or a CSV/TSV/Parquet table; must have subject_id."""
    from brainmm.data.cohort import read_table, require_columns

    path = Path(path)
    if path.is_dir():
        from brainmm.data.fmri import FmriDataset

        cohort = FmriDataset.load(path).cohort
        cohort.attrs["table_path"] = str(path / "cohort.csv")
    else:
        cohort = read_table(path)
    require_columns(cohort, ["subject_id"])
    cohort["subject_id"] = cohort["subject_id"].astype(str)
    return cohort


def subject_phenotypes(
    cohort: pd.DataFrame, columns: list[str], where: str | Path, text: list[str] | tuple[str, ...] = ()
) -> pd.DataFrame:
    """One row per subject: numeric columns averaged over its rows (recordings); other columns, and those in
    `text` (identifiers such as family or site), must have one value per subject."""
    out = {}
    grouped = cohort.groupby("subject_id", sort=True)
    for col in columns:
        numeric = pd.api.types.is_numeric_dtype(cohort[col]) and not pd.api.types.is_bool_dtype(cohort[col])
        if numeric and col not in text:
            out[col] = grouped[col].mean()
            continue
        values = grouped[col].agg(lambda v: sorted(set(v.dropna().astype(str))))
        clash = values[values.map(len) > 1]
        if len(clash):
            raise BrainmmError(f"cohort table {where}: subject {clash.index[0]!r} has different {col!r} values "
                               f"{clash.iloc[0]} on its rows; expected one value per subject")
        out[col] = values.map(lambda v: v[0] if v else None)
    return pd.DataFrame(out)
