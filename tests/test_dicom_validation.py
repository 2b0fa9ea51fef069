"""Derived DICOM checked the way its users check it: dciodvfy (dicom3tools) finds no error in
any written file, and dcm2niix reads the series back onto the grid of the NIfTI the tool writes
for the same request, with the same values. Sources: the shipped NIfTI fixture (uint8), the
same as float32, and a complete MR series built from the fixture on an oblique grid with a real
scanner's full header (pydicom's MR_small.dcm, Toshiba) as its template."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from arssr_rt.dicom_write import DESCRIPTION_LENGTH, series_description  # noqa: E402
from arssr_rt.pipeline import upsample_file  # noqa: E402

from conftest import FIXTURE_PATH, oblique_affine  # noqa: E402

SCALE = (1.5, 1.25, 1.125)  # 96x80x72 voxels, a different spacing per axis; every slice validated in seconds
DCIODVFY = shutil.which("dciodvfy")
DCM2NIIX = shutil.which("dcm2niix")
DCENTVFY = shutil.which("dcentvfy")  # dicom3tools too: patient/study/series consistent across files
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian/Ubuntu package dicom3tools) is not installed")
needs_dcm2niix = pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix (Debian/Ubuntu package dcm2niix) is not installed")


def _template(name: str = "MR_small.dcm") -> "pydicom.Dataset":
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} (a scanner's full MR header) is not available")
    ds = pydicom.dcmread(path)
    if "DataSetTrailingPadding" in ds:
        del ds.DataSetTrailingPadding
    return ds


def write_mr_series(folder: Path, data: np.ndarray, affine: np.ndarray, template: str = "MR_small.dcm") -> Path:
    """A complete, valid MR Image series (ORIGINAL\\PRIMARY\\M\\ND, every MR Image attribute of a
    real scanner's header) holding ``data`` on the RAS ``affine``, in the template's encoding."""
    tmpl = _template(template)
    tmpl.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    tmpl.NameOfPhysiciansReadingStudy = tmpl.OperatorsName = ""  # the file's retired PN form
    tmpl.SeriesDescription = "T1 MPRAGE"
    tmpl.ScanOptions, tmpl.EchoTrainLength = "IR", 1
    tmpl.StudyInstanceUID, tmpl.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    tmpl.FrameOfReferenceUID = pydicom.uid.generate_uid()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row, col = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    tmpl.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
    tmpl.PixelSpacing = [f"{spacing[1]:.8f}", f"{spacing[0]:.8f}"]
    tmpl.SliceThickness = f"{spacing[2]:.8f}"
    tmpl.Rows, tmpl.Columns = data.shape[1], data.shape[0]
    stored = data.astype(np.int16 if tmpl.file_meta.TransferSyntaxUID.is_little_endian else ">i2")
    tmpl.SmallestImagePixelValue, tmpl.LargestImagePixelValue = int(stored.min()), int(stored.max())
    folder.mkdir()
    for k in range(data.shape[2]):
        ds = copy.deepcopy(tmpl)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = k + 1
        position = lps[:3, :3] @ [0.0, 0.0, k] + lps[:3, 3]
        ds.ImagePositionPatient = [f"{v:.8f}" for v in position]
        ds.SliceLocation = f"{position @ np.cross(row, col):.8f}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.save_as(folder / f"MR{k + 1:04d}.dcm")
    return folder


def _fixture() -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(FIXTURE_PATH)
    return np.asarray(img.dataobj), img.affine


@pytest.fixture(scope="module", params=["nifti-uint8", "nifti-float32", "dicom-oblique"])
def written(request, tmp_path_factory) -> dict:
    """One request written twice: as a DICOM series and as NIfTI (the reference for dcm2niix)."""
    root = tmp_path_factory.mktemp(request.param)
    data, affine = _fixture()
    if request.param == "nifti-uint8":
        source = FIXTURE_PATH
    elif request.param == "nifti-float32":
        source = root / "colin_float.nii.gz"
        nib.Nifti1Image(data.astype(np.float32) / 7.3 - 4.0, affine).to_filename(source)
    else:
        source = write_mr_series(root / "t1_mprage", data, oblique_affine(affine))
    kwargs = dict(scale=SCALE, interp="linear")
    dicom = upsample_file(source, root / "out_dicom", output_format="dicom", **kwargs).out_path
    nifti = upsample_file(source, root / "out.nii.gz", **kwargs).out_path
    return {"kind": request.param, "source": source, "dicom": dicom, "nifti": nifti}


@needs_dciodvfy
def test_dciodvfy_finds_no_error_in_any_file(written):
    files = sorted(written["dicom"].iterdir())
    assert len(files) == 72
    problems = {}
    for f in files:
        p = subprocess.run([DCIODVFY, str(f)], capture_output=True, text=True)
        lines = (p.stdout + p.stderr).splitlines()
        errors = [line for line in lines if line.startswith(("Error", "Abort"))]
        if errors:
            problems[f.name] = errors
    assert not problems, f"{len(problems)} files with errors, e.g. {next(iter(problems.items()))}"
    if DCENTVFY is not None:  # the derived series with its source: one patient, one study
        source = sorted(Path(written["source"]).iterdir()) if Path(written["source"]).is_dir() else []
        p = subprocess.run([DCENTVFY, *map(str, files + source)], capture_output=True, text=True)
        assert not [line for line in (p.stdout + p.stderr).splitlines() if line.startswith(("Error", "Abort"))], p.stdout + p.stderr


def _dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    out.mkdir()
    p = subprocess.run([DCM2NIIX, "-z", "n", "-b", "n", "-f", "back", "-o", str(out), str(folder)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    found = sorted(out.glob("*.nii"))
    assert [f.name for f in found] == ["back.nii"], p.stdout  # one series, one volume
    return nib.load(found[0])


@needs_dcm2niix
def test_dcm2niix_reads_it_back_on_the_same_grid(written, tmp_path):
    ours = nib.load(written["nifti"])
    back = _dcm2niix(written["dicom"], tmp_path / "d2n")
    # dcm2niix keeps the DICOM row/column/slice order (it flips rows); bring it to ours
    back = back.as_reoriented(nib.orientations.ornt_transform(nib.io_orientation(back.affine), nib.io_orientation(ours.affine)))
    assert back.shape == ours.shape
    np.testing.assert_allclose(back.affine, ours.affine, atol=1e-3)
    theirs, expected = back.get_fdata(), ours.get_fdata()
    if written["kind"] == "nifti-float32":  # quantised to 16 bits over the range: half a step
        step = (expected.max() - expected.min()) / 65535
        assert np.max(np.abs(theirs - expected)) <= 0.51 * step
    else:  # integer source: integers, as the NIfTI writer stores them
        np.testing.assert_array_equal(theirs, expected)


def _first(folder: Path) -> "pydicom.Dataset":
    return pydicom.dcmread(sorted(folder.iterdir())[0])


@pytest.mark.parametrize("written", ["dicom-oblique"], indirect=True)
def test_derived_from_dicom_keeps_the_source_and_says_what_was_done(written):
    ds, src = _first(written["dicom"]), _first(written["source"])
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "M", "ND"]
    assert ds.SeriesDescription == "T1 MPRAGE linear x1.5x1.25x1.12 (arssr-rt)"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    for name in ("ScanOptions", "EchoTrainLength", "Laterality", "RepetitionTime", "EchoTime", "Manufacturer", "PatientName"):
        assert ds.data_element(name).value == src.data_element(name).value, name
    code = ds.DerivationCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("113085", "DCM", "Spatial resampling")
    assert "96x80x72 voxels of 0.667x0.8x0.889 mm" in ds.DerivationDescription
    source_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in sorted(written["source"].iterdir())]
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == src.SeriesInstanceUID
    assert sorted(i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence) == sorted(source_uids)
    # every output slice names the source slices it lies across (oblique: a few of them)
    for f in sorted(written["dicom"].iterdir())[::20]:
        items = pydicom.dcmread(f, stop_before_pixels=True).SourceImageSequence
        assert 2 <= len(items) <= 8 and {i.ReferencedSOPInstanceUID for i in items} <= set(source_uids)
        assert items[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert not [e for e in ds if e.tag.is_private]
    assert "RescaleSlope" not in ds  # integer source: stored values are the values


@pytest.mark.parametrize("written", ["nifti-uint8", "nifti-float32"], indirect=True)
def test_derived_from_nifti_has_an_empty_patient_and_states_the_quantisation(written):
    ds = _first(written["dicom"])
    for name in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyID",
                 "AccessionNumber", "ReferringPhysicianName", "Manufacturer", "ScanOptions", "EchoTime"):
        assert name in ds and ds.data_element(name).value in ("", None), name
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert ds.ScanningSequence == "RM" and "not DICOM" in ds.DerivationDescription
    stem = Path(written["source"]).name.split(".")[0]
    assert ds.SeriesDescription == f"{stem} linear x1.5x1.25x1.12 (arssr-rt)"
    if written["kind"] == "nifti-float32":
        assert float(ds.RescaleSlope) > 0 and "quantised to 16 bits" in ds.DerivationDescription
    else:
        assert "RescaleSlope" not in ds and "rounded to integers" in ds.DerivationDescription


def test_series_description_keeps_what_was_done_within_64_characters():
    text = series_description("T1 MPRAGE sagittal 0.9 mm isotropic with a very long protocol name", "SR x2")
    assert len(text) == DESCRIPTION_LENGTH and text.startswith("T1 MPRAGE") and text.endswith(" SR x2 (arssr-rt)")
    assert series_description("", "SR 0.5mm") == "SR 0.5mm (arssr-rt)"


def test_a_ct_source_stays_a_valid_ct_series(tmp_path):
    """A CT source keeps CT Image Storage (Rescale is Type 1 there, value 3 AXIAL kept), and an
    image computed from lossy-compressed pixels still says so."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom's test file CT_small.dcm is not available")
    tmpl = pydicom.dcmread(path)
    tmpl.remove_private_tags()
    tmpl.SeriesInstanceUID = pydicom.uid.generate_uid()
    tmpl.LossyImageCompression, tmpl.LossyImageCompressionRatio, tmpl.LossyImageCompressionMethod = "01", "8", "ISO_10918_1"
    (tmp_path / "ct").mkdir()
    x, y, z = (float(v) for v in tmpl.ImagePositionPatient)
    for k in range(4):
        ds = copy.deepcopy(tmpl)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber, ds.ImagePositionPatient = k + 1, [x, y, z + 5.0 * k]
        ds.save_as(tmp_path / "ct" / f"CT{k}.dcm")
    out = upsample_file(tmp_path / "ct", tmp_path / "ct_x2", output_format="dicom", scale=(1, 1, 2), interp="linear",
                        as_intensity=True).out_path
    ds = _first(out)
    assert ds.SOPClassUID == tmpl.SOPClassUID and ds.Modality == "CT"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"] and float(ds.RescaleSlope) == 1.0
    assert (ds.LossyImageCompression, ds.LossyImageCompressionMethod) == ("01", "ISO_10918_1")
    assert float(ds.SliceThickness) == pytest.approx(2.5)
    if DCIODVFY is not None:
        for f in sorted(out.iterdir()):
            report = subprocess.run([DCIODVFY, str(f)], capture_output=True, text=True)
            assert not [line for line in (report.stdout + report.stderr).splitlines() if line.startswith(("Error", "Abort"))]


def test_a_source_of_another_modality_is_refused_not_mislabelled(tmp_path):
    from arssr_rt.errors import OutputError
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.io_dicom import write_dicom_series
    from arssr_rt.readers import read_volume

    volume = read_volume(FIXTURE_PATH)
    volume.meta["dicom_reference"] = ref = pydicom.Dataset()
    ref.SOPClassUID, ref.Modality = "1.2.840.10008.5.1.4.1.1.128", "PT"  # PET Image Storage
    with pytest.raises(OutputError, match="the source is PT"):
        write_dicom_series(tmp_path / "pet", volume.data, plan_output_grid(volume.shape, volume.affine, shape=volume.shape), volume)
    assert list(tmp_path.iterdir()) == []


def test_values_are_those_of_the_nifti_output_clipping_included(tmp_path):
    """A uint8 source whose result leaves 0..255 (a model's overshoot): the series holds what the
    NIfTI holds (rounded, clipped to uint8) and says how many voxels were clipped."""
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.io_dicom import read_dicom_series
    from arssr_rt.readers import read_volume
    from arssr_rt.writers import write_volume

    volume = read_volume(FIXTURE_PATH)
    grid = plan_output_grid(volume.shape, volume.affine, shape=volume.shape)
    result = volume.data * 2.6 - 80.4  # 22..131 becomes -23..260: below 0 and over 255
    outside = int(np.count_nonzero((np.rint(result) < 0) | (np.rint(result) > 255)))
    assert outside > 1000
    nifti = write_volume(tmp_path / "out.nii.gz", result, grid, volume)
    dicom = write_volume(tmp_path / "out", result, grid, volume, "dicom")
    expected = np.asarray(nib.load(nifti).dataobj)
    assert expected.dtype == np.uint8
    np.testing.assert_array_equal(read_dicom_series(dicom).data, expected)
    assert f"({outside:,} voxels outside it clipped)" in _first(dicom).DerivationDescription


def test_a_big_endian_source_gives_a_little_endian_derived_series(tmp_path):
    """Elements are decoded in the source's byte order and written in ours (pydicom refuses to
    save a big-endian FileDataset as little endian)."""
    from arssr_rt.io_dicom import read_dicom_series

    data, affine = _fixture()
    source = write_mr_series(tmp_path / "be", data, affine, template="MR_small_bigendian.dcm")
    assert not pydicom.dcmread(sorted(source.iterdir())[0]).file_meta.TransferSyntaxUID.is_little_endian
    np.testing.assert_array_equal(read_dicom_series(source).data, data)
    out = upsample_file(source, tmp_path / "le", output_format="dicom", scale=(1, 1, 1), interp="nearest").out_path
    ds = _first(out)
    assert ds.file_meta.TransferSyntaxUID.is_little_endian and float(ds.RepetitionTime) == 4000.0
    np.testing.assert_array_equal(read_dicom_series(out).data, data)
    if DCIODVFY is not None:
        report = subprocess.run([DCIODVFY, str(sorted(out.iterdir())[7])], capture_output=True, text=True)
        assert not [line for line in (report.stdout + report.stderr).splitlines() if line.startswith(("Error", "Abort"))]
