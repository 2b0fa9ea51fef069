"""Mutated input files found by fuzzing the readers: each must be refused by ``read_volume`` with
an InputError and by ``upsample --interp cubic`` and ``info`` with one ``arssr-rt: error:`` line,
a non-zero exit code and no output, never a traceback, a hang or a huge allocation.

The inputs are tiny files written here (a 16^3 block), mutated the way the fuzzing did.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from arssr_rt.errors import InputError
from arssr_rt.readers import read_volume

pytest.importorskip("nrrd")

BLOCK = (np.arange(16**3).reshape(16, 16, 16) % 97).astype(np.int16)
NRRD_FIELDS = {
    "type": "int16", "dimension": "3", "space": "left-posterior-superior", "sizes": "16 16 16",
    "space directions": "(1,0,0) (0,1.2,0) (0,0,2)", "kinds": "domain domain domain", "endian": "little",
    "encoding": "raw", "space origin": "(1,2,3)",
}


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""
    def expire(*_):
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def warnings_to_stderr():
    """Every warning printed to stderr, as a fresh process shows it (pytest would record it instead)."""
    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def nrrd_header(extra: tuple[str, ...] = (), **fields: str | None) -> bytes:
    """A text NRRD header: NRRD_FIELDS with ``fields`` replaced (None drops one), then ``extra`` lines."""
    merged = {**NRRD_FIELDS, **{k.replace("_", " "): v for k, v in fields.items()}}
    lines = ["NRRD0004", *(f"{k}: {v}" for k, v in merged.items() if v is not None), *extra]
    return ("\n".join(lines) + "\n\n").encode()


def assert_refused(cli, path: Path, match: str) -> None:
    """read_volume, ``upsample --interp cubic`` and ``info`` all refuse ``path`` in one line."""
    with deadline(20):
        with pytest.raises(InputError, match=match) as caught:
            read_volume(path)
        assert "\n" not in str(caught.value)
        out = path.parent / "out" / "sr.nii.gz"
        out.parent.mkdir(exist_ok=True)
        before = sorted(os.listdir(path.parent))
        for argv in (("upsample", path, "-o", out, "--scale", "2", "--interp", "cubic"), ("info", path)):
            code, err = cli(*argv)
            lines = err.strip().splitlines()
            assert code != 0, f"{argv[0]} exited 0"
            assert len(lines) == 1 and lines[0].startswith("arssr-rt: error: "), err
            assert re.search(match, lines[0]), lines[0]
            assert not out.exists() and os.listdir(out.parent) == []
        assert sorted(os.listdir(path.parent)) == before


# ----- NRRD -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, blob, match",
    [
        ("empty", b"", "not a valid NRRD"),
        ("empty_origin", nrrd_header(space_origin="") + BLOCK.tobytes(order="F"), "not a valid NRRD"),
        ("cut_in_origin", nrrd_header()[: nrrd_header().index(b"space origin") + 15], "not a valid NRRD"),
        ("nul_in_magic", b"NRRD\x00004\n" + nrrd_header()[9:] + BLOCK.tobytes(order="F"), "not a valid NRRD"),
        ("two_spacings", nrrd_header(space_directions=None, space_origin=None, space=None, extra=("spacings: 1 1",))
         + BLOCK.tobytes(order="F"), "spacings"),
    ],
)
def test_nrrd_header_the_parser_chokes_on_is_one_line(name, blob, match, tmp_path, cli):
    path = tmp_path / f"{name}.nrrd"
    path.write_bytes(blob)
    assert_refused(cli, path, match)


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr"])
def test_nrrd_named_fifo_is_refused_without_blocking(suffix, tmp_path, cli):
    path = tmp_path / f"pipe{suffix}"
    os.mkfifo(path)  # opening it for reading would wait for a writer forever
    assert_refused(cli, path, "not a regular file")


def test_nrrd_line_skip_past_the_end_is_refused_at_once(tmp_path, cli):
    path = tmp_path / "skip.nrrd"
    path.write_bytes(nrrd_header(extra=("line skip: 99999999",)) + BLOCK.tobytes(order="F"))
    assert_refused(cli, path, "line skip")


@pytest.mark.parametrize("encoding, compress", [("gzip", "gzip"), ("bzip2", "bz2")])
def test_nrrd_huge_byte_skip_on_compressed_data_is_refused_without_allocating_it(encoding, compress, tmp_path, cli):
    import importlib

    data = importlib.import_module(compress).compress(BLOCK.tobytes(order="F"))
    path = tmp_path / "skip.nrrd"
    path.write_bytes(nrrd_header(encoding=encoding, extra=("byte skip: 99999999999",)) + data)
    assert_refused(cli, path, "byte skip")


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"sizes": "99999999999999999999 16 16"}, "longer than"),  # pynrrd: RuntimeWarning, invalid value in cast
        ({"space_directions": "(1e300,0,0) (0,1e300,0) (0,0,1e300)"}, "affine"),  # numpy: overflow in norm
    ],
)
def test_nrrd_numeric_warnings_do_not_add_stderr_lines(fields, match, tmp_path, cli):
    path = tmp_path / "loud.nrrd"
    path.write_bytes(nrrd_header(**fields) + BLOCK.tobytes(order="F"))
    with warnings_to_stderr():
        assert_refused(cli, path, match)


@pytest.mark.parametrize(
    "fields, match",
    [
        # pynrrd reads sizes as floats cast to int: 16.5 became 16, so a wrong image was read
        ({"sizes": "16.5 16 16"}, "not all whole numbers"),
        ({"sizes": "16 -16 16"}, "not all whole numbers"),
        # 1e20 overflowed to a negative size and the message showed a shape the file never had
        ({"sizes": "100000000000000000000 16 16"}, "longer than 1048576"),
        ({"kinds": "domain domain"}, "kinds .* name 2 axes, the sizes 3"),
        ({"kinds": "domain domain domain domain"}, "name 4 axes"),
        ({"dimension": "4"}, "dimension 4 does not match its 3 sizes"),
    ],
)
def test_nrrd_sizes_and_kinds_are_checked_as_written(fields, match, tmp_path, cli):
    path = tmp_path / "sizes.nrrd"
    path.write_bytes(nrrd_header(**fields) + BLOCK.tobytes(order="F"))
    with warnings_to_stderr():
        assert_refused(cli, path, match)


def test_nrrd_key_value_pairs_and_comments_are_not_taken_for_fields(tmp_path):
    """Free-text lines that look like ``sizes:`` must not trip the written-field checks."""
    path = tmp_path / "kv.nrrd"
    path.write_bytes(nrrd_header(extra=("# sizes: 1.5 2", "note:=sizes: 7.5 kinds: x")) + BLOCK.tobytes(order="F"))
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data, BLOCK.astype(np.float32))


def test_nrrd_origin_beyond_float32_is_refused(tmp_path, cli):
    """A 1e308 mm origin reads as a finite float64 affine, but every output header is float32:
    the NIfTI written from it had an Inf sform (and a RuntimeWarning on stderr)."""
    path = tmp_path / "far.nrrd"
    path.write_bytes(nrrd_header(space_origin="(1e308,1e308,1e308)") + BLOCK.tobytes(order="F"))
    with warnings_to_stderr():
        assert_refused(cli, path, "affine")


# ----- DICOM ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory) -> Path:
    """A real 16x16x8 MR series written by arssr-rt's own DICOM writer (copied per test)."""
    pydicom = pytest.importorskip("pydicom")
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.io_dicom import write_dicom_series
    from arssr_rt.volume import Volume

    data = BLOCK[:, :, :8].astype(np.float32) * 3
    affine = np.diag([0.9, 1.1, 2.0, 1.0])
    volume = Volume(data=data, affine=affine, source_dtype=np.dtype(np.int16))
    ref = pydicom.Dataset()
    ref.PatientName, ref.PatientID, ref.Modality = "Fuzz^Test", "F1", "MR"
    ref.StudyInstanceUID, ref.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ref.FrameOfReferenceUID = pydicom.uid.generate_uid()
    volume.meta["dicom_reference"] = ref
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_dicom_series(folder, data, plan_output_grid(data.shape, affine, shape=data.shape), volume)
    return folder


def edited_series(source: Path, folder: Path, edit, which: slice = slice(3, 4)) -> Path:
    """A copy of ``source`` with ``edit(dataset)`` applied to the slices ``which`` selects (unvalidated writes)."""
    import shutil

    import pydicom

    shutil.copytree(source, folder)
    mode = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        for f in sorted(folder.iterdir())[which]:
            ds = pydicom.dcmread(f)
            with warnings.catch_warnings():  # pydicom warns about the invalid values written on purpose
                warnings.simplefilter("ignore")
                edit(ds)
            ds.save_as(f)
    finally:
        pydicom.config.settings.writing_validation_mode = mode
    return folder


@pytest.mark.parametrize(
    "tag, value, match",
    [
        ("PixelSpacing", ["1", "1", "1"], "PixelSpacing"),  # one slice: broadcast ValueError in the mixed-series check
        ("ImageOrientationPatient", ["1", "0", "0", "0", "1"], "ImageOrientationPatient"),
        ("ImagePositionPatient", ["1", "2"], "ImagePositionPatient"),  # inhomogeneous array
        ("ImagePositionPatient", [], "ImagePositionPatient"),
        ("PixelData", b"", "pixel data"),  # pydicom: TypeError
    ],
)
def test_dicom_slice_with_a_malformed_tag_is_one_line(tag, value, match, dicom_series, tmp_path, cli):
    folder = edited_series(dicom_series, tmp_path / "series", lambda ds: setattr(ds, tag, value))
    assert_refused(cli, folder, match)


@pytest.mark.parametrize(
    "element",
    [
        b"\x02\x00\x10\x00UI",  # (0002,0010) TransferSyntaxUID: dcmread itself raises
        b"\x08\x00\x18\x00UI",  # (0008,0018) SOPInstanceUID: raised only when the value is first used
    ],
)
def test_dicom_slice_with_an_unknown_value_representation_is_one_line(element, dicom_series, tmp_path, cli):
    """One flipped byte in an explicit VR ('UI' -> 'Ud'): pydicom raises NotImplementedError."""
    folder = edited_series(dicom_series, tmp_path / "series", lambda ds: None, slice(0, 0))
    victim = sorted(folder.iterdir())[3]
    blob = bytearray(victim.read_bytes())
    blob[blob.index(element) + 5] = ord("d")
    victim.write_bytes(bytes(blob))
    assert_refused(cli, folder, "not a readable DICOM file")


@pytest.mark.parametrize("tag, vr", [(0x00281053, "DS"), (0x00280008, "IS")])  # RescaleSlope, NumberOfFrames
def test_dicom_slice_with_a_non_numeric_number_is_one_line(tag, vr, dicom_series, tmp_path, cli):
    """An IS/DS value "abc" (a raw element: pydicom will not write it otherwise) reads as text."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    raw = RawDataElement(Tag(tag), vr, 4, b"abc ", 0, False, True)
    folder = edited_series(dicom_series, tmp_path / "series", lambda ds: ds.__setitem__(tag, raw))
    assert_refused(cli, folder, "'abc' is not a number")


@pytest.mark.parametrize(
    "tag, value, match",
    [
        ("RescaleSlope", "inf", "NaN/Inf"),  # pydicom warns: invalid DS
        ("Rows", 8, "pixel data has shape"),  # pydicom warns: excess frames
    ],
)
def test_dicom_library_warnings_do_not_add_stderr_lines(tag, value, match, dicom_series, tmp_path, cli):
    folder = edited_series(dicom_series, tmp_path / "series", lambda ds: setattr(ds, tag, value), slice(None))
    with warnings_to_stderr():
        assert_refused(cli, folder, match)


# ----- any format: names are data too -----------------------------------------------------------


def test_a_newline_in_the_input_name_stays_on_the_one_error_line(tmp_path, cli):
    """A file (or a DICOM slice) name is written by whoever made the input; its message names it."""
    path = tmp_path / "evil\nname.nii"
    path.write_text("not an image\n")
    out = tmp_path / "sr.nii.gz"
    for argv in (("upsample", path, "-o", out, "--scale", "2", "--interp", "cubic"), ("info", path)):
        code, err = cli(*argv)
        assert code != 0 and err.count("\n") == 1 and err.startswith("arssr-rt: error: "), err
        assert "evil\\nname.nii: is not a NIfTI file" in err
    assert sorted(os.listdir(tmp_path)) == [path.name]


# ----- NIfTI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("volumes, suffix", [(1, ".nii"), (3, ".nii"), (1, ".nii.gz"), (3, ".nii.gz")])
def test_nifti_short_by_less_than_its_header_is_refused_before_any_work(volumes, suffix, tmp_path, cli):
    """nibabel's loaded header says vox_offset 0 (the proxy keeps the real 352): the size check
    missed up to 352 missing bytes, and a 4-D series failed only at its last volume, mid-run
    (after the progress lines)."""
    import nibabel as nib

    data = np.stack([BLOCK + t for t in range(volumes)], axis=-1) if volumes > 1 else BLOCK
    full = tmp_path / "full.nii"
    nib.Nifti1Image(data, np.eye(4)).to_filename(full)
    path = tmp_path / f"short{suffix}"
    blob = full.read_bytes()[:-100]
    path.write_bytes(gzip.compress(blob) if suffix.endswith(".gz") else blob)  # .gz: a valid but short stream
    full.unlink()
    if volumes == 1:
        assert_refused(cli, path, "is truncated: the header needs")
        return
    out = tmp_path / "sr.nii.gz"  # a series: upsample reads it volume by volume (info and read_volume refuse 4-D)
    code, err = cli("upsample", path, "-o", out, "--scale", "2", "--interp", "cubic")
    assert code != 0 and err.count("\n") == 1 and err.startswith("arssr-rt: error: "), err
    assert "is truncated: the header needs" in err and sorted(os.listdir(tmp_path)) == [path.name]


@pytest.mark.parametrize("datatype, bitpix", [(2, 16), (16, 16), (64, 16), (4, 8)])
def test_nifti_datatype_that_disagrees_with_bitpix_is_refused(datatype, bitpix, tmp_path, cli):
    """An int16 file whose datatype byte was flipped to uint8 (2) still has enough
    bytes, so it read as a wrong image; datatype and bitpix must agree (a flip that keeps the
    width, int16 to uint16, cannot be told from the header)."""
    import nibabel as nib

    good = tmp_path / "good.nii"
    nib.Nifti1Image(BLOCK, np.eye(4)).to_filename(good)
    blob = bytearray(good.read_bytes())
    good.unlink()
    blob[70:72] = np.int16(datatype).tobytes()  # datatype (int16 at offset 70)
    blob[72:74] = np.int16(bitpix).tobytes()  # bitpix (offset 72)
    path = tmp_path / "flipped.nii"
    path.write_bytes(bytes(blob))
    assert_refused(cli, path, f"datatype {datatype} .* bitpix says {bitpix}")


def test_nifti_with_matching_datatype_and_bitpix_still_reads(tmp_path):
    import nibabel as nib

    path = tmp_path / "good.nii"
    nib.Nifti1Image(BLOCK, np.eye(4)).to_filename(path)
    np.testing.assert_array_equal(read_volume(path).data, BLOCK.astype(np.float32))
