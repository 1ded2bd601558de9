"""brainmm: align brain activity (BrainLM) and genetics in one shared embedding space."""

__version__ = "0.1.0"
