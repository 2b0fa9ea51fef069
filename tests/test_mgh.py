"""FreeSurfer MGH/MGZ input and output: an oblique round trip on the real fixture, checked as a
FreeSurfer user would (nibabel's MGHImage vox2ras), plus the reader's safety refusals."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FIXTURE_PATH, oblique_affine

from arssr_rt.cli import main
from arssr_rt.errors import InputError
from arssr_rt.readers import read_volume


def _centres(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return idx @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture
def oblique_mgz(tmp_path: Path) -> tuple[Path, np.ndarray]:
    img = nib.load(FIXTURE_PATH)
    affine = oblique_affine(img.affine)
    path = tmp_path / "in" / "t1.mgz"
    path.parent.mkdir()
    nib.save(nib.MGHImage(np.asarray(img.dataobj), affine), path)  # uint8, as FreeSurfer's orig.mgz
    return path, affine


def test_mgz_input_reads_with_its_vox2ras(oblique_mgz):
    path, affine = oblique_mgz
    vol = read_volume(path)
    assert vol.shape == (64, 64, 64) and vol.source_dtype == np.uint8
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)  # MGH stores float32
    np.testing.assert_array_equal(vol.data, np.asarray(nib.load(FIXTURE_PATH).dataobj, dtype=np.float32))


def test_oblique_mgz_round_trip_geometry_and_values(oblique_mgz, tiny_bundle, tmp_path, capsys):
    path, affine = oblique_mgz
    out = tmp_path / "t1_sr.mgz"
    nii = tmp_path / "t1_sr.nii.gz"
    args = ["--scale", "2,1.5,1.25", "--model", str(tiny_bundle), "--quiet", "--backend", "onnxruntime"]
    assert main(["upsample", str(path), "-o", str(out), *args]) == 0, capsys.readouterr().err
    assert main(["upsample", str(path), "-o", str(nii), *args]) == 0, capsys.readouterr().err
    img = nib.load(out)
    assert isinstance(img, nib.MGHImage) and out.read_bytes()[:2] == b"\x1f\x8b"  # gzip: a real .mgz
    shape = (128, 96, 80)
    assert img.shape == shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.header.get_zooms()[:3], [0.5, 1 / 1.5, 0.8], atol=1e-6)
    # README geometry: output voxel j's centre lies at input index (j + 0.5) h/H - 0.5
    h = np.array([64, 64, 64])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    cont = (idx + 0.5) * h / np.array(shape) - 0.5
    expected = cont @ affine[:3, :3].T + affine[:3, 3]
    np.testing.assert_allclose(_centres(img.affine, shape), expected, atol=1e-4)
    # same voxels as the NIfTI output of the same run
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(nib.load(nii).dataobj))


def test_float_nifti_to_mgz_keeps_float32(tmp_path, tiny_bundle, capsys):
    img = nib.load(FIXTURE_PATH)
    src = tmp_path / "f.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float64) * 1.5, img.affine), src)
    out = tmp_path / "f.mgh"
    code = main(["upsample", str(src), "-o", str(out), "--scale", "2", "--model", str(tiny_bundle), "--quiet",
                 "--backend", "onnxruntime"])
    assert code == 0, capsys.readouterr().err
    assert nib.load(out).get_data_dtype().newbyteorder("=") == np.float32  # float64 has no MGH type; not truncated


def test_mgz_bomb_and_truncation_refused(tmp_path):
    img = nib.load(FIXTURE_PATH)
    good = tmp_path / "a.mgh"
    nib.save(nib.MGHImage(np.asarray(img.dataobj), img.affine), good)
    raw = good.read_bytes()
    bomb = tmp_path / "bomb.mgz"
    bomb.write_bytes(gzip.compress(raw + b"\0" * (4 << 20)))  # 4 MiB more than the header accounts for
    with pytest.raises(InputError, match="decompression bomb"):
        read_volume(bomb)
    short = tmp_path / "short.mgz"
    short.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(InputError, match="truncated"):
        read_volume(short)
    cut = tmp_path / "cut.mgh"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_volume(cut)


@pytest.mark.parametrize("suffix", [".mgh", ".mgz"])
def test_header_claiming_huge_dims_is_refused_for_its_size_before_nibabel(tmp_path, suffix):
    """A 1 kB file whose header claims 10^13 voxels: refused by the size limit, one line, not
    an OS error from nibabel seeking for a footer 40 TB in."""
    import struct

    head = struct.pack(">7i", 1, 100000, 100000, 1000, 1, 3, 0).ljust(284, b"\0") + b"\0" * 1000
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(gzip.compress(head) if suffix == ".mgz" else head)
    with pytest.raises(InputError, match="over the input limit"):
        read_volume(path)
    for bad, match in ((struct.pack(">7i", 2, 8, 8, 8, 1, 3, 0), "version 2"), (struct.pack(">7i", 1, 8, 0, 8, 1, 3, 0), ">= 1"),
                       (struct.pack(">7i", 1, 8, 8, 8, 1, 7, 0), "type code 7")):
        path.write_bytes(bad.ljust(284 + 8 ** 3 * 4, b"\0") if suffix == ".mgh" else gzip.compress(bad.ljust(284 + 8 ** 3 * 4, b"\0")))
        with pytest.raises(InputError, match=match):
            read_volume(path)


def test_mgz_output_suffix_mismatch_refused(tmp_path, oblique_mgz, tiny_bundle, capsys):
    path, _ = oblique_mgz
    code = main(["upsample", str(path), "-o", str(tmp_path / "x.img"), "--scale", "2", "--model", str(tiny_bundle),
                 "--quiet", "--output-format", "mgh"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and ".mgz or .mgh" in err
    assert not (tmp_path / "x.img").exists()


def _mgh_with(tmp_path: Path, flag: int | None = None, mdc: np.ndarray | None = None) -> Path:
    """The real fixture as an oblique .mgh whose goodRASFlag (offset 28) or Mdc (offset 42) is rewritten."""
    import struct

    img = nib.load(FIXTURE_PATH)
    path = tmp_path / "edited.mgh"
    nib.save(nib.MGHImage(np.asarray(img.dataobj), oblique_affine(img.affine)), path)
    blob = bytearray(path.read_bytes())
    if flag is not None:
        blob[28:30] = struct.pack(">h", flag)
    if mdc is not None:
        blob[42:78] = np.asarray(mdc, dtype=">f4").tobytes()
    path.write_bytes(bytes(blob))
    return path


@pytest.mark.parametrize("flag", [0, -1])
def test_mgh_without_a_stored_orientation_is_refused(flag, tmp_path, capsys):
    """goodRASFlag 0: the geometry fields are undefined. FreeSurfer assumes coronal LIA; nibabel
    quietly sets its own default (LSP, checked here so a fixed nibabel shows up): not guessed."""
    assert nib.aff2axcodes(nib.freesurfer.mghformat.MGHHeader().get_affine()) == ("L", "S", "P")
    path = _mgh_with(tmp_path, flag=flag)
    nib.load(path).get_fdata()  # nibabel alone reads it without a word
    with pytest.raises(InputError, match=f"goodRASFlag is {flag}"):
        read_volume(path)
    out = tmp_path / "sr.nii.gz"
    assert main(["upsample", str(path), "-o", str(out), "--scale", "2", "--interp", "cubic"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "goodRASFlag" in err and not out.exists()


@pytest.mark.parametrize("damage", ["scaled", "sheared", "nan"])
def test_mgh_direction_cosines_must_be_orthonormal(damage, tmp_path):
    rotation = np.asarray(nib.load(_mgh_with(tmp_path)).header["Mdc"], dtype=np.float64)
    mdc = rotation.copy()
    if damage == "scaled":
        mdc[0] *= 1.5  # one axis 1.5x too long: the affine would still be valid, the voxel size wrong
    elif damage == "sheared":
        mdc[1] = (mdc[1] + 0.3 * mdc[0]) / np.linalg.norm(mdc[1] + 0.3 * mdc[0])  # unit length, not orthogonal
    else:
        mdc[2, 1] = np.nan
    with pytest.raises(InputError, match="not orthonormal"):
        read_volume(_mgh_with(tmp_path, mdc=mdc))
    read_volume(_mgh_with(tmp_path, mdc=rotation))  # the same bytes, undamaged, still read
