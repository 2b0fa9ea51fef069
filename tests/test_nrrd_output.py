"""NRRD output, checked as a 3D Slicer user would: the file read back with raw pynrrd (LPS
space directions/origin, mm, gzip, domain kinds), with the project's own NRRD reader and, when
SimpleITK (ITK's readers, what Slicer uses) is installed, with SimpleITK; every time against
the NIfTI the tool writes for the same request: the same voxels and the same world grid. Inputs:
the shipped fixture as it is (RAS), rotated obliquely, and flipped (LAS)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FIXTURE_PATH, oblique_affine

from arssr_rt.cli import main
from arssr_rt.readers import read_volume

nrrd = pytest.importorskip("nrrd")

SCALE = "2,1.5,1.25"  # 128x96x80: a different spacing per axis
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _input(tmp_path: Path, kind: str) -> Path:
    """The fixture (uint8) with its affine as given, rotated (oblique) or with axis i flipped (LAS)."""
    img = nib.load(FIXTURE_PATH)
    affine = img.affine.copy()
    if kind == "oblique":
        affine = oblique_affine(affine)
    elif kind == "las":
        affine[:, 0] *= -1.0
        affine[:3, 3] += 5.0
    path = tmp_path / "in" / f"t1_{kind}.nii.gz"
    path.parent.mkdir(exist_ok=True)
    out = nib.Nifti1Image(np.asarray(img.dataobj), affine, header=img.header)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    out.to_filename(path)
    return path


def _upsample(src: Path, out: Path, *extra: str) -> None:
    code = main(["upsample", str(src), "-o", str(out), "--scale", SCALE, "--quiet", *extra])
    assert code == 0, f"upsample to {out.name} failed"


def _raw_affine(header: dict) -> np.ndarray:
    """RAS+ affine from a raw pynrrd header written in LPS (rows of space directions = axes)."""
    assert header["space"] == "left-posterior-superior"
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(header["space directions"], dtype=np.float64).T
    affine[:3, 3] = np.asarray(header["space origin"], dtype=np.float64)
    return LPS @ affine


@pytest.mark.parametrize("kind", ["ras", "oblique", "las"])
def test_cubic_nrrd_matches_the_nifti_output(tmp_path, kind, capsys):
    src = _input(tmp_path, kind)
    out, ref = tmp_path / "sr.nrrd", tmp_path / "sr.nii.gz"
    _upsample(src, out, "--interp", "cubic")
    _upsample(src, ref, "--interp", "cubic")
    nii = nib.load(ref)
    expected = np.asarray(nii.dataobj)
    # raw pynrrd: the header a Slicer user sees, the voxels as stored
    data, header = nrrd.read(str(out), index_order="F")
    assert out.read_bytes()[:8] == b"NRRD0005" and header["encoding"] == "gzip"
    assert list(header["kinds"]) == ["domain"] * 3 and list(header["space units"]) == ["mm"] * 3
    # the provenance text of the NIfTI output (its descrip), in the NRRD's content field
    assert header["content"].startswith("arssr-rt ") and header["content"].endswith(" interp cubic")
    assert nii.header["descrip"].tobytes().split(b"\0")[0].decode().startswith(header["content"])
    assert data.dtype == expected.dtype == np.uint8 and data.shape == (128, 96, 80)
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_allclose(_raw_affine(header), nii.affine, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(nii.affine[:3, :3], axis=0), [0.5, 1 / 1.5, 0.8], atol=1e-6)
    # the project's own reader (LPS -> RAS back)
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, expected.astype(np.float32))
    np.testing.assert_allclose(back.affine, nii.affine, atol=1e-6)
    assert back.source_dtype == np.uint8


def test_model_path_nrrd_matches_the_nifti_output(tmp_path, tiny_bundle):
    src = _input(tmp_path, "oblique")
    out, ref = tmp_path / "sr.nrrd", tmp_path / "sr.nii.gz"
    model = ["--model", str(tiny_bundle), "--backend", "onnxruntime", "--threads", "1"]
    _upsample(src, out, *model)
    _upsample(src, ref, *model)
    data, header = nrrd.read(str(out), index_order="F")
    nii = nib.load(ref)
    assert header["content"].startswith("arssr-rt ") and "tiny-random-test x2x1.5x1.25 model" in header["content"]
    np.testing.assert_array_equal(data, np.asarray(nii.dataobj))
    np.testing.assert_allclose(_raw_affine(header), nii.affine, atol=1e-6)


def test_float_dtype_and_scaled_integers_are_written_as_values(tmp_path):
    img = nib.load(FIXTURE_PATH)
    src = tmp_path / "scaled.nii.gz"
    scaled = nib.Nifti1Image(np.asarray(img.dataobj).astype(np.int16), img.affine)
    scaled.header.set_slope_inter(0.5, 10.0)  # stored integers are not the values
    scaled.to_filename(src)
    out, ref = tmp_path / "s.nrrd", tmp_path / "s.nii.gz"
    _upsample(src, out, "--interp", "linear")
    _upsample(src, ref, "--interp", "linear")
    data, _ = nrrd.read(str(out), index_order="F")
    decoded = np.asarray(nib.load(ref).get_fdata())
    assert data.dtype == np.float32  # NRRD has no scaling: the values, not the raw integers
    assert np.abs(data - decoded).max() <= 0.25 + 1e-3  # the NIfTI output rounds to steps of 0.5
    assert data.min() >= 10.0
    _upsample(src, tmp_path / "i.nrrd", "--interp", "linear", "--dtype", "int32")
    assert nrrd.read_header(str(tmp_path / "i.nrrd"))["type"] == "int32"


def test_simpleitk_reads_the_same_grid_as_nibabel(tmp_path):
    sitk = pytest.importorskip("SimpleITK", reason="SimpleITK (ITK's readers, as in 3D Slicer) is not installed")
    src = _input(tmp_path, "oblique")
    out, ref = tmp_path / "sr.nrrd", tmp_path / "sr.nii.gz"
    _upsample(src, out, "--interp", "cubic")
    _upsample(src, ref, "--interp", "cubic")
    affine = LPS @ nib.load(ref).affine  # ITK works in LPS
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    for path in (ref, out):
        image = sitk.ReadImage(str(path))
        np.testing.assert_allclose(image.GetSpacing(), spacing, atol=1e-6, err_msg=path.name)
        np.testing.assert_allclose(image.GetOrigin(), affine[:3, 3], atol=1e-4, err_msg=path.name)
        np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), affine[:3, :3] / spacing, atol=1e-6,
                                   err_msg=path.name)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), np.asarray(nib.load(ref).dataobj))


def test_no_overwrite_without_force_and_never_the_input(tmp_path, capsys):
    src = _input(tmp_path, "ras")
    out = tmp_path / "sr.nrrd"
    _upsample(src, out, "--interp", "linear")
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["upsample", str(src), "-o", str(out), "--scale", "2", "--interp", "linear", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and "Traceback" not in err
    assert out.read_bytes() == before
    assert main(["upsample", str(src), "-o", str(out), "--scale", "2", "--interp", "linear", "--quiet", "--force"]) == 0
    assert nrrd.read_header(str(out))["sizes"].tolist() == [128, 128, 128]
    # the NRRD as an input: its own path is refused as the output, even with --force
    before = out.read_bytes()
    assert main(["upsample", str(out), "-o", str(out), "--scale", "2", "--interp", "linear", "--quiet", "--force"]) != 0
    err = capsys.readouterr().err
    assert "is the input" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before


@pytest.mark.parametrize("name,fmt,needle", [
    ("sr.nhdr", "auto", "detached NRRD header"),
    ("sr.nhdr", "nrrd", "detached NRRD header"),
    ("sr.nii.gz", "nrrd", "must end in .nrrd"),
])
def test_unwritable_nrrd_names_are_refused_in_one_line(tmp_path, capsys, name, fmt, needle):
    code = main(["upsample", str(FIXTURE_PATH), "-o", str(tmp_path / name), "--scale", "2", "--interp", "linear",
                 "--quiet", "--output-format", fmt])
    err = capsys.readouterr().err
    assert code != 0 and needle in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_default_name_and_format_option(tmp_path):
    src = _input(tmp_path, "ras")
    assert main(["upsample", str(src), "--scale", "2", "--interp", "linear", "--quiet", "--output-format", "nrrd"]) == 0
    assert nrrd.read_header(str(src.parent / "t1_ras_x2.nrrd"))["space"] == "left-posterior-superior"


def test_missing_pynrrd_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nrrd", None)  # import nrrd -> ImportError
    code = main(["upsample", str(FIXTURE_PATH), "-o", str(tmp_path / "sr.nrrd"), "--scale", "2", "--interp", "linear", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "arssr-rt[io]" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    code = main(["batch", str(FIXTURE_PATH), "-o", str(tmp_path / "out"), "--scale", "2", "--output-format", "nrrd", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "arssr-rt[io]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_4d_series_to_nrrd_is_refused(tmp_path, capsys):
    img = nib.load(FIXTURE_PATH)
    src = tmp_path / "bold.nii.gz"
    nib.Nifti1Image(np.stack([np.asarray(img.dataobj)] * 2, axis=-1), img.affine).to_filename(src)
    code = main(["upsample", str(src), "-o", str(tmp_path / "bold.nrrd"), "--scale", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "4-D series" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bold.nrrd").exists()


def test_batch_writes_nrrd_for_two_files(tmp_path, tiny_bundle, capsys):
    sources = [_input(tmp_path, "oblique"), _input(tmp_path, "las")]
    args = ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle),
            "--backend", "onnxruntime", "--threads", "1", "--output-format", "nrrd", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    for src in sources:
        out = tmp_path / "out" / f"{src.name[:-len('.nii.gz')]}_x2.nrrd"
        data, header = nrrd.read(str(out), index_order="F")
        assert data.shape == (128, 128, 128) and data.dtype == np.uint8
        in_affine = nib.load(src).affine
        expected = in_affine.copy()  # README geometry: half the spacing, origin moved by a quarter voxel
        expected[:3, :3] = in_affine[:3, :3] / 2
        expected[:3, 3] = in_affine[:3, :3] @ np.full(3, -0.25) + in_affine[:3, 3]
        np.testing.assert_allclose(_raw_affine(header), expected, atol=1e-6)
        assert out.with_suffix(".json").is_file()  # the sidecar: <stem>_x2.json
    # a rerun finds them up to date
    assert main(args) == 0
    import json

    report = json.loads((tmp_path / "out" / "batch_report.json").read_text())
    assert sorted(item["status"] for item in report["items"]) == ["skipped", "skipped"]


def test_a_file_backed_output_is_streamed_slab_by_slab(tmp_path, monkeypatch):
    """A huge output lives on disk (memory.py); the writer compresses a few k-planes at a time
    (here 3 per step) and the planes still follow each other in NRRD's F order."""
    from arssr_rt import nrrd_write
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.memory import is_file_backed, output_buffer_of
    from arssr_rt.writers import write_volume

    volume = read_volume(FIXTURE_PATH)
    grid = plan_output_grid(volume.shape, volume.affine, scale=(1.0, 1.0, 1.5))
    rng = np.random.default_rng(0)
    values = rng.uniform(-500, 3000, grid.shape).astype(np.float32)
    data = output_buffer_of(grid.shape, np.dtype(np.float32))
    data[...] = values
    assert is_file_backed(data)
    monkeypatch.setattr(nrrd_write, "SLAB_BYTES", 3 * 64 * 64 * 2)
    out = write_volume(tmp_path / "big.nrrd", data, grid, volume, dtype="int16")
    back, header = nrrd.read(str(out), index_order="F")
    assert header["type"] == "int16" and header["endian"] == "little" and back.shape == (64, 64, 96)
    np.testing.assert_array_equal(back, np.clip(np.round(values), -32768, 32767).astype(np.int16))
    np.testing.assert_allclose(_raw_affine(header), grid.affine, atol=1e-9)
    assert header["content"].startswith("ArSSR super-resolution by arssr-rt ")  # no descrip given: from method/model
