"""Provenance in the output files: NIfTI descrip and the MGH command-line tag say which tool,
version, model (or classical resampling) and size request made them."""

from __future__ import annotations

import gzip
import struct

import nibabel as nib
import numpy as np
import pytest

from arssr_rt import __version__
from arssr_rt.cli import main
from arssr_rt.provenance import DESCRIP_BYTES, describe, with_source
from arssr_rt.readers import read_volume

from conftest import FIXTURE_PATH


def descrip_of(path) -> str:
    return nib.load(path).header["descrip"].tobytes().split(b"\0", 1)[0].decode("ascii")


def mgh_tags(path) -> list[tuple[int, bytes]]:
    """The (tag, payload) records after an MGH file's footer, parsed as FreeSurfer's tags.cpp does."""
    opener = gzip.open if str(path).endswith(".mgz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    img = nib.load(path)
    offset = int(img.header.get_data_offset()) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize + 5 * 4  # tr, flip, te, ti, fov
    tags = []
    while offset + 4 <= len(raw):
        (tag,) = struct.unpack(">i", raw[offset:offset + 4])
        (length,) = struct.unpack(">q", raw[offset + 4:offset + 12])
        tags.append((tag, raw[offset + 12:offset + 12 + length]))
        offset += 12 + length
    return tags


def test_describe_fits_80_bytes_and_names_what_was_done():
    assert describe("x2", "default") == f"arssr-rt {__version__} default x2 model"
    assert describe("0.5mm", None, "cubic") == f"arssr-rt {__version__} 0.5mm interp cubic"
    long = describe("256x256x100", "m" * 200)
    assert len(long.encode()) == DESCRIP_BYTES and long.endswith(" 256x256x100 model") and long.startswith("arssr-rt ")
    # the input's own note is kept only when all of it fits
    assert with_source("arssr-rt 0.1.0 default x2 model", b"TE=2.9;Time=101010\0\0") == "arssr-rt 0.1.0 default x2 model; TE=2.9;Time=101010"
    assert with_source("arssr-rt 0.1.0 default x2 model", b"x" * 60) == "arssr-rt 0.1.0 default x2 model"


def test_interp_output_descrip(tmp_path):
    out = tmp_path / "t1_x2.nii.gz"
    assert main(["upsample", str(FIXTURE_PATH), "-o", str(out), "--scale", "2", "--interp", "cubic", "-q"]) == 0
    assert descrip_of(out) == f"arssr-rt {__version__} x2 interp cubic"
    # everything else of the header is what it was: same grid as before this change
    assert nib.load(out).header.get_zooms()[:3] == pytest.approx((0.5, 0.5, 0.5))


def test_model_output_descrip_keeps_the_inputs_note(tmp_path, tiny_bundle):
    img = nib.load(FIXTURE_PATH)
    img.header["descrip"] = b"TE=2.9;Time=101010"
    src = tmp_path / "t1.nii.gz"
    nib.save(img, src)
    out = tmp_path / "t1_sr.nii.gz"
    assert main(["upsample", str(src), "-o", str(out), "--voxel-size", "0.8", "--model", str(tiny_bundle), "--threads", "1", "-q"]) == 0
    assert descrip_of(out) == f"arssr-rt {__version__} tiny-random-test 0.8mm model; TE=2.9;Time=101010"


@pytest.mark.parametrize("suffix", [".mgz", ".mgh"])
def test_mgh_output_carries_a_freesurfer_cmdline_tag(tmp_path, suffix):
    out = tmp_path / f"t1_x2{suffix}"
    assert main(["upsample", str(FIXTURE_PATH), "-o", str(out), "--scale", "2", "--interp", "linear", "-q"]) == 0
    assert mgh_tags(out) == [(3, f"arssr-rt {__version__} x2 interp linear".encode() + b"\0")]
    # nibabel and our own (size-checked) reader still read it, voxels and geometry intact
    volume = read_volume(out)
    assert volume.shape == (128, 128, 128)
    np.testing.assert_allclose(volume.affine, nib.load(out).affine)
