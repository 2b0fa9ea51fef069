"""One test per bad input: the reader refuses it with a one-line InputError, and the CLI turns it
into exactly one stderr line, a non-zero exit code, no traceback and no file left behind.

Broken files are made from the real fixture (corrupted, truncated, reshaped, poisoned).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
from conftest import FIXTURE_PATH, REPO_ROOT, listing, write_raw_nifti

from arssr_rt import nifti_io
from arssr_rt.errors import InputError
from arssr_rt.nifti_io import load_volume

Colin = tuple[np.ndarray, np.ndarray]  # uint8 data, affine


@pytest.fixture(scope="module")
def colin() -> Colin:
    img = nib.load(FIXTURE_PATH)
    return np.asarray(img.dataobj), img.affine


def small(colin: Colin, shape=(16, 16, 16)) -> np.ndarray:
    """A real-intensity block of the fixture (keeps the broken files tiny)."""
    data = colin[0]
    return np.ascontiguousarray(data[24 : 24 + shape[0], 24 : 24 + shape[1], 24 : 24 + shape[2]])


# ----- the bad inputs: name -> factory(folder, colin) -> (path, what the message must say) ---


def missing(folder: Path, colin: Colin):
    return folder / "absent.nii.gz", "no such file"


def directory(folder: Path, colin: Colin):
    path = folder / "a_folder.nii.gz"
    path.mkdir()
    return path, r"director|DICOM|no .*files|not"


def text_as_nii_gz(folder: Path, colin: Colin):
    path = folder / "notes.nii.gz"
    path.write_text("subject,age\n" + "s01,34\n" * 100)
    return path, "NIfTI"


def text_as_nii(folder: Path, colin: Colin):
    path = folder / "notes.nii"
    path.write_text("subject,age\n" + "s01,34\n" * 100)
    return path, "NIfTI"


def other_image_format(folder: Path, colin: Colin):
    """An MGH file named .nii (MGZ/MGH by their own suffix are supported: tests/test_mgh.py)."""
    path = folder / "brain.nii"
    nib.MGHImage(small(colin).astype(np.float32), colin[1]).to_filename(folder / "brain.mgh")
    (folder / "brain.mgh").rename(path)
    return path, "is not a NIfTI file"


def corrupt_gzip(folder: Path, colin: Colin):
    """One flipped byte deep in the stream: nibabel alone would load wrong voxels silently."""
    blob = bytearray(FIXTURE_PATH.read_bytes())
    blob[int(len(blob) * 0.85)] ^= 0xFF
    path = folder / "corrupt.nii.gz"
    path.write_bytes(bytes(blob))
    return path, "gzip|corrupt|truncated"


def truncated_gzip(folder: Path, colin: Colin):
    blob = FIXTURE_PATH.read_bytes()
    path = folder / "truncated.nii.gz"
    path.write_bytes(blob[: len(blob) // 2])
    return path, "truncated"


def truncated_nii(folder: Path, colin: Colin):
    full = folder / "full.nii"
    write_raw_nifti(full, colin[0], affine=colin[1])
    path = folder / "truncated.nii"
    path.write_bytes(full.read_bytes()[: 352 + colin[0].size // 3])
    full.unlink()
    return path, "truncated"


def zero_bytes(folder: Path, colin: Colin):
    path = folder / "empty.nii.gz"
    path.touch()
    return path, "empty"


def two_d(folder: Path, colin: Colin):
    path = folder / "slice.nii.gz"
    nib.Nifti1Image(colin[0][:, :, 32], colin[1]).to_filename(path)
    return path, "2-D"


def five_d(folder: Path, colin: Colin):
    block = small(colin)
    path = folder / "vectors.nii.gz"
    nib.Nifti1Image(np.stack([block, block, block], axis=-1)[:, :, :, None, :], colin[1]).to_filename(path)
    return path, "5-D"


def empty_fourth_axis(folder: Path, colin: Colin):
    """dim[0] = 4 with dim[4] = 0: a series of no volumes (the header edited as bytes)."""
    path = folder / "no_volumes.nii"
    nib.Nifti1Image(small(colin), colin[1]).to_filename(path)
    raw = bytearray(path.read_bytes())
    dims = np.frombuffer(bytes(raw[40:56]), dtype="<i2").copy()
    dims[0], dims[4] = 4, 0
    raw[40:56] = dims.tobytes()
    path.write_bytes(bytes(raw))
    return path, "holds no volume"


def nan_voxels(folder: Path, colin: Colin):
    data = small(colin).astype(np.float32)
    data[3, 4, 5] = np.nan
    path = folder / "nan.nii.gz"
    nib.Nifti1Image(data, colin[1]).to_filename(path)
    return path, "NaN"


def inf_voxels(folder: Path, colin: Colin):
    data = small(colin).astype(np.float32)
    data[3, 4, 5] = -np.inf
    path = folder / "inf.nii.gz"
    nib.Nifti1Image(data, colin[1]).to_filename(path)
    return path, "Inf"


def constant(folder: Path, colin: Colin):
    path = folder / "constant.nii.gz"
    nib.Nifti1Image(np.full((16, 16, 16), 77, np.uint8), colin[1]).to_filename(path)
    return path, "constant"


def axis_of_length_one(folder: Path, colin: Colin):
    path = folder / "one_slice.nii.gz"
    nib.Nifti1Image(colin[0][:, :, 32:33], colin[1]).to_filename(path)
    return path, "length 1"


def empty_axis(folder: Path, colin: Colin):
    path = write_raw_nifti(folder / "empty_axis.nii", shape=(16, 0, 16), dtype=np.uint8)
    return path, "empty axis"


def absurd_header_size(folder: Path, colin: Colin):
    """A header claiming 30000^3 float32 (98 TiB) over 4 KiB of data: refused before reading."""
    path = write_raw_nifti(folder / "absurd.nii.gz", shape=(30000, 30000, 30000), dtype=np.float32, data_bytes=b"\x00" * 4096)
    return path, "over the input limit"


def _bad_pixdim(folder: Path, colin: Colin, name: str, pixdim):
    # geometry from the qform (sform code 0), so pixdim is the voxel size readers use
    return write_raw_nifti(folder / name, small(colin), affine=np.eye(4), pixdim=pixdim, qform_code=1, sform_code=0), "voxel size"


def zero_pixdim(folder: Path, colin: Colin):
    return _bad_pixdim(folder, colin, "zero_pixdim.nii.gz", (1.0, 0.0, 1.0))


def negative_pixdim(folder: Path, colin: Colin):
    return _bad_pixdim(folder, colin, "negative_pixdim.nii.gz", (1.0, 1.0, -2.0))


def nan_pixdim(folder: Path, colin: Colin):
    return _bad_pixdim(folder, colin, "nan_pixdim.nii.gz", (np.nan, 1.0, 1.0))


def singular_affine(folder: Path, colin: Colin):
    affine = colin[1].copy()
    affine[:3, 2] = affine[:3, 0]  # k runs along i: the grid collapses to a plane
    path = write_raw_nifti(folder / "singular.nii.gz", small(colin), affine=affine, qform_code=0, sform_code=1)
    return path, "singular"


def non_finite_affine(folder: Path, colin: Colin):
    affine = colin[1].copy()
    affine[1, 3] = np.inf
    path = write_raw_nifti(folder / "inf_affine.nii.gz", small(colin), affine=affine, qform_code=0, sform_code=1)
    return path, "non-finite"


def complex_voxels(folder: Path, colin: Colin):
    path = folder / "complex.nii.gz"
    nib.Nifti1Image(small(colin).astype(np.complex64), colin[1]).to_filename(path)
    return path, "complex"


def rgb_voxels(folder: Path, colin: Colin):
    block = small(colin)
    rgb = np.zeros(block.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"], rgb["B"] = block, block, block
    path = folder / "rgb.nii.gz"
    nib.Nifti1Image(rgb, colin[1]).to_filename(path)
    return path, "RGB"


def _broken_qform(folder: Path, colin: Colin, name: str, quatern_bcd) -> tuple[Path, str]:
    """A valid sform (code 1) over a qform (code 1) whose quaternion nibabel cannot turn into a
    rotation: the image reads (the sform wins), and the writer used to crash after the run."""
    path = write_raw_nifti(folder / name, small(colin), affine=colin[1])
    blob = bytearray(path.read_bytes())
    blob[256:268] = np.asarray(quatern_bcd, dtype="<f4").tobytes()  # quatern_b, _c, _d
    path.write_bytes(bytes(blob))
    return path, "qform .*broken"


def nan_quaternion(folder: Path, colin: Colin):
    return _broken_qform(folder, colin, "nan_quaternion.nii", (np.nan, 0.0, 0.0))


def out_of_range_quaternion(folder: Path, colin: Colin):
    return _broken_qform(folder, colin, "big_quaternion.nii", (2.0, 2.0, 2.0))


BAD_FILES: dict[str, Callable[[Path, Colin], tuple[Path, str]]] = {
    f.__name__: f
    for f in (
        missing, text_as_nii_gz, text_as_nii, other_image_format, corrupt_gzip, truncated_gzip,
        truncated_nii, zero_bytes, two_d, five_d, empty_fourth_axis, nan_voxels, inf_voxels, constant,
        axis_of_length_one, empty_axis, absurd_header_size, zero_pixdim, negative_pixdim, nan_pixdim,
        singular_affine, non_finite_affine, complex_voxels, rgb_voxels, nan_quaternion, out_of_range_quaternion,
    )
}


# ----- reader level: each bad file is an InputError naming the file ------------------------


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_load_volume_refuses(case, tmp_path, colin):
    path, reason = BAD_FILES[case](tmp_path, colin)
    before = listing(tmp_path)
    with pytest.raises(InputError, match=reason) as info:
        load_volume(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:")
    assert listing(tmp_path) == before


def test_load_volume_refuses_directory(tmp_path, colin):
    path, _ = directory(tmp_path, colin)
    with pytest.raises(InputError, match="is a directory"):
        load_volume(path)


def test_absurd_header_is_refused_before_reading(tmp_path, colin, monkeypatch):
    """The size check runs on the header alone: the data is never touched."""
    path, _ = absurd_header_size(tmp_path, colin)

    def no_reading(*args, **kwargs):
        raise AssertionError("data was read")

    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", no_reading)
    monkeypatch.setattr(nifti_io, "_verify_gzip_stream", no_reading)
    with pytest.raises(InputError, match="over the input limit"):
        load_volume(path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files with mode 000; see the simulated test")
def test_load_volume_refuses_unreadable(tmp_path):
    path = tmp_path / "locked.nii.gz"
    path.write_bytes(FIXTURE_PATH.read_bytes())
    path.chmod(0)
    with pytest.raises(InputError, match="cannot be read"):
        load_volume(path)


def _permission_denied(*args, **kwargs):
    raise PermissionError(13, "Permission denied")


def test_load_volume_refuses_unreadable_simulated(tmp_path, monkeypatch):
    """Runs as root too: the reader's first open() fails as it would on a mode-000 file."""
    path = tmp_path / "locked.nii.gz"
    path.write_bytes(FIXTURE_PATH.read_bytes())
    monkeypatch.setattr(nifti_io, "open", _permission_denied, raising=False)
    with pytest.raises(InputError, match="cannot be read .Permission denied"):
        load_volume(path)


# ----- CLI level ------------------------------------------------------------------------------


@pytest.fixture
def cli(tiny_bundle):
    """Run ``arssr-rt`` in-process; returns (exit code, stderr). Skips until the command exists."""
    pytest.importorskip("arssr_rt.commands.upsample", reason="upsample command not written yet")
    from arssr_rt.cli import main

    def run(argv: list[str], capsys) -> tuple[int, str]:
        code = main(argv)
        return code, capsys.readouterr().err

    return run


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    return in_dir, out_dir


def assert_clean_failure(code: int, err: str, reason: str | None = None) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("arssr-rt: error:"), err
    if reason:
        import re

        assert re.search(reason, lines[0]), lines[0]


def upsample_args(path: Path, out: Path, bundle: Path, *extra: str, scale: str = "2") -> list[str]:
    return ["upsample", str(path), "-o", str(out), "--scale", scale, "--model", str(bundle), "--quiet", *extra]


@pytest.mark.parametrize("case", sorted(BAD_FILES) + ["directory"])
def test_cli_refuses_bad_input(case, dirs, colin, cli, tiny_bundle, capsys):
    in_dir, out_dir = dirs
    factory = BAD_FILES.get(case, directory)
    path, reason = factory(in_dir, colin)
    before = listing(in_dir)
    code, err = cli(upsample_args(path, out_dir / "result.nii.gz", tiny_bundle), capsys)
    assert_clean_failure(code, err, None if case == "directory" else reason)
    assert listing(out_dir) == []
    assert listing(in_dir) == before


def test_cli_refuses_unreadable_simulated(dirs, cli, tiny_bundle, capsys, monkeypatch):
    in_dir, out_dir = dirs
    path = in_dir / "locked.nii.gz"
    path.write_bytes(FIXTURE_PATH.read_bytes())
    monkeypatch.setattr(nifti_io, "open", _permission_denied, raising=False)
    code, err = cli(upsample_args(path, out_dir / "result.nii.gz", tiny_bundle), capsys)
    assert_clean_failure(code, err, "Permission denied")
    assert listing(out_dir) == []


@pytest.fixture
def good_input(dirs, colin) -> Path:
    """A small real block of the fixture: valid, so only the arguments can be wrong."""
    path = dirs[0] / "block.nii.gz"
    nib.Nifti1Image(small(colin), colin[1]).to_filename(path)
    return path


@pytest.mark.parametrize("scale,reason", [("0", "--scale"), ("-1", "--scale"), ("nan", "--scale"), ("2,2", "--scale")])
def test_cli_refuses_bad_scale(scale, reason, dirs, good_input, cli, tiny_bundle, capsys):
    out_dir = dirs[1]
    code, err = cli(upsample_args(good_input, out_dir / "result.nii.gz", tiny_bundle, scale=scale), capsys)
    assert_clean_failure(code, err, reason)
    assert listing(out_dir) == []


def test_cli_refuses_output_over_voxel_limit(dirs, good_input, cli, tiny_bundle, capsys):
    out_dir = dirs[1]
    argv = upsample_args(good_input, out_dir / "result.nii.gz", tiny_bundle, "--max-output-voxels", "1000")
    code, err = cli(argv, capsys)
    assert_clean_failure(code, err, "1,?000|limit|max-output-voxels")
    assert listing(out_dir) == []


def test_cli_refuses_existing_output_without_force(dirs, good_input, cli, tiny_bundle, capsys):
    out_dir = dirs[1]
    target = out_dir / "result.nii.gz"
    target.write_bytes(b"precious")
    code, err = cli(upsample_args(good_input, target, tiny_bundle), capsys)
    assert_clean_failure(code, err, "already exists")
    assert target.read_bytes() == b"precious"
    assert listing(out_dir) == ["result.nii.gz"]


def test_cli_refuses_missing_output_folder(dirs, good_input, cli, tiny_bundle, capsys):
    out_dir = dirs[1]
    code, err = cli(upsample_args(good_input, out_dir / "absent" / "result.nii.gz", tiny_bundle), capsys)
    assert_clean_failure(code, err, "does not exist")
    assert listing(out_dir) == []


def test_cli_refuses_bad_output_suffix(dirs, good_input, cli, tiny_bundle, capsys):
    out_dir = dirs[1]
    code, err = cli(upsample_args(good_input, out_dir / "result.png", tiny_bundle), capsys)
    assert_clean_failure(code, err, r"\.nii")
    assert listing(out_dir) == []


def test_cli_refuses_unknown_dtype(dirs, good_input, cli, tiny_bundle, capsys):
    out_dir = dirs[1]
    code, err = cli(upsample_args(good_input, out_dir / "result.nii.gz", tiny_bundle, "--dtype", "complex64"), capsys)
    assert_clean_failure(code, err, "--dtype")
    assert listing(out_dir) == []


@pytest.mark.parametrize("flag,value", [("--threads", "-1"), ("--threads", "0"), ("--device", "-1")])
def test_cli_refuses_bad_threads_or_device(flag, value, dirs, good_input, cli, tiny_bundle, capsys):
    out_dir = dirs[1]
    code, err = cli(upsample_args(good_input, out_dir / "result.nii.gz", tiny_bundle, flag, value), capsys)
    assert_clean_failure(code, err, f"{flag} must be")
    assert listing(out_dir) == []


# ----- the real entry point, in a fresh interpreter --------------------------------------------


def valid_block(folder: Path, colin: Colin):
    path = folder / "block.nii.gz"
    nib.Nifti1Image(small(colin), colin[1]).to_filename(path)
    return path, "--scale"


@pytest.mark.parametrize("case,scale", [("missing", "2"), ("nan_voxels", "2"), ("corrupt_gzip", "2"), ("valid_block", "nan")])
def test_python_m_arssr_rt_refuses(case, scale, dirs, colin, cli, tiny_bundle):
    in_dir, out_dir = dirs
    path, reason = BAD_FILES.get(case, valid_block)(in_dir, colin)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "arssr_rt", *upsample_args(path, out_dir / "result.nii.gz", tiny_bundle, scale=scale)],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT,
    )
    assert_clean_failure(proc.returncode, proc.stderr, reason)
    assert proc.stdout == ""
    assert listing(out_dir) == []


def test_cli_control_valid_input_writes_only_the_output(dirs, good_input, cli, tiny_bundle, capsys):
    """The control for every test above: the same command on a valid input succeeds and leaves
    exactly one file, so the refusals come from the bad inputs, not from the set-up."""
    out_dir = dirs[1]
    code, err = cli(upsample_args(good_input, out_dir / "result.nii.gz", tiny_bundle), capsys)
    assert code == 0, err
    assert listing(out_dir) == ["result.nii.gz"]
    out = nib.load(out_dir / "result.nii.gz")
    assert out.shape == (32, 32, 32)
    assert out.get_data_dtype() == np.uint8


# ----- failures of the machine, not the input --------------------------------------------------


def test_full_disk_for_the_file_backed_output_is_a_clear_error(tmp_path, monkeypatch):
    """A sparse mmap on a full disk would die of SIGBUS mid-run; the space is reserved up front."""
    import errno

    from arssr_rt import memory
    from arssr_rt.errors import OutputError

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv(memory.ENV_TMPDIR, str(tmp_path))
    monkeypatch.setattr(memory.os, "posix_fallocate", no_space)
    with pytest.raises(OutputError, match="not enough free space .* ARSSR_RT_TMPDIR"):
        memory.output_buffer((64, 64, 64), in_memory=False)
    assert listing(tmp_path) == []  # the temporary file is unlinked at once


def test_file_backed_output_reserves_its_blocks(tmp_path, monkeypatch):
    from arssr_rt import memory

    monkeypatch.setenv(memory.ENV_TMPDIR, str(tmp_path))
    calls = []
    real = memory.os.posix_fallocate
    monkeypatch.setattr(memory.os, "posix_fallocate", lambda fd, off, n: (calls.append(n), real(fd, off, n)))
    buf = memory.output_buffer((8, 9, 10), in_memory=False)
    buf[:] = 1.5
    assert calls == [4 * 8 * 9 * 10] and float(buf.sum()) == 1.5 * 720


@pytest.mark.parametrize("error,reason", [
    (OSError(28, "No space left on device", "/data/out.nii.gz"), r"No space left on device: /data/out\.nii\.gz"),
    (MemoryError(), "out of memory"),
])
def test_cli_reports_machine_failures_in_one_line(error, reason, dirs, good_input, cli, tiny_bundle, capsys, monkeypatch):
    from arssr_rt import pipeline

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(pipeline.VolumeEngine, "infer", fail)
    code, err = cli(upsample_args(good_input, dirs[1] / "result.nii.gz", tiny_bundle), capsys)
    assert_clean_failure(code, err, reason)
    assert listing(dirs[1]) == []


def test_cli_reports_a_bug_in_one_line_and_debug_shows_the_traceback(dirs, good_input, cli, tiny_bundle, capsys, monkeypatch):
    from arssr_rt import pipeline

    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(pipeline.VolumeEngine, "infer", bug)
    code, err = cli(upsample_args(good_input, dirs[1] / "result.nii.gz", tiny_bundle), capsys)
    assert code == 70 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("arssr-rt: internal error: KeyError") and "ARSSR_RT_DEBUG" in err
    monkeypatch.setenv("ARSSR_RT_DEBUG", "1")
    with pytest.raises(KeyError):
        cli(upsample_args(good_input, dirs[1] / "result.nii.gz", tiny_bundle), capsys)
    assert listing(dirs[1]) == []
