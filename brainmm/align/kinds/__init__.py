"""The shipped tower kinds, one module each; importing a module registers its kind (`register_tower`)."""

from brainmm.align.kinds import brainlm, genotype_mlp, table  # noqa: F401 (registration)
