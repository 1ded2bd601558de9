"""Shared-space alignment: projector heads, contrastive losses, retrieval, probes and baselines."""

from __future__ import annotations

import importlib
from typing import Any

# Public names -> defining module. Imported on first access, so `import alignment.errors` (done by brainmm.errors
# for every CLI call) does not pull in torch.
_EXPORTS = {
    "AlignmentInputError": "alignment.errors",
    "DistInfo": "alignment.distributed",
    "all_reduce_mean": "alignment.distributed",
    "epoch_batches": "alignment.distributed",
    "gather_features": "alignment.distributed",
    "init_distributed": "alignment.distributed",
    "HeadConfig": "alignment.configs",
    "ProjectionHead": "alignment.heads",
    "AlignmentLoss": "alignment.losses",
    "ClipLoss": "alignment.losses",
    "LossConfig": "alignment.configs",
    "LossOutput": "alignment.losses",
    "SigLipLoss": "alignment.losses",
    "create_loss": "alignment.losses",
    "AlignmentOutput": "alignment.model",
    "DualEncoder": "alignment.model",
    "find_blocks": "alignment.model",
    "set_tower_trainable": "alignment.model",
    "WarmupCosine": "alignment.optim",
    "no_weight_decay": "alignment.optim",
    "param_groups": "alignment.optim",
    "warmup_cosine": "alignment.optim",
    "retrieval_report": "alignment.retrieval",
    "RetrievalReport": "alignment.retrieval",
    "pair_ranks": "alignment.retrieval",
    "positive_ranks": "alignment.retrieval",
    "kway_top1": "alignment.retrieval",
    "rank_metrics": "alignment.retrieval",
    "chance_metrics": "alignment.retrieval",
    "bootstrap_rank_metrics": "alignment.retrieval",
    "check_disjoint_splits": "alignment.retrieval",
    "probe_representations": "alignment.probes",
    "linear_probe": "alignment.probes",
    "ProbeReport": "alignment.probes",
    "run_baselines": "alignment.baselines",
    "BaselineReport": "alignment.baselines",
    "space_records": "alignment.baselines",
    "CCABaseline": "alignment.baselines",
    "RidgeMap": "alignment.baselines",
    "random_head_embeddings": "alignment.baselines",
    "shuffled_pairs": "alignment.baselines",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alignment' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
