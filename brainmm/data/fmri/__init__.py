"""fMRI data layer: read parcel time series or 4-D NIfTI + atlas, normalise, store, and serve windows.

    from brainmm.data.fmri import FmriDataset, IngestConfig, ingest
    ingest("cohort.csv", "data/fmri", IngestConfig(coords="coords.tsv"))
    ds = FmriDataset.load("data/fmri")
    train = ds.windows("train", mode="random", seed=0)   # torch Dataset of dicts
"""

from brainmm.data.fmri.dataset import FmriDataset, check_compatible
from brainmm.data.fmri.ingest import IngestConfig, ingest
from brainmm.data.fmri.normalise import NormStats
from brainmm.data.fmri.readers import load_array, orient, read_coords, read_timeseries


def __getattr__(name: str):
    """Import the torch-based window classes only when asked for (keeps `import brainmm.data.fmri` light)."""
    if name in ("FmriWindows", "tile_starts"):
        from brainmm.data.fmri import windows

        return getattr(windows, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FmriDataset",
    "FmriWindows",
    "IngestConfig",
    "NormStats",
    "check_compatible",
    "ingest",
    "load_array",
    "orient",
    "read_coords",
    "read_timeseries",
    "tile_starts",
]
