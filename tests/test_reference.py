"""--reference REF on the shipped volume: an oblique reference (rotated 15 degrees about two
axes) gives exactly its grid and header geometry, with the content of an independent scipy
resample (--interp cubic / linear; the model path = the model on the input-aligned grid, then
a cubic B-spline onto the reference); an aligned 2x reference is --scale 2 bit for bit (NIfTI
and MGZ references); a 4-D reference gives its spatial grid; bad references fail in one line."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FIXTURE_PATH, rotation

from arssr_rt.cli import main

ndimage = pytest.importorskip("scipy.ndimage")

REF_SHAPE = (60, 66, 58)
REF_SPACING = 0.9


def _oblique_affine(img: nib.Nifti1Image) -> np.ndarray:
    """0.9 mm voxels rotated 15 degrees about x then y, centred on the input's centre."""
    out = np.eye(4)
    out[:3, :3] = rotation((1, 0, 0), 15) @ rotation((0, 1, 0), 15) * REF_SPACING
    centre = img.affine[:3, :3] @ ((np.array(img.shape) - 1) / 2) + img.affine[:3, 3]
    out[:3, 3] = centre - out[:3, :3] @ ((np.array(REF_SHAPE) - 1) / 2)
    return out


@pytest.fixture
def oblique_ref(tmp_path) -> Path:
    """An oblique reference whose qform (code 1, scanner) and sform (code 2, aligned) agree."""
    img = nib.load(FIXTURE_PATH)
    affine = _oblique_affine(img)
    ref = nib.Nifti1Image(np.zeros(REF_SHAPE, np.int16), affine)
    ref.set_qform(affine, code=1)
    ref.set_sform(affine, code=2)
    path = tmp_path / "ref_oblique.nii.gz"
    nib.save(ref, path)
    return path


def _run(*args: str) -> int:
    return main(["upsample", str(FIXTURE_PATH), "--quiet", *args])


def _assert_reference_geometry(out: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    assert out.shape == ref.shape
    assert np.array_equal(out.affine, ref.affine)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (int(ref.header["qform_code"]), int(ref.header["sform_code"]))
    np.testing.assert_allclose(out.get_qform(), ref.get_qform(), atol=1e-6)
    assert np.array_equal(out.get_sform(), ref.get_sform())


def _scipy_at_reference(data: np.ndarray, affine: np.ndarray, ref: nib.Nifti1Image, order: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """map_coordinates of ``data`` at the reference's voxel centres (nibabel affines); inside mask."""
    ijk = np.indices(ref.shape).reshape(3, -1).astype(np.float64)
    voxel_map = np.linalg.inv(affine) @ ref.affine
    points = voxel_map[:3, :3] @ ijk + voxel_map[:3, 3:4]
    inside = np.all((points >= -0.5 - 1e-6) & (points <= np.array(data.shape)[:, None] - 0.5 + 1e-6), axis=0)
    values = ndimage.map_coordinates(np.asarray(data, np.float64), points, order=order, mode=mode)
    return values.reshape(ref.shape), inside.reshape(ref.shape)


@pytest.mark.parametrize("interp,order,mode", [("cubic", 3, "mirror"), ("linear", 1, "nearest")])
def test_oblique_reference_interp_matches_scipy(tmp_path, oblique_ref, interp, order, mode):
    out_path = tmp_path / f"{interp}.nii.gz"
    assert _run("--reference", str(oblique_ref), "--interp", interp, "--dtype", "float32", "-o", str(out_path)) == 0
    out, ref = nib.load(out_path), nib.load(oblique_ref)
    _assert_reference_geometry(out, ref)
    src = nib.load(FIXTURE_PATH)
    expected, inside = _scipy_at_reference(src.get_fdata(), src.affine, ref, order, mode)
    got = out.get_fdata()
    assert 0.5 < inside.mean() < 1.0  # the rotated box reaches past the input's corners
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-3 * np.ptp(expected))
    assert np.all(got[~inside] == 0.0)  # the stated fill outside the input's field of view


def test_oblique_reference_model_path_is_model_grid_then_cubic(tmp_path, oblique_ref, tiny_bundle):
    """The model path = the model on the input-aligned grid at the reference's spacing (what
    --shape gives), then the cubic B-spline at the reference's points."""
    from arssr_rt.nifti_io import load_volume
    from arssr_rt.reference import intermediate_grid, read_reference

    ref = nib.load(oblique_ref)
    src = load_volume(FIXTURE_PATH)
    via = intermediate_grid(src.shape, src.affine, read_reference(oblique_ref).grid)
    np.testing.assert_allclose(via.spacing, [64 / round(64 / REF_SPACING)] * 3)  # 71 voxels of 0.901 mm
    common = ("--model", str(tiny_bundle), "--backend", "onnxruntime", "--dtype", "float32")
    assert _run("--reference", str(oblique_ref), *common, "-o", str(tmp_path / "model.nii.gz")) == 0
    assert _run("--shape", ",".join(map(str, via.shape)), *common, "-o", str(tmp_path / "via.nii.gz")) == 0
    out, mid = nib.load(tmp_path / "model.nii.gz"), nib.load(tmp_path / "via.nii.gz")
    _assert_reference_geometry(out, ref)
    np.testing.assert_allclose(mid.affine, via.affine, atol=1e-5)
    expected, inside = _scipy_at_reference(mid.get_fdata(), via.affine, ref, 3, "mirror")
    got = out.get_fdata()
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-3 * np.ptp(expected))
    assert np.all(got[~inside] == 0.0)


def test_oblique_reference_default_model_agrees_with_cubic(tmp_path, oblique_ref):
    """The embedded model onto the oblique grid stays close to the tricubic resample of the input."""
    assert _run("--reference", str(oblique_ref), "--dtype", "float32", "-o", str(tmp_path / "m.nii.gz")) == 0
    assert _run("--reference", str(oblique_ref), "--interp", "cubic", "--dtype", "float32", "-o", str(tmp_path / "c.nii.gz")) == 0
    model, cubic = nib.load(tmp_path / "m.nii.gz").get_fdata(), nib.load(tmp_path / "c.nii.gz").get_fdata()
    inside = cubic != 0
    assert np.corrcoef(model[inside], cubic[inside])[0, 1] > 0.99
    assert np.abs(model - cubic)[inside].mean() < 0.02 * np.ptp(cubic)


def test_aligned_reference_is_scale_2_bit_for_bit(tmp_path, tiny_bundle):
    common = ("--model", str(tiny_bundle), "--backend", "onnxruntime")
    assert _run("--scale", "2", *common, "-o", str(tmp_path / "s2.nii.gz")) == 0
    s2 = nib.load(tmp_path / "s2.nii.gz")
    nifti_ref = tmp_path / "grid.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(s2.shape, np.uint8), s2.affine), nifti_ref)
    mgz_ref = tmp_path / "grid.mgz"
    nib.save(nib.MGHImage(np.zeros(s2.shape, np.uint8), s2.affine), mgz_ref)
    for ref in (nifti_ref, mgz_ref):
        out_path = tmp_path / f"on_{ref.name}.nii.gz"
        assert _run("--reference", str(ref), *common, "-o", str(out_path)) == 0
        out = nib.load(out_path)
        assert out.get_data_dtype() == s2.get_data_dtype()
        assert np.array_equal(np.asarray(out.dataobj), np.asarray(s2.dataobj)), ref.name
        np.testing.assert_allclose(out.affine, s2.affine, atol=1e-5)


def test_4d_reference_uses_its_first_three_axes(tmp_path, oblique_ref, capsys):
    ref3 = nib.load(oblique_ref)
    ref4 = tmp_path / "ref4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((*REF_SHAPE, 3), np.int16), ref3.affine, header=ref3.header), ref4)
    assert _run("--reference", str(ref4), "--interp", "linear", "-o", str(tmp_path / "a.nii.gz")) == 0
    assert "has 3 volumes: its grid (the first three axes) is used" in capsys.readouterr().err
    assert _run("--reference", str(oblique_ref), "--interp", "linear", "-o", str(tmp_path / "b.nii.gz")) == 0
    a, b = nib.load(tmp_path / "a.nii.gz"), nib.load(tmp_path / "b.nii.gz")
    assert a.shape == REF_SHAPE and np.array_equal(a.affine, b.affine)
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_reference_forms_and_codes_come_from_the_reference(tmp_path):
    """A reference whose qform (scanner, code 1) and sform (MNI, code 4) differ: both are kept
    with their codes (the output voxels are the reference's voxels), not the input's."""
    img = nib.load(FIXTURE_PATH)
    sform = img.affine.copy()
    sform[:3, 3] += (0.5, -0.5, 0.25)  # shifted by a fraction of a voxel: a world grid, not a refinement
    qform = sform.copy()
    qform[:3, 3] += 10.0
    ref = nib.Nifti1Image(np.zeros(img.shape, np.float32), sform)
    ref.set_qform(qform, code=1)
    ref.set_sform(sform, code=4)
    nib.save(ref, tmp_path / "mni.nii.gz")
    assert _run("--reference", str(tmp_path / "mni.nii.gz"), "--interp", "cubic", "-o", str(tmp_path / "o.nii.gz")) == 0
    out = nib.load(tmp_path / "o.nii.gz")
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 4
    np.testing.assert_allclose(out.get_qform(), qform, atol=1e-5)
    assert np.array_equal(out.get_sform(), sform)
    data = img.get_fdata()
    expected = ndimage.map_coordinates(data, np.indices(img.shape) + np.array([0.5, -0.5, 0.25])[:, None, None, None], order=3, mode="mirror")
    inner = (slice(1, -1),) * 3  # the half-voxel shift reaches past the FOV on the first/last slices
    np.testing.assert_allclose(out.get_fdata()[inner], np.clip(np.round(expected), 0, 255)[inner], atol=1.0)


@pytest.mark.parametrize("case", ["garbage", "missing", "with-scale", "no-overlap", "2d"])
def test_bad_reference_one_line_nothing_written(tmp_path, case, capsys):
    ref = tmp_path / "ref.nii.gz"
    extra: tuple[str, ...] = ()
    if case == "garbage":
        ref.write_bytes(b"not an image at all" * 20)
    elif case == "with-scale":
        nib.save(nib.load(FIXTURE_PATH), ref)
        extra = ("--scale", "2")
    elif case == "no-overlap":
        img = nib.load(FIXTURE_PATH)
        far = img.affine.copy()
        far[:3, 3] += 500.0
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), far), ref)
    elif case == "2d":
        nib.save(nib.Nifti1Image(np.zeros((64, 64, 1), np.uint8), np.eye(4)), ref)
    out = tmp_path / "o.nii.gz"
    assert _run("--reference", str(ref), "--interp", "cubic", *extra, "-o", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--reference" in err
    assert not out.exists()


def test_output_on_the_reference_is_refused_even_with_force(tmp_path, cli):
    """The reference is an input of the run: ``-o REF --force`` used to overwrite it."""
    ref = tmp_path / "ref.nii.gz"
    ref.write_bytes(FIXTURE_PATH.read_bytes())
    before = ref.read_bytes()
    for spelling in (ref, tmp_path / "sub" / ".." / "ref.nii.gz"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        code, err = cli("upsample", FIXTURE_PATH, "--reference", ref, "-o", spelling, "--force", "--interp", "linear", "--quiet")
        assert code == 2 and err.startswith("arssr-rt: error:") and "is the input" in err and err.count("\n") == 1
    assert ref.read_bytes() == before
