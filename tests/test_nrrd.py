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


# ----- detached data files: resolved inside the header's folder -------------------------------


def _detached(folder: Path, data_name: str, encoding: str = "raw") -> Path:
    """A real detached header (sizes of the fixture) naming ``data_name`` as its data file."""
    data, affine = _fixture()
    header = folder / "t1.nhdr"
    nrrd.write(str(header), data, {"space": "right-anterior-superior", "space directions": affine[:3, :3].T,
                                   "space origin": affine[:3, 3], "encoding": encoding}, detached_header=True, index_order="F")
    text = header.read_text()
    written = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("data file"))
    header.write_text(text.replace(f"data file: {written}", f"data file: {data_name}"))
    return header


def test_detached_header_next_to_its_data_reads(tmp_path):
    header = _detached(tmp_path, "t1.raw.gz", encoding="gzip")
    np.testing.assert_array_equal(read_nrrd(header).data, _fixture()[0].astype(np.float32))


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.raw", "sub/../../outside.raw"])
def test_data_file_outside_the_header_folder_is_refused(tmp_path, name):
    (tmp_path / "outside.raw").write_bytes(bytes(64**3))
    folder = tmp_path / "case"
    folder.mkdir()
    header = _detached(folder, name)
    with pytest.raises(InputError, match="outside .*ARSSR_RT_ALLOW_EXTERNAL_DATA") as info:
        read_nrrd(header)
    assert "\n" not in str(info.value)


def test_symlinked_data_file_that_escapes_is_refused(tmp_path):
    (tmp_path / "secret.raw").write_bytes(bytes(64**3))
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "t1.raw").symlink_to(tmp_path / "secret.raw")
    with pytest.raises(InputError, match="outside"):
        read_nrrd(_detached(folder, "t1.raw"))


def test_external_data_needs_the_explicit_opt_in(tmp_path, monkeypatch):
    data = _fixture()[0]
    folder = tmp_path / "case"
    folder.mkdir()
    header = _detached(folder, "t1.raw")
    (folder / "t1.raw").rename(tmp_path / "t1.raw")
    header.write_text(header.read_text().replace("data file: t1.raw", "data file: ../t1.raw"))
    with pytest.raises(InputError, match="outside"):
        read_nrrd(header)
    monkeypatch.setenv("ARSSR_RT_ALLOW_EXTERNAL_DATA", "1")
    np.testing.assert_array_equal(read_nrrd(header).data, data.astype(np.float32))


def test_data_file_that_is_not_a_regular_file_is_refused(tmp_path):
    header = _detached(tmp_path, "t1.raw")
    (tmp_path / "t1.raw").unlink()
    (tmp_path / "t1.raw").mkdir()  # (a FIFO is refused the same way; opening one would block)
    with pytest.raises(InputError, match="not a regular file"):
        read_nrrd(header)


def test_multi_file_data_forms_are_refused(tmp_path):
    header = _detached(tmp_path, "LIST")
    with pytest.raises(InputError, match="multi-file"):
        read_nrrd(header)
    header.write_text(header.read_text().replace("data file: LIST", "data file: slice%03d.raw 1 64 1"))
    with pytest.raises(InputError, match="multi-file"):
        read_nrrd(header)


def test_cli_refuses_an_escaping_data_file_in_one_line(tmp_path, capsys):
    from arssr_rt.cli import main

    folder = tmp_path / "case"
    folder.mkdir()
    header = _detached(folder, "/etc/passwd")
    before = sorted(p.name for p in folder.iterdir())
    code = main(["upsample", str(header), "-o", str(tmp_path / "out.nii.gz"), "--scale", "2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("arssr-rt: error:") and "outside" in err[0]
    assert not (tmp_path / "out.nii.gz").exists() and sorted(p.name for p in folder.iterdir()) == before


# ----- decompression bombs: inflated with a byte cap --------------------------------------------


def _gzip_of_zeros(megabytes: int) -> bytes:
    """gzip of ``megabytes`` MiB of zeros, built a MiB at a time (the bomb is ~1000x smaller)."""
    import zlib

    comp = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(1 << 20)
    return b"".join(comp.compress(zeros) for _ in range(megabytes)) + comp.flush()


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    import tracemalloc

    bomb = _gzip_of_zeros(256)  # 256 MiB inflated, ~250 KB on disk
    path = tmp_path / "bomb.nrrd"
    path.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 64 64 64\nencoding: gzip\n\n" + bomb)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="decompression bomb"):
            read_nrrd(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak Python allocation {peak / 2**20:.0f} MiB while refusing a 256 MiB bomb"


def test_gzip_data_longer_than_the_header_says_is_refused(tmp_path):
    data, affine = _fixture()
    _write_lps(tmp_path / "t1.nrrd", data, affine)
    raw = (tmp_path / "t1.nrrd").read_bytes()
    head, _, _ = raw.partition(b"\n\n")
    (tmp_path / "long.nrrd").write_bytes(head + b"\n\n" + gzip.compress(data.tobytes(order="F") + bytes(4096)))
    with pytest.raises(InputError, match="more than the 262,144 bytes"):
        read_nrrd(tmp_path / "long.nrrd")


def test_bzip2_nrrd_reads(tmp_path):
    data, affine = _fixture()
    _write_lps(tmp_path / "t1.nrrd", data, affine, encoding="bzip2")
    np.testing.assert_array_equal(read_nrrd(tmp_path / "t1.nrrd").data, data.astype(np.float32))


# ----- space units -------------------------------------------------------------------------------


def test_space_units_in_metres_give_the_mm_geometry(tmp_path):
    data, affine = _fixture()
    affine = _oblique(affine)
    metres = affine.copy()
    metres[:3] /= 1000.0
    _write_lps(tmp_path / "m.nrrd", data, metres, **{"space units": ["m", "m", "m"]})
    np.testing.assert_allclose(read_nrrd(tmp_path / "m.nrrd").affine, affine, atol=1e-9)
    microns = affine.copy()
    microns[:3] *= 1000.0
    _write_lps(tmp_path / "um.nrrd", data, microns, **{"space units": ["um", "um", "um"]})
    np.testing.assert_allclose(read_nrrd(tmp_path / "um.nrrd").affine, affine, atol=1e-6)


@pytest.mark.parametrize("units", [["furlong", "mm", "mm"], ["\u00b5m", "\u00b5m", "\u00b5m"]])
def test_unknown_or_non_ascii_space_units_are_refused(tmp_path, units):
    data, affine = _fixture()
    _write_lps(tmp_path / "u.nrrd", data, affine)
    text = (tmp_path / "u.nrrd").read_bytes()
    field = ("space units: " + " ".join(f'"{u}"' for u in units) + "\n").encode("utf-8")
    (tmp_path / "u.nrrd").write_bytes(text.replace(b"space origin", field + b"space origin", 1))
    with pytest.raises(InputError, match="units"):
        read_nrrd(tmp_path / "u.nrrd")


def _raw_nrrd(path: Path, data: np.ndarray, type_name: str, endian: str, **fields: str) -> Path:
    """A raw-encoded NRRD whose header says ``endian`` whatever byte order ``data`` is in."""
    lines = ["NRRD0004", f"type: {type_name}", "dimension: 3", f"sizes: {' '.join(map(str, data.shape))}",
             "encoding: raw", f"endian: {endian}", *(f"{k.replace('_', ' ')}: {v}" for k, v in fields.items())]
    path.write_bytes(("\n".join(lines) + "\n\n").encode() + data.tobytes(order="F"))
    return path


@pytest.mark.parametrize("dtype,type_name", [(">i2", "short"), (">u2", "ushort"), (">f4", "float"), (">i4", "int")])
def test_data_that_reads_as_an_image_only_in_the_other_byte_order_is_refused(dtype, type_name, tmp_path):
    """A header claiming little-endian over big-endian bytes would give a noise image that passes
    every other check; the same bytes declared big-endian read back exactly."""
    data, _ = _fixture()
    values = (data.astype(np.float64) * 4.0).astype(dtype)  # the fixture's 0-255 as 0-1020
    wrong = _raw_nrrd(tmp_path / "wrong.nrrd", values, type_name, "little")
    with pytest.raises(InputError, match="reads as an image in big-endian byte order, not in the declared little-endian"):
        read_nrrd(wrong)
    right = read_nrrd(_raw_nrrd(tmp_path / "right.nrrd", values, type_name, "big"))
    np.testing.assert_array_equal(right.data, values.astype(np.float32))


def test_noise_and_full_range_data_are_read_as_declared(tmp_path):
    """The byte-order check refuses only clear cases: data that looks alike both ways is kept."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 65535, (24, 20, 16)).astype("<u2")
    np.testing.assert_array_equal(read_nrrd(_raw_nrrd(tmp_path / "n.nrrd", noise, "ushort", "little")).data, noise)
    data, _ = _fixture()
    full = (data.astype(np.float64) * 257.0).astype("<u2")  # 0-65535: both byte readings vary alike
    np.testing.assert_array_equal(read_nrrd(_raw_nrrd(tmp_path / "f.nrrd", full, "ushort", "little")).data, full)


def test_negative_spacings_are_refused(tmp_path):
    """Readers disagree on a negative spacing (a flip, or a length): refuse rather than guess."""
    data, _ = _fixture()
    path = _raw_nrrd(tmp_path / "s.nrrd", data.astype("<i2"), "short", "little", spacings="1 -1 1")
    with pytest.raises(InputError, match="spacings .* are negative"):
        read_nrrd(path)
    plain = _raw_nrrd(tmp_path / "p.nrrd", data.astype("<i2"), "short", "little", spacings="1 1 2")
    assert np.allclose(np.diag(read_nrrd(plain).affine)[:3], [1, 1, 2])
