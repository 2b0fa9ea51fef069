"""NRRD output (pynrrd): one gzip-encoded ``.nrrd`` file in the LPS frame 3D Slicer uses.

Why LPS: Slicer, ITK and DICOM state NRRD geometry as ``space: left-posterior-superior``;
arssr-rt works in nibabel's RAS+, so the first two world rows of the affine change sign
(the inverse of ``io_nrrd.nrrd_affine``, which reads it back). ``space directions`` are the
voxel axis vectors (one affine column each), ``space origin`` is voxel (0, 0, 0)'s centre.
NRRD has no intensity scaling, so an integer input whose NIfTI header scales its values is
written as float32 (unless --dtype asks otherwise), never as the raw stored integers.
Only the attached form is written: a detached ``.nhdr`` would be two files the atomic writer
cannot publish together, so ``writers.output_format`` refuses it.

Why the bytes are written here and not by ``nrrd.write``: pynrrd turns the whole array into
one ``bytes`` object before compressing it, a full in-memory copy even of a file-backed
output (memory.py keeps huge outputs on disk). The header's numbers are formatted by
pynrrd's public formatters; the voxels are gzip-streamed slab by slab in NRRD (F) order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .atomic import atomic_write
from .errors import OutputError
from .extras import require
from .geometry import OutputGrid
from .intensity import choose_output_dtype, to_output_dtype
from .memory import all_finite, convert_in_slabs, release_pages
from .outputs import check_output
from .volume import Volume

NRRD_SUFFIX = ".nrrd"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# NRRD type names of the voxel types an output may have (--dtype and the input's types)
NRRD_TYPES = {"int8": "int8", "uint8": "uint8", "int16": "int16", "uint16": "uint16", "int32": "int32",
              "uint32": "uint32", "int64": "int64", "uint64": "uint64", "float32": "float", "float64": "double"}
# bytes compressed per step (whole k-planes, so F-order bytes follow each other); small, as the
# F-order copy of a C-order slab and its bytes exist together
SLAB_BYTES = 16 << 20
# nibabel's .nii.gz level: on a 256^3 output, level 6 was 17 % smaller for uint8 but 2.6x
# slower, and for float32 1 % smaller and 1.4x slower; level 1 writes as fast as the NIfTI does
COMPRESSION_LEVEL = 1


def scaled_integers(source: Volume) -> bool:
    """Whether the input's stored integers are scaled (NIfTI scl_slope/inter != 1/0)."""
    slope = source.meta.get("scl_slope", 1.0)
    inter = source.meta.get("scl_inter", 0.0)
    return bool((slope is not None and np.isfinite(slope) and slope not in (0.0, 1.0))
                or (inter is not None and np.isfinite(inter) and inter != 0.0))


def nrrd_dtype(source: Volume, requested: str | None) -> np.dtype:
    """--dtype if given; else the input's type, or float32 where the input's integers are scaled."""
    dt = choose_output_dtype(source.source_dtype, requested)
    if requested is None and dt.kind in "iu" and scaled_integers(source):
        return np.dtype(np.float32)
    return dt


def content_text(method: str, model: str | None) -> str:
    """NRRD ``content`` (the file's one-line description): what made the values, by which tool."""
    from . import __version__

    how = "ArSSR super-resolution" + (f" (model {model})" if model else "") if method == "model" else f"{method} interpolation"
    text = f"{how} by arssr-rt {__version__}"
    return "".join(c if " " <= c <= "~" else "?" for c in text)  # one printable ASCII line


def nrrd_header(shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray, content: str | None = None) -> bytes:
    """The header of a gzip-encoded 3-D scalar NRRD for a RAS+ ``affine`` (geometry in LPS, mm)."""
    from nrrd.formatters import format_matrix, format_vector

    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    fields = [
        ("type", NRRD_TYPES[np.dtype(dtype).name]),
        ("dimension", "3"),
        ("space", "left-posterior-superior"),
        ("sizes", " ".join(str(int(n)) for n in shape)),
        # one vector per voxel axis: affine column a (pynrrd: matrix rows)
        ("space directions", format_matrix(lps[:3, :3].T)),  # "(x,y,z) ..." at 17 digits
        ("kinds", "domain domain domain"),
        *([("endian", "little")] if np.dtype(dtype).itemsize > 1 else []),
        ("encoding", "gzip"),
        ("space units", '"mm" "mm" "mm"'),
        ("space origin", format_vector(lps[:3, 3])),
        *([("content", content)] if content else []),
    ]
    return ("NRRD0005\n" + "".join(f"{key}: {value}\n" for key, value in fields) + "\n").encode("ascii")


def _write_gzip_f_order(handle, stored: np.ndarray, level: int) -> None:
    """Stream ``stored``'s bytes in F order (little-endian) through gzip, a slab of k-planes at a time."""
    import zlib

    little = stored.dtype.newbyteorder("<")
    plane = int(np.prod(stored.shape[:2])) * stored.dtype.itemsize
    step = max(1, SLAB_BYTES // max(plane, 1))
    packer = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS | 16)  # a gzip member
    for k in range(0, stored.shape[2], step):
        slab = np.asarray(stored[:, :, k:k + step], dtype=little)
        handle.write(packer.compress(slab.tobytes(order="F")))
        del slab
        release_pages(stored)
    handle.write(packer.flush())


def save_nrrd(path: str | os.PathLike, data: np.ndarray, grid: OutputGrid, source: Volume, dtype: str | None = None,
              force: bool = False, inputs: Iterable[str | os.PathLike] = (), method: str = "model",
              model: str | None = None, descrip: str | None = None) -> Path:
    """Write ``data`` on ``grid`` as a gzip-encoded ``.nrrd`` through the output guard, atomically.

    ``content`` (the file's description) is ``descrip`` (``provenance.describe``: the text the
    NIfTI descrip and MGH tag of the same request carry), else made from ``method``/``model``."""
    require("nrrd")  # its formatters write the header's numbers
    protected = [*inputs, *([source.source_path] if source.source_path is not None else [])]
    p = check_output(path, inputs=protected, force=force)
    if not p.name.lower().endswith(NRRD_SUFFIX) or len(p.name) <= len(NRRD_SUFFIX):
        raise OutputError(f"{p}: an NRRD output must end in .nrrd (detached .nhdr headers are not written)")
    data = np.asarray(data)
    if tuple(data.shape) != tuple(grid.shape):
        raise ValueError(f"data shape {data.shape} does not match the output grid {grid.shape}")
    if not all_finite(data):
        raise OutputError(f"{p}: the result has NaN/Inf voxels (model or backend fault); nothing was written")
    out_dtype = nrrd_dtype(source, dtype)
    stored = convert_in_slabs(data, lambda slab: to_output_dtype(slab, out_dtype), out_dtype)
    content = "".join(c if " " <= c <= "~" else "?" for c in descrip) if descrip else content_text(method, model)
    header = nrrd_header(stored.shape, out_dtype, grid.affine, content)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(header)
            _write_gzip_f_order(handle, stored, COMPRESSION_LEVEL)

    atomic_write(p, write, suffix=NRRD_SUFFIX)
    return p
