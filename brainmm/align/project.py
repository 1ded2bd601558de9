"""Eval-mode batched projection into the shared space, and validation retrieval of one split."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignment import (
    DualEncoder,
)
from brainmm.align.data import SplitData
from brainmm.train.common import batched_outputs, eval_mode

# ------------------------------------------------------------------------------------------ projection


def project(model: DualEncoder, modality: str, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Shared-space (L2-normalised) embeddings of inputs `x` for 'brain' or a genetics modality, in eval mode."""
    with eval_mode(model):
        encode = model.encode_brain if modality == "brain" else (lambda t: model.encode_genetics(modality, t))
        out = batched_outputs(encode, x, model.logit_scale.device, batch_size)
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


def project_brain_features(model: DualEncoder, h: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Shared-space embeddings of brain tower outputs `h` [N, D] (the head only), in eval mode."""
    with eval_mode(model):
        out = batched_outputs(lambda b: F.normalize(model.brain_head(b), dim=-1), h, model.logit_scale.device,
                              batch_size)
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


def tower_outputs(tower: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Outputs of a (table: identity) tower for inputs `x`, in eval mode, on CPU."""
    if isinstance(tower, nn.Identity):
        return x
    with eval_mode(tower):
        return torch.cat(batched_outputs(tower, x, next(tower.parameters()).device, batch_size))


def brain_shared(model: DualEncoder, data: SplitData) -> torch.Tensor:
    """Shared-space brain embeddings of a split's rows (a brain tower: its kind's provider, e.g. BrainLM windows)."""
    if data.windows is None:
        return project(model, "brain", data.brain)
    return project_brain_features(model, data.windows.features(model.brain_tower))


def _subject_mean(z: torch.Tensor, subjects: list[str]) -> tuple[list[str], torch.Tensor]:
    """Average the normalised rows of each subject (several recordings) and renormalise."""
    order = sorted(set(subjects))
    index = {s: i for i, s in enumerate(order)}
    rows = torch.tensor([index[s] for s in subjects])
    summed = torch.zeros(len(order), z.shape[1]).index_add_(0, rows, z)
    return order, torch.nn.functional.normalize(summed, dim=-1)


def evaluate_split(model: DualEncoder, data: SplitData, ci: bool = False) -> dict[str, float]:
    """Retrieval brain <-> each genetics modality over the subjects of one split (recordings averaged).

    Uses `alignment.retrieval` (open_clip definitions, pessimistic ties) with exact chance levels for N subjects;
    `ci` adds 95% bootstrap intervals over subjects (`<metric>_ci_low`, `<metric>_ci_high`).
    """
    from alignment.intervals import both_sides_intervals
    from alignment.retrieval import KS, as_embeddings, chance_metrics, pair_ranks, rank_metrics
    from alignment.stats import stat_name

    subjects, brain = _subject_mean(brain_shared(model, data), data.subjects)
    row_of = {s: i for i, s in enumerate(data.subjects)}  # last row of each subject (genetics rows are equal)
    metrics: dict[str, float] = {}
    scores = []
    for m in model.modalities:
        keep = [i for i, s in enumerate(subjects) if bool(data.masks[m][row_of[s]])]
        if len(keep) < 2:
            continue
        genetics = project(model, m, data.genetics[m][[row_of[subjects[i]] for i in keep]])
        chance = chance_metrics(len(keep))
        b, g = as_embeddings(brain[keep], "brain"), as_embeddings(genetics, m)
        codes = np.arange(len(keep))
        for direction, ranks, (q, d) in zip((f"brain_to_{m}", f"{m}_to_brain"), pair_ranks(b, g, normalize=False),
                                            ((b, g), (g, b))):
            for key, value in rank_metrics(ranks).items():
                metrics[f"{direction}/{key}"] = value
                metrics[stat_name(f"{direction}/{key}", "chance")] = chance[key]
            if ci:  # both-sides subject bootstrap (docs/evaluation.md), as evaluate
                for key, (low, high) in both_sides_intervals(q, d, codes, codes, ks=KS, n_boot=1000).items():
                    metrics[stat_name(f"{direction}/{key}", "ci_low")] = low
                    metrics[stat_name(f"{direction}/{key}", "ci_high")] = high
        scores.append(0.5 * (metrics[f"brain_to_{m}/R_at_1"] + metrics[f"{m}_to_brain/R_at_1"]))
    metrics["score"] = float(np.mean(scores)) if scores else float("nan")
    return metrics

