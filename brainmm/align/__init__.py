"""The `brainmm align` stage: brain and genetics inputs aligned in one shared space; its public API.

    from brainmm.align import AlignConfig, run_align, load_model
    result = run_align(load_config(AlignConfig, "configs/align_clip.yaml"))
    model = load_model(result.run_dir)                      # heads + towers, eval mode

Modules: config (typed config), data (tables, split, pairs), project (eval-mode projection, validation retrieval),
confounds (input residualisation), tower_models (tower modules and configs), towers (tower-kind registry), loop (build + training loop), io (run folders: heads, towers, models), report (artifacts, model card).
"""

from brainmm.align.config import AlignConfig, AlignDataConfig, AlignTrainConfig
from brainmm.align.confounds import ConfoundsConfig, covariate_table, residualise_rows, to_dosage_range
from brainmm.align.data import AlignData, BrainRows, SplitData, load_align_data, table_subjects
from brainmm.align.io import (
    load_heads,
    load_model,
    load_towers,
    project_fmri,
    project_table,
    run_precision,
    save_heads,
)
from brainmm.align.loop import CHECKPOINTS, run_align
from brainmm.align.project import evaluate_split, project
from brainmm.align.report import AlignResult
from brainmm.align.tower_models import GeneticsTowerConfig
from brainmm.align.towers import TowerKind, kind_of, list_towers, register_tower, tower_kind

__all__ = [
    "CHECKPOINTS",
    "AlignConfig",
    "AlignData",
    "AlignDataConfig",
    "AlignResult",
    "AlignTrainConfig",
    "BrainRows",
    "ConfoundsConfig",
    "GeneticsTowerConfig",
    "SplitData",
    "TowerKind",
    "covariate_table",
    "evaluate_split",
    "kind_of",
    "list_towers",
    "load_align_data",
    "load_heads",
    "load_model",
    "load_towers",
    "project",
    "project_fmri",
    "project_table",
    "register_tower",
    "residualise_rows",
    "run_align",
    "save_heads",
    "table_subjects",
    "to_dosage_range",
    "run_precision",
    "tower_kind",
]
