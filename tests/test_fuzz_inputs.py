"""Mutated input files found by fuzzing the readers: each must be refused by ``read_volume`` with
an InputError and by ``upsample --interp cubic`` and ``info`` with one ``arssr-rt: error:`` line,
a non-zero exit code and no output, never a traceback, a hang or a huge allocation.

The inputs are tiny files written here (a 16^3 block), mutated the way the fuzzing did.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
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
