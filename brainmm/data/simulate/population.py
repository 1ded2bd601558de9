"""Population structure: ancestry groups spread unevenly over sites, and a non-genetic group effect on the brain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from brainmm.data.simulate.config import PopulationConfig


@dataclass
class Population:
    """Per-subject ancestry group and site, and the per-group brain effect."""

    groups: np.ndarray  # [N] group index
    site: np.ndarray  # [N] site index after the association with ancestry
    home_site: np.ndarray  # [G] site index each group is drawn to
    moved: np.ndarray  # [N] bool: the family was moved to its group's home site
    effect: np.ndarray  # [G, M] shift of each module's drive per group

    def drive_offset(self, modules: np.ndarray) -> np.ndarray:
        """[N, V] drive shift of every parcel: effect[group(s), module(v)]."""
        return self.effect[self.groups][:, modules]


def structure(
    cfg: PopulationConfig,
    groups: np.ndarray,
    family_ids: list[str],
    site: np.ndarray,
    n_sites: int,
    n_modules: int,
    rng: np.random.Generator,
) -> Population:
    """Move each family to its group's home site (group g -> site g mod n_sites) with probability
    `site_association`, else keep its uniform site; draw effect[g, m] ~ N(0, brain_effect^2)."""
    _, first, inverse = np.unique(np.asarray(family_ids), return_index=True, return_inverse=True)
    home_site = np.arange(cfg.n_groups) % n_sites
    moved = rng.random(len(first)) < cfg.site_association
    family_site = np.where(moved, home_site[groups[first]], site[first])
    effect = cfg.brain_effect * rng.standard_normal((cfg.n_groups, n_modules))
    return Population(groups, family_site[inverse], home_site, moved[inverse], effect)


def population_truth(
    cfg: PopulationConfig,
    pop: Population,
    subject_ids: list[str],
    site_names: list[str],
    group_af: np.ndarray,
    ancestral_af: np.ndarray,
) -> dict[str, Any]:
    """truth.json section: groups and sites per subject, allele frequencies, realised F_ST, site x group counts."""
    names = group_names(cfg.n_groups)
    # Realised F_ST of the drawn group frequencies against the ancestral ones (ratio of averages):
    # sum_j mean_g (p_gj - p_j)^2 / sum_j p_j (1 - p_j); its expectation is F_ST under Balding-Nichols.
    fst_param = float(((group_af - ancestral_af) ** 2).mean(axis=0).sum() / (ancestral_af * (1 - ancestral_af)).sum())
    counts = np.zeros((cfg.n_groups, len(site_names)), dtype=np.int64)
    np.add.at(counts, (pop.groups, pop.site), 1)
    return {
        "model": "p_g ~ Beta(p (1 - F) / F, (1 - p)(1 - F) / F) per SNP (Balding & Nichols 1995); "
                 "site = home site of the group with probability site_association, else uniform; "
                 "module drive += effect[group, module], effect ~ N(0, brain_effect^2)",
        "groups": names,
        "subject_group": dict(zip(subject_ids, [names[g] for g in pop.groups])),
        "subject_site": dict(zip(subject_ids, [site_names[s] for s in pop.site])),
        "subject_moved_to_home_site": dict(zip(subject_ids, pop.moved.tolist())),
        "home_site": dict(zip(names, [site_names[s] for s in pop.home_site])),
        "group_site_counts": {n: dict(zip(site_names, row.tolist())) for n, row in zip(names, counts)},
        "ancestral_af": ancestral_af.tolist(),
        "group_af": group_af.tolist(),
        "realised_fst": fst_param,
        "brain_effect": {n: row.tolist() for n, row in zip(names, pop.effect)},
    }


def group_names(n_groups: int) -> list[str]:
    """pop1, pop2, ..."""
    return [f"pop{g + 1}" for g in range(n_groups)]
