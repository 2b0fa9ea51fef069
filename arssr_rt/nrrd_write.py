"""NRRD output (pynrrd): one gzip-encoded ``.nrrd`` file in the LPS frame 3D Slicer uses.

Why LPS: Slicer, ITK and DICOM state NRRD geometry as ``space: left-posterior-superior``;
arssr-rt works in nibabel's RAS+, so the first two world rows of the affine change sign
(the inverse of ``io_nrrd.nrrd_affine``, which reads it back). ``space directions`` are the
voxel axis vectors (one affine column each), ``space origin`` is voxel (0, 0, 0)'s centre.
NRRD has no intensity scaling, so an integer input whose NIfTI header scales its values is
written as float32 (unless --dtype asks otherwise), never as the raw stored integers.
Only the attached form is written: a detached ``.nhdr`` would be two files the atomic writer
cannot publish together, so ``writers.output_format`` refuses it.
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
from .memory import all_finite, convert_in_slabs
from .outputs import check_output
from .volume import Volume

NRRD_SUFFIX = ".nrrd"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
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


def nrrd_header(affine: np.ndarray, content: str | None = None) -> dict:
    """The fields of a 3-D scalar NRRD for a RAS+ ``affine`` (geometry written in LPS, mm)."""
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    return {
        **({"content": content} if content else {}),
        "encoding": "gzip",
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T.copy(),  # row a = the world vector of voxel axis a
        "space origin": lps[:3, 3].copy(),
        "space units": ["mm", "mm", "mm"],
        "kinds": ["domain", "domain", "domain"],
    }


def save_nrrd(path: str | os.PathLike, data: np.ndarray, grid: OutputGrid, source: Volume, dtype: str | None = None,
              force: bool = False, inputs: Iterable[str | os.PathLike] = (), method: str = "model",
              model: str | None = None) -> Path:
    """Write ``data`` on ``grid`` as a gzip-encoded ``.nrrd`` through the output guard, atomically
    (``method``/``model``: what made the values, for the ``content`` field)."""
    nrrd = require("nrrd")
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
    header = nrrd_header(grid.affine, content_text(method, model))

    def write(tmp: Path) -> None:
        nrrd.write(str(tmp), stored, header, compression_level=COMPRESSION_LEVEL, index_order="F")

    atomic_write(p, write, suffix=NRRD_SUFFIX)  # the temp ends in .nrrd: pynrrd writes one file
    return p
