"""`brainmm.data.fmri.atlas`: labels, centroids and the labels table of an atlas; parcellation equals voxel means and
checks the grids."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainmm.data.fmri.atlas import atlas_centroids, atlas_labels, image_tr, parcellate
from brainmm.errors import BrainmmError


def _atlas(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    aff = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, -20], [0, 0, 2.0, -30], [0, 0, 0, 1]])
    lab = np.zeros((6, 6, 4), np.int16)
    lab[:3, :3, :] = 7
    lab[3:, :3, :2] = 2
    lab[:, 3:, 2:] = 11
    path = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(lab, aff), path)
    return path, lab, aff


def test_atlas_labels_centroids_and_labels_table(tmp_path: Path) -> None:
    path, lab, aff = _atlas(tmp_path)
    values, names = atlas_labels(path)
    assert values == [2, 7, 11] and names == ["2", "7", "11"]
    cent = atlas_centroids(path, [7, 2])
    ijk = np.argwhere(lab == 7).mean(0)
    np.testing.assert_allclose(cent[0], aff[:3, :3] @ ijk + aff[:3, 3])
    np.testing.assert_allclose(cent[0], [-8.0, -18.0, -27.0])
    (tmp_path / "labels.csv").write_text("index,name\n11,C\n2,A\n")
    assert atlas_labels(path, tmp_path / "labels.csv") == ([11, 2], ["C", "A"])
    (tmp_path / "bad.csv").write_text("index,name\n11,C\n5,X\n")
    with pytest.raises(BrainmmError, match="row 2, label 5 does not occur in atlas"):
        atlas_labels(path, tmp_path / "bad.csv")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2)), np.eye(4)), tmp_path / "empty.nii.gz")
    with pytest.raises(BrainmmError, match="contains no labels"):
        atlas_labels(tmp_path / "empty.nii.gz")


def test_parcellate_matches_voxel_means_and_checks_grids(tmp_path: Path) -> None:
    path, lab, aff = _atlas(tmp_path)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((*lab.shape, 9)).astype(np.float32)
    img = nib.Nifti1Image(data, aff)
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((2.0, 2.0, 2.0, 1500.0))
    img_path = tmp_path / "bold.nii.gz"
    nib.save(img, img_path)
    out = parcellate(img_path, path, [11, 2, 7])
    assert out.shape == (3, 9) and out.dtype == np.float32
    for row, value in enumerate([11, 2, 7]):
        np.testing.assert_allclose(out[row], data[lab == value].mean(0), rtol=1e-5, atol=1e-6)
    assert image_tr(img_path) == pytest.approx(1.5)
    shifted = aff.copy()
    shifted[:3, 3] += 2.0
    nib.save(nib.Nifti1Image(data, shifted), tmp_path / "shifted.nii.gz")
    with pytest.raises(BrainmmError, match=r"shifted.nii.gz .* and atlas .* differ in shape or affine.*--resample-atlas"):
        parcellate(tmp_path / "shifted.nii.gz", path, [2, 7, 11])
    nib.save(nib.Nifti1Image(data[:5], aff), tmp_path / "small.nii.gz")
    with pytest.raises(BrainmmError, match=r"shape \[5, 6, 4\].*shape \[6, 6, 4\]"):
        parcellate(tmp_path / "small.nii.gz", path, [2, 7, 11])
    out2 = parcellate(tmp_path / "shifted.nii.gz", path, [2, 7, 11], resample=True)  # explicit resampling works
    assert out2.shape == (3, 9) and np.isfinite(out2).all()
