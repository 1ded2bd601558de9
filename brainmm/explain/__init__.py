"""Feature attributions of an align run (`brainmm explain`, docs/explain.md): which variants, parcels, edges and
networks carry the brain-genetics link, scored on held-out subjects with bootstrap CIs and FDR-controlled
permutation tests, for the trained model and the CCA baselines."""

from brainmm.explain.config import ExplainSection

__all__ = ["ExplainSection"]
