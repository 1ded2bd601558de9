"""Shared-space alignment: projector heads, contrastive losses, retrieval, probes and baselines."""
