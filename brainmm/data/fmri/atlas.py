"""Labels atlases (NIfTI): parcel labels, centroids in MNI mm, and parcel means of 4-D images via nilearn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainmm.errors import BrainmmError


def load_atlas(path: str | Path):
    """A 3-D integer labels image (nibabel); 0 is background."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise BrainmmError(f"atlas {path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for unreadable files
        raise BrainmmError(f"atlas {path}: not a readable NIfTI image ({err})") from err
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise BrainmmError(f"atlas {path}: expected a 3-D labels image, got shape {list(shape)}")
    data = np.asarray(img.dataobj)
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        raise BrainmmError(f"atlas {path}: expected integer labels, found fractional values (a probabilistic atlas?)")
    return img


def atlas_labels(path: str | Path, table: str | Path | None = None) -> tuple[list[int], list[str]]:
    """Parcel label values and names: sorted non-zero labels of the atlas, or the rows of a labels table.

    A labels table (CSV/TSV with columns `index` = label value and `name`) selects and orders the parcels.
    """
    from brainmm.data.cohort import read_table, require_columns, require_values, row_name, table_path

    data = np.asarray(load_atlas(path).dataobj)
    present = sorted(int(v) for v in np.unique(data) if v != 0)
    if not present:
        raise BrainmmError(f"atlas {path}: contains no labels (all voxels are 0)")
    if table is None:
        return present, [str(v) for v in present]
    df = read_table(table, text_columns=("name",))
    require_columns(df, ["index", "name"])
    require_values(df, ["index", "name"])
    try:
        values = [int(v) for v in df["index"]]
    except (TypeError, ValueError) as err:
        raise BrainmmError(f"labels table {table_path(df)}: column 'index' must hold integer label values") from err
    known = set(present)
    for i, v in enumerate(values):
        if v not in known:
            raise BrainmmError(f"labels table {table_path(df)}: {row_name(i)}, label {v} does not occur in atlas {path}")
    if len(set(values)) != len(values):
        raise BrainmmError(f"labels table {table_path(df)}: label values in column 'index' repeat")
    return values, df["name"].astype("str").tolist()


def atlas_centroids(path: str | Path, labels: list[int]) -> np.ndarray:
    """Centroid of each label's voxels in world (MNI mm) coordinates: voxel mean -> affine; [V, 3] float64."""
    img = load_atlas(path)
    data = np.asarray(img.dataobj).astype(np.int64)
    flat = data.ravel()
    values = np.asarray(labels, dtype=np.int64)
    order = np.argsort(values)
    pos = np.clip(np.searchsorted(values[order], flat), 0, len(values) - 1)
    keep = values[order][pos] == flat
    index = np.where(keep, order[pos], -1)
    ijk = np.stack(np.unravel_index(np.nonzero(keep)[0], data.shape), axis=1).astype(np.float64)
    counts = np.bincount(index[keep], minlength=len(labels)).astype(np.float64)
    if (counts == 0).any():
        raise BrainmmError(f"atlas {path}: label {labels[int(np.argmin(counts))]} has no voxels")
    sums = np.stack([np.bincount(index[keep], weights=ijk[:, a], minlength=len(labels)) for a in range(3)], axis=1)
    voxel = sums / counts[:, None]
    return voxel @ img.affine[:3, :3].T + img.affine[:3, 3]


def image_tr(path: str | Path) -> float | None:
    """The repetition time in seconds from a 4-D NIfTI header (None when unset)."""
    import nibabel as nib

    hdr = nib.load(str(path)).header
    zooms = hdr.get_zooms()
    if len(zooms) < 4 or not zooms[3] or zooms[3] <= 0:
        return None
    unit = hdr.get_xyzt_units()[1] if hasattr(hdr, "get_xyzt_units") else "sec"
    return float(zooms[3]) / {"msec": 1e3, "usec": 1e6}.get(unit, 1.0)


def parcellate(image: str | Path, atlas: str | Path, labels: list[int], resample: bool = False) -> np.ndarray:
    """Mean signal of each parcel per volume of a 4-D NIfTI ([V, T] float32) with nilearn's NiftiLabelsMasker.

    Image and atlas must share shape and affine, unless `resample` (atlas resampled to the image grid,
    nearest neighbour).
    """
    import nibabel as nib
    from nilearn.maskers import NiftiLabelsMasker

    try:
        img = nib.load(str(image))
    except Exception as err:
        raise BrainmmError(f"image {image}: not a readable NIfTI image ({err})") from err
    if len(img.shape) != 4:
        raise BrainmmError(f"image {image}: expected a 4-D image (x, y, z, time), got shape {list(img.shape)}")
    atlas_img = load_atlas(atlas)
    same_shape = img.shape[:3] == atlas_img.shape
    same_affine = np.allclose(img.affine, atlas_img.affine, atol=1e-4)
    if not (same_shape and same_affine) and not resample:
        if same_shape:
            diff = float(np.abs(img.affine - atlas_img.affine).max())
            what = (f"the affines differ by up to {diff:.4g} (image origin "
                    f"{np.round(img.affine[:3, 3], 3).tolist()} mm, atlas origin "
                    f"{np.round(atlas_img.affine[:3, 3], 3).tolist()} mm)")
        else:
            what = "the shapes differ"
        raise BrainmmError(
            f"image {image} (shape {list(img.shape[:3])}) and atlas {atlas} (shape {list(atlas_img.shape)}) "
            f"differ in shape or affine: {what}; resample them to one grid first or pass --resample-atlas"
        )
    masker = NiftiLabelsMasker(
        atlas_img, standardize=None, resampling_target="data" if resample else None, reports=False
    )
    series = masker.fit_transform(img)  # [T, regions]
    region_ids = {int(v): col for col, v in masker.region_ids_.items() if col != "background"}
    missing = [v for v in labels if v not in region_ids]
    if missing:
        raise BrainmmError(
            f"image {image}: atlas labels {missing[:10]} have no voxels on the image grid "
            "(lost when resampling the atlas?)"
        )
    return np.ascontiguousarray(series[:, [region_ids[v] for v in labels]].T, dtype=np.float32)
