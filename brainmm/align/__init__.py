"""The `brainmm align` stage: brain and genetics inputs aligned in one shared space; its public API.

    from brainmm.align import AlignConfig, run_align, load_model
    result = run_align(load_config(AlignConfig, "configs/align_clip.yaml"))
    model = load_model(result.run_dir)                      # heads + towers, eval mode

Modules: config (typed config), data (tables, split, pairs), project (eval-mode projection, validation retrieval),
confounds_config (the confounds section), confounds (input residualisation), tower_models (tower modules and configs), towers (tower-kind registry), loop (build + training loop), io (run folders: heads, towers, models), report (artifacts, model card).
"""

from brainmm.lazy import lazy_exports

# public name -> defining module, imported on first use (a config is read and checked without torch)
_EXPORTS = {
    "AlignConfig": "brainmm.align.config",
    "AlignDataConfig": "brainmm.align.config",
    "AlignTrainConfig": "brainmm.align.config",
    "ConfoundsConfig": "brainmm.align.confounds_config",
    "covariate_table": "brainmm.align.confounds",
    "residualise_rows": "brainmm.align.confounds",
    "to_dosage_range": "brainmm.align.confounds",
    "with_strata": "brainmm.align.confounds",
    "ANCESTRY": "brainmm.align.confounds_config",
    "CELL": "brainmm.align.confounds_config",
    "AlignData": "brainmm.align.data",
    "BrainRows": "brainmm.align.data",
    "SplitData": "brainmm.align.data",
    "load_align_data": "brainmm.align.data",
    "table_subjects": "brainmm.align.data",
    "load_heads": "brainmm.align.io",
    "load_model": "brainmm.align.io",
    "load_towers": "brainmm.align.io",
    "project_fmri": "brainmm.align.io",
    "project_table": "brainmm.align.io",
    "run_precision": "brainmm.align.io",
    "save_heads": "brainmm.align.io",
    "CHECKPOINTS": "brainmm.align.loop",
    "run_align": "brainmm.align.loop",
    "evaluate_split": "brainmm.align.project",
    "project": "brainmm.align.project",
    "AlignResult": "brainmm.align.report",
    "GeneticsTowerConfig": "brainmm.align.tower_config",
    "TowerKind": "brainmm.align.towers",
    "kind_of": "brainmm.align.towers",
    "list_towers": "brainmm.align.towers",
    "register_tower": "brainmm.align.towers",
    "tower_kind": "brainmm.align.towers",
}

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
    "with_strata",
    "ANCESTRY",
    "CELL",
    "run_precision",
    "tower_kind",
]
__getattr__ = lazy_exports(__name__, _EXPORTS)
