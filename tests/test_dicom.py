"""DICOM series: round trip through a series synthesized from the fixture, derived-series
attributes on a new grid, and refusal of folders that are not one regular series."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from arssr_rt.errors import InputError, OutputError  # noqa: E402
from arssr_rt.geometry import plan_output_grid  # noqa: E402
from arssr_rt.io_dicom import read_dicom_series, write_dicom_series  # noqa: E402
from arssr_rt.volume import Volume  # noqa: E402

from conftest import FIXTURE_PATH as FIXTURE  # noqa: E402


def _oblique(affine: np.ndarray, degrees: float = 12.0) -> np.ndarray:
    a = np.deg2rad(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    out = affine.copy()
    out[:3, :3] = rot @ affine[:3, :3] @ np.diag([0.8, 0.9, 1.7])
    return out


def _fixture_volume(affine_fn=lambda a: a) -> Volume:
    img = nib.load(FIXTURE)
    data = np.asarray(img.dataobj)
    return Volume(data=data.astype(np.float32), affine=affine_fn(img.affine), source_dtype=data.dtype, source_path=FIXTURE)


def _same_grid(volume: Volume):
    return plan_output_grid(volume.shape, volume.affine, shape=volume.shape)


def _patient_reference() -> "pydicom.Dataset":
    ref = pydicom.Dataset()
    ref.PatientName = "Colin^Twentyseven"
    ref.PatientID = "MNI-C27"
    ref.StudyInstanceUID = pydicom.uid.generate_uid()
    ref.SeriesInstanceUID = pydicom.uid.generate_uid()
    ref.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ref.StudyDate = "19980101"
    ref.Modality = "MR"
    ref.SeriesNumber = 3
    return ref


@pytest.fixture
def series(tmp_path) -> tuple[Path, Volume]:
    """A DICOM series synthesized from the fixture on an oblique, anisotropic grid."""
    volume = _fixture_volume(_oblique)
    volume.meta["dicom_reference"] = _patient_reference()
    folder = tmp_path / "series"
    write_dicom_series(folder, volume.data, _same_grid(volume), volume)
    return folder, volume


def test_round_trip_keeps_data_and_affine(series):
    folder, volume = series
    back = read_dicom_series(folder)
    np.testing.assert_array_equal(back.data, volume.data)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    assert back.source_dtype == np.int16
    assert back.shape == (64, 64, 64)


def test_slices_are_ordered_by_position_not_by_file_name(series):
    folder, volume = series
    files = sorted(folder.iterdir())
    for f in files:  # reverse the names: IM0001 <-> IM0064
        f.rename(f.with_name("tmp_" + f.name))
    for i, f in enumerate(sorted(folder.iterdir())):
        f.rename(folder / files[len(files) - 1 - i].name)
    np.testing.assert_array_equal(read_dicom_series(folder).data, volume.data)


def test_float_data_round_trips_within_16_bit_precision(tmp_path):
    volume = _fixture_volume()
    volume.data = volume.data / 7.3 - 4.0
    volume.source_dtype = np.dtype(np.float32)
    write_dicom_series(tmp_path / "f", volume.data, _same_grid(volume), volume)
    back = read_dicom_series(tmp_path / "f")
    step = (volume.data.max() - volume.data.min()) / 65535
    assert np.max(np.abs(back.data - volume.data)) <= step * 0.51
    assert pydicom.dcmread(next((tmp_path / "f").iterdir())).PixelRepresentation == 0


def test_derived_series_on_a_new_grid(series, tmp_path):
    folder, source_volume = series
    source = read_dicom_series(folder)
    grid = plan_output_grid(source.shape, source.affine, scale=(1.5, 1.5, 2.0))
    out = np.random.default_rng(1).uniform(0, 300, grid.shape).astype(np.float32)
    written = write_dicom_series(tmp_path / "sr", out, grid, source)
    files = sorted(written.iterdir())
    assert len(files) == grid.shape[2]
    datasets = [pydicom.dcmread(f) for f in files]
    first = datasets[0]
    src = pydicom.dcmread(next(folder.iterdir()))
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert first.SeriesInstanceUID != src.SeriesInstanceUID
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
    assert all(d.SOPInstanceUID != s.SOPInstanceUID for d in datasets for s in [src])
    for name in ("PatientName", "PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "StudyDate"):
        assert first.data_element(name).value == src.data_element(name).value
    assert first.SeriesDescription == f"{src.SeriesDescription} SR x1.5x1.5x2 (arssr-rt)"[-64:]
    assert first.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert len(first.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(list(folder.iterdir()))
    assert (first.Rows, first.Columns) == (grid.shape[1], grid.shape[0])
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], [grid.spacing[1], grid.spacing[0]], rtol=1e-6)
    # the slice gap is the grid's third spacing projected on the normal (oblique grid)
    np.testing.assert_allclose(float(first.SliceThickness), float(first.SpacingBetweenSlices))
    for k in (0, 7, grid.shape[2] - 1):
        expected = np.diag([-1.0, -1.0, 1.0]) @ (grid.affine[:3, :3] @ [0, 0, k] + grid.affine[:3, 3])
        np.testing.assert_allclose([float(v) for v in datasets[k].ImagePositionPatient], expected, atol=1e-4)
    back = read_dicom_series(written)
    np.testing.assert_allclose(back.affine, grid.affine, atol=1e-5)
    # an integer source gives integer output, as the NIfTI writer does
    np.testing.assert_array_equal(back.data, np.round(out))


def test_series_from_a_nifti_source_gets_a_new_study(tmp_path):
    volume = _fixture_volume()
    write_dicom_series(tmp_path / "s", volume.data, _same_grid(volume), volume)
    ds = pydicom.dcmread(next((tmp_path / "s").iterdir()))
    assert ds.StudyInstanceUID and ds.FrameOfReferenceUID and ds.Modality == "MR"
    assert "(model " not in ds.DerivationDescription  # no model named when none was given


def test_derivation_description_names_the_model_bundle(tmp_path, tiny_bundle):
    """The model path names the bundle (model.json name and version); --interp names the method."""
    from arssr_rt.pipeline import upsample_file

    done = upsample_file(FIXTURE, tmp_path / "m", output_format="dicom", scale=(1, 1, 1.25), model=tiny_bundle,
                         backend="onnxruntime")
    text = pydicom.dcmread(next(done.out_path.iterdir())).DerivationDescription
    assert text.startswith("ArSSR super-resolution (model tiny-random-test version 1) by arssr-rt ")
    done = upsample_file(FIXTURE, tmp_path / "c", output_format="dicom", scale=(1, 1, 1.25), interp="cubic")
    assert pydicom.dcmread(next(done.out_path.iterdir())).DerivationDescription.startswith("cubic interpolation by arssr-rt ")


def test_existing_output_needs_force(series, tmp_path):
    folder, volume = series
    with pytest.raises(OutputError, match="already exists"):
        write_dicom_series(folder, volume.data, _same_grid(volume), volume)
    write_dicom_series(folder, volume.data, _same_grid(volume), volume, force=True)
    assert len(list(folder.iterdir())) == 64


def test_disk_full_mid_write_leaves_nothing(tmp_path, monkeypatch):
    volume = _fixture_volume()
    real_save = pydicom.Dataset.save_as
    calls = {"n": 0}

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save)
    with pytest.raises(OutputError, match="No space left on device"):  # one line, like every writer
        write_dicom_series(tmp_path / "out", volume.data, _same_grid(volume), volume)
    assert list(tmp_path.iterdir()) == []


def test_two_series_in_one_folder_are_refused(series, tmp_path):
    folder, volume = series
    other = tmp_path / "other"
    write_dicom_series(other, volume.data, _same_grid(volume), volume)
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    for f in other.iterdir():
        shutil.copy(f, mixed / ("B" + f.name))
    with pytest.raises(InputError, match="holds 2 DICOM series"):
        read_dicom_series(mixed)


def test_different_orientations_are_refused(series):
    folder, _ = series
    f = sorted(folder.iterdir())[10]
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(f)
    with pytest.raises(InputError, match="different orientations"):
        read_dicom_series(folder)


def test_different_sizes_are_refused(series):
    folder, _ = series
    f = sorted(folder.iterdir())[3]
    ds = pydicom.dcmread(f)
    ds.Rows = 32
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(f)
    with pytest.raises(InputError, match="differ in size"):
        read_dicom_series(folder)


def test_missing_slice_is_refused(series):
    folder, _ = series
    sorted(folder.iterdir())[20].unlink()
    with pytest.raises(InputError, match="irregular"):
        read_dicom_series(folder)


def test_repeated_positions_are_refused(series):
    folder, _ = series
    f = sorted(folder.iterdir())[5]
    ds = pydicom.dcmread(f)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "echo2.dcm")
    with pytest.raises(InputError, match="share one position"):
        read_dicom_series(folder)


def test_single_slice_is_refused(series, tmp_path):
    folder, _ = series
    (tmp_path / "one").mkdir()
    shutil.copy(sorted(folder.iterdir())[0], tmp_path / "one")
    with pytest.raises(InputError, match="single slice"):
        read_dicom_series(tmp_path / "one")


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM files"):
        read_dicom_series(tmp_path)


def test_rescale_slope_and_intercept_are_applied(series):
    folder, volume = series
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-10"
        ds.save_as(f)
    np.testing.assert_allclose(read_dicom_series(folder).data, volume.data * 0.5 - 10)


def test_left_handed_grid_round_trips_in_world_space(tmp_path):
    """A LAS volume (negative determinant) comes back with k reversed: DICOM slices are sorted
    along the right-handed normal, so the same voxels sit at the same world points."""
    volume = _fixture_volume(lambda a: np.diag([-1.0, 1.0, 1.0, 1.0]) @ a)
    assert np.linalg.det(volume.affine[:3, :3]) < 0
    write_dicom_series(tmp_path / "las", volume.data, _same_grid(volume), volume)
    back = read_dicom_series(tmp_path / "las")
    flip_k = np.eye(4)
    flip_k[2, 2], flip_k[2, 3] = -1.0, volume.shape[2] - 1
    np.testing.assert_allclose(back.affine @ flip_k, volume.affine, atol=1e-5)
    np.testing.assert_array_equal(back.data[:, :, ::-1], volume.data)


def _edit_all(folder: Path, **values) -> None:
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        for name, value in values.items():
            setattr(ds, name, value)
        ds.save_as(f)


@pytest.mark.parametrize(
    "iop, reason",
    [
        ([2, 0, 0, 0, 1, 0], "not two orthogonal unit vectors"),  # scaled cosine: spacing silently doubled
        ([1, 0, 0, 0.2, 0.98, 0], "not two orthogonal unit vectors"),  # skewed axes
        ([0, 0, 0, 0, 0, 0], "not two orthogonal unit vectors"),
    ],
)
def test_broken_image_orientation_is_refused(series, iop, reason):
    folder, _ = series
    _edit_all(folder, ImageOrientationPatient=iop)
    with pytest.raises(InputError, match=reason) as err:
        read_dicom_series(folder)
    assert "\n" not in str(err.value)


def test_orientation_within_rounding_is_accepted(series):
    folder, volume = series
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    iop = [float(v) * (1 + 2e-4) for v in ds.ImageOrientationPatient]  # DS rounding-sized error
    _edit_all(folder, ImageOrientationPatient=[f"{v:.8f}" for v in iop])
    np.testing.assert_array_equal(read_dicom_series(folder).data, volume.data)


@pytest.mark.parametrize("spacing", [["-0.8", "0.9"], ["0", "0.9"]])
def test_negative_or_zero_pixel_spacing_is_refused(series, spacing):
    folder, _ = series
    _edit_all(folder, PixelSpacing=spacing)
    with pytest.raises(InputError, match="PixelSpacing .* must be two finite sizes > 0"):
        read_dicom_series(folder)


def test_palette_colour_is_refused(series):
    folder, _ = series
    _edit_all(folder, PhotometricInterpretation="PALETTE COLOR")
    with pytest.raises(InputError, match="not a grey-level image"):
        read_dicom_series(folder)


def _displayed(folder: Path) -> np.ndarray:
    """What a viewer shows (brighter = larger), from the rescaled values and the polarity."""
    slices = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    values = np.stack([s.pixel_array * float(s.get("RescaleSlope", 1)) + float(s.get("RescaleIntercept", 0)) for s in slices]).astype(np.float64)
    return -values if slices[0].PhotometricInterpretation == "MONOCHROME1" else values


def test_monochrome1_keeps_its_values_and_its_display_polarity(series, tmp_path):
    folder, volume = series
    _edit_all(folder, PhotometricInterpretation="MONOCHROME1")
    back = read_dicom_series(folder)
    np.testing.assert_array_equal(back.data, volume.data)  # values keep their meaning: not inverted
    out = tmp_path / "out"
    write_dicom_series(out, back.data, _same_grid(back), back)
    assert pydicom.dcmread(sorted(out.iterdir())[0]).PhotometricInterpretation == "MONOCHROME1"
    src, dst = _displayed(folder), _displayed(out)
    assert np.corrcoef(src.ravel(), dst.ravel())[0, 1] > 0.99  # bright stays bright on screen
