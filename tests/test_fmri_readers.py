"""`brainmm.data.fmri.readers`: time-series readers (CSV/TSV/DAT/NPY/MAT), the orientation rule, coordinates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from stage_inputs import check_error, edited_cohort, ingest_argv, run

from brainmm.data.fmri.readers import load_array, orient, read_coords, read_timeseries
from brainmm.errors import BrainmmError

V, T = 5, 12


@pytest.fixture
def tv() -> np.ndarray:
    """A [T, V] series with distinct values."""
    return np.arange(T * V, dtype=np.float64).reshape(T, V) / 7.0


def _write(path: Path, array: np.ndarray, header: bool = False) -> Path:
    sep = {".csv": ",", ".tsv": "\t", ".dat": "\t", ".txt": " "}[path.suffix]
    lines = [sep.join(f"p{j}" for j in range(array.shape[1]))] if header else []
    lines += [sep.join(repr(float(x)) for x in row) for row in array]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".dat", ".txt"])
@pytest.mark.parametrize("header", [False, True])
@pytest.mark.parametrize("transpose", [False, True])
def test_text_formats_with_and_without_header_both_orientations(
    tmp_path: Path, tv: np.ndarray, suffix: str, header: bool, transpose: bool
) -> None:
    path = _write(tmp_path / f"rec{suffix}", tv.T if transpose else tv, header)
    out = read_timeseries(path, V)
    assert out.dtype == np.float32 and out.shape == (V, T)
    np.testing.assert_allclose(out, tv.T.astype(np.float32))


def test_npy_and_mat(tmp_path: Path, tv: np.ndarray) -> None:
    np.save(tmp_path / "a.npy", tv.T)
    np.testing.assert_allclose(read_timeseries(tmp_path / "a.npy", V), tv.T)
    scipy.io.savemat(tmp_path / "one.mat", {"tc": tv.T, "tr": np.array([[0.72]]), "names": np.array(["x"])})
    np.testing.assert_allclose(read_timeseries(tmp_path / "one.mat", V), tv.T)  # the one 2-D numeric array
    scipy.io.savemat(tmp_path / "two.mat", {"tc": tv, "other": np.ones((3, 4))})
    with pytest.raises(BrainmmError, match=r"two.mat: expected exactly one 2-D numeric array.*tc \[12, 5\], other \[3, 4\].*--mat-key"):
        read_timeseries(tmp_path / "two.mat", V)
    np.testing.assert_allclose(read_timeseries(tmp_path / "two.mat", V, key="tc"), tv.T)
    with pytest.raises(BrainmmError, match="no numeric array under key 'ts'"):
        read_timeseries(tmp_path / "two.mat", V, key="ts")


def test_orientation_rule_never_guesses() -> None:
    a = np.zeros((V, V))
    with pytest.raises(BrainmmError, match=r"rec.npy: shape \[5, 5\] is ambiguous.*--orientation"):
        orient(a, V, "rec.npy")
    assert orient(np.zeros((T, V)), V, "x").shape == (V, T)
    assert orient(np.zeros((V, T)), V, "x").shape == (V, T)
    with pytest.raises(BrainmmError, match=r"rec.csv: shape \[12, 6\] matches neither \[T, 5\] .* nor \[5, T\]"):
        orient(np.zeros((T, 6)), V, "rec.csv")
    square = np.arange(V * V, dtype=float).reshape(V, V)
    np.testing.assert_array_equal(orient(square, V, "x", "time-parcel"), square.T)
    np.testing.assert_array_equal(orient(square, V, "x", "parcel-time"), square)
    with pytest.raises(BrainmmError, match=r"does not match \[5, T\]"):
        orient(np.zeros((T, V)), V, "x", "parcel-time")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(BrainmmError, match="not found"):
        load_array(tmp_path / "none.csv")
    (tmp_path / "x.h5").write_text("")
    with pytest.raises(BrainmmError, match="unknown format '.h5'"):
        load_array(tmp_path / "x.h5")
    (tmp_path / "words.csv").write_text("a,b\n1,2\nx,4\n")
    with pytest.raises(BrainmmError, match="words.csv: expected a numeric table"):
        load_array(tmp_path / "words.csv")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(BrainmmError, match=r"cube.npy: expected a 2-D array .* got shape \[2, 3, 4\]"):
        load_array(tmp_path / "cube.npy")
    (tmp_path / "bad.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(BrainmmError, match="bad.mat"):
        load_array(tmp_path / "bad.mat")


@pytest.mark.parametrize(
    "text, labels",
    [
        ("x\ty\tz\n1\t2\t3\n4\t5\t6.5\n", None),
        ("Label\tX\tY\tZ\nA\t1\t2\t3\nB\t4\t5\t6.5\n", ["A", "B"]),
        ("1 2 3\n4 5 6.5\n", None),
        ("A 1 2 3\nB 4 5 6.5\n", ["A", "B"]),
    ],
)
def test_read_coords(tmp_path: Path, text: str, labels: list[str] | None) -> None:
    path = tmp_path / "coords.tsv"
    path.write_text(text.replace(" ", "\t"))
    coords, got = read_coords(path)
    np.testing.assert_array_equal(coords, [[1, 2, 3], [4, 5, 6.5]])
    assert got == labels


def test_read_coords_errors(tmp_path: Path) -> None:
    (tmp_path / "five.csv").write_text("1,2,3,4,5\n")
    with pytest.raises(BrainmmError, match="5 columns without a header"):
        read_coords(tmp_path / "five.csv")
    (tmp_path / "nan.csv").write_text("x,y,z\n1,2,3\n1,,3\n")
    with pytest.raises(BrainmmError, match="row 2 has a missing or non-finite coordinate"):
        read_coords(tmp_path / "nan.csv")


def test_zero_byte_npy(src: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty.npy").write_bytes(b"")
    cohort = edited_cohort(src, tmp_path, str(tmp_path / "empty.npy"))
    code, err = run(ingest_argv(src, tmp_path / "out", cohort), capsys)
    check_error(code, err, r"empty\.npy: not a numeric \.npy array \(the file is empty \(0 bytes\)\)")
    assert not (tmp_path / "out").exists()


def test_headerless_csv_with_a_bom_keeps_its_first_time_point(tmp_path: Path) -> None:
    from brainmm.data.fmri.readers import load_array

    x = np.arange(12, dtype=np.float64).reshape(4, 3) + 0.5
    text = "\n".join(",".join(str(v) for v in row) for row in x) + "\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "plain.csv").write_text(text)
    np.testing.assert_array_equal(load_array(tmp_path / "bom.csv"), x)
    np.testing.assert_array_equal(load_array(tmp_path / "plain.csv"), x)
