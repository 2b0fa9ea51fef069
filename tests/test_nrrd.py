"""NRRD input: geometry (LPS -> RAS), data, and refusal of what is not a scalar 3-D volume."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

nrrd = pytest.importorskip("nrrd")

from arssr_rt.errors import InputError  # noqa: E402
from arssr_rt.io_nrrd import read_nrrd  # noqa: E402

from conftest import FIXTURE_PATH as FIXTURE  # noqa: E402
CLINICAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "pyradiomics_brain1_image.nrrd"
LPS = np.diag([-1.0, -1.0, 1.0])


def _fixture() -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(FIXTURE)
    return np.asarray(img.dataobj), img.affine


def _oblique(affine: np.ndarray) -> np.ndarray:
    angle = np.deg2rad(17.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    out = affine.copy()
    out[:3, :3] = rot @ affine[:3, :3] @ np.diag([0.9, 1.1, 2.5])
    return out


def _write_lps(path: Path, data: np.ndarray, ras_affine: np.ndarray, **extra) -> None:
    header = {
        "space": "left-posterior-superior",
        "space directions": (LPS @ ras_affine[:3, :3]).T,
        "space origin": LPS @ ras_affine[:3, 3],
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    header.update(extra)
    nrrd.write(str(path), data, header, index_order="F")


def test_lps_nrrd_reads_as_the_same_ras_volume(tmp_path):
    data, affine = _fixture()
    affine = _oblique(affine)
    _write_lps(tmp_path / "t1.nrrd", data, affine)
    vol = read_nrrd(tmp_path / "t1.nrrd")
    np.testing.assert_allclose(vol.affine, affine, atol=1e-9)
    np.testing.assert_array_equal(vol.data, data.astype(np.float32))
    assert vol.source_dtype == np.uint8
    assert vol.data.dtype == np.float32


def test_world_coordinates_of_a_voxel_match_the_nrrd_header(tmp_path):
    data, affine = _fixture()
    _write_lps(tmp_path / "t1.nrrd", data, _oblique(affine))
    header = nrrd.read_header(str(tmp_path / "t1.nrrd"))
    vol = read_nrrd(tmp_path / "t1.nrrd")
    ijk = np.array([5.0, 40.0, 17.0])
    lps_point = header["space origin"] + header["space directions"].T @ ijk
    ras_point = vol.affine[:3, :3] @ ijk + vol.affine[:3, 3]
    np.testing.assert_allclose(ras_point, LPS @ lps_point, atol=1e-9)


def test_ras_space_is_not_flipped(tmp_path):
    data, affine = _fixture()
    header = {"space": "right-anterior-superior", "space directions": affine[:3, :3].T, "space origin": affine[:3, 3]}
    nrrd.write(str(tmp_path / "t1.nrrd"), data, header, index_order="F")
    np.testing.assert_allclose(read_nrrd(tmp_path / "t1.nrrd").affine, affine, atol=1e-9)


@pytest.mark.skipif(not CLINICAL.is_file(), reason="shared clinical NRRD not present")
def test_clinical_thick_slice_nrrd():
    vol = read_nrrd(CLINICAL)
    assert vol.shape == (256, 256, 25)
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, :3], axis=0), [0.78125, 0.78125, 6.5])
    assert nib.aff2axcodes(vol.affine) == ("L", "A", "S")
    assert vol.source_dtype == np.int16
    assert vol.data.max() == 3057


def test_vector_nrrd_is_refused(tmp_path):
    data = np.random.default_rng(0).random((3, 8, 8, 8)).astype(np.float32)
    header = {"kinds": ["vector", "domain", "domain", "domain"], "space": "left-posterior-superior",
              "space directions": [[np.nan] * 3, [1, 0, 0], [0, 1, 0], [0, 0, 1]]}
    nrrd.write(str(tmp_path / "rgb.nrrd"), data, header, index_order="F")
    with pytest.raises(InputError, match="kind 'vector'"):
        read_nrrd(tmp_path / "rgb.nrrd")


def test_two_d_nrrd_is_refused(tmp_path):
    nrrd.write(str(tmp_path / "slice.nrrd"), np.ones((8, 8), np.float32), index_order="F")
    with pytest.raises(InputError, match="2-D"):
        read_nrrd(tmp_path / "slice.nrrd")


def test_four_d_time_series_is_refused(tmp_path):
    nrrd.write(str(tmp_path / "ts.nrrd"), np.random.default_rng(0).random((6, 6, 6, 4)), index_order="F")
    with pytest.raises(InputError, match="4-D"):
        read_nrrd(tmp_path / "ts.nrrd")


def test_truncated_nrrd_is_refused(tmp_path):
    data, affine = _fixture()
    _write_lps(tmp_path / "t1.nrrd", data, affine)
    raw = (tmp_path / "t1.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        read_nrrd(tmp_path / "cut.nrrd")


def test_a_nifti_named_nrrd_is_refused(tmp_path):
    (tmp_path / "t1.nrrd").write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    with pytest.raises(InputError, match="not a valid NRRD"):
        read_nrrd(tmp_path / "t1.nrrd")


def test_nan_voxels_are_refused(tmp_path):
    data, affine = _fixture()
    bad = data.astype(np.float32)
    bad[3, 4, 5] = np.nan
    _write_lps(tmp_path / "nan.nrrd", bad, affine)
    with pytest.raises(InputError, match="NaN"):
        read_nrrd(tmp_path / "nan.nrrd")


def test_absurd_size_is_refused_before_reading(tmp_path):
    data, affine = _fixture()
    _write_lps(tmp_path / "t1.nrrd", data, affine)
    with pytest.raises(InputError, match="over the input limit"):
        read_nrrd(tmp_path / "t1.nrrd", max_voxels=1000)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot be read"):
        read_nrrd(tmp_path / "absent.nrrd")
