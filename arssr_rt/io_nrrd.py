"""NRRD input (pynrrd): clinical volumes such as Slicer exports, read into a RAS+ Volume.

NRRD states its world frame in ``space`` (often ``left-posterior-superior``, the DICOM LPS
frame) with one ``space directions`` vector per axis and a ``space origin``; nibabel and the
rest of arssr-rt use RAS+, so the axes the space names as left/posterior are negated.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from .errors import InputError
from .extras import require
from .validation import (
    DEFAULT_MAX_INPUT_VOXELS,
    check_affine,
    check_scalar_dtype,
    check_size,
    check_spacing,
    check_voxels,
    spatial_shape,
)
from .volume import Volume

# sign flips that take each NRRD world space to RAS+ (x, y, z)
_SPACE_TO_RAS: dict[str, tuple[float, float, float]] = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
    # scanner frames without an anatomical label: taken as given (documented, not guessed)
    "scanner-xyz": (1.0, 1.0, 1.0),
    "3d-right-handed": (1.0, 1.0, 1.0),
}

_SPATIAL_KINDS = {"domain", "space", "time"}


def nrrd_affine(header: dict, path: Path | str) -> np.ndarray:
    """The RAS+ voxel-to-world affine of a 3-D NRRD header (index order i, j, k)."""
    space = str(header.get("space", "")).strip().lower()
    if space and space not in _SPACE_TO_RAS:
        raise InputError(f"{path}: NRRD space {header.get('space')!r} is not a 3-D anatomical space")
    flip = np.array(_SPACE_TO_RAS.get(space, (1.0, 1.0, 1.0)))
    directions = header.get("space directions")
    if directions is not None:
        rows = np.asarray(directions, dtype=np.float64)
        # non-spatial axes carry a 'none' direction (NaN rows in pynrrd); keep the spatial ones
        rows = rows[~np.all(np.isnan(rows), axis=1)] if rows.ndim == 2 else rows
        if rows.shape != (3, 3):
            raise InputError(f"{path}: NRRD space directions {rows.tolist()} do not describe a 3-D volume")
        linear = rows.T  # one direction vector per axis -> one affine column per axis
        origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
        if origin.shape != (3,):
            raise InputError(f"{path}: NRRD space origin {origin.tolist()} is not a 3-vector")
    else:
        spacings = np.asarray(header.get("spacings", [1.0, 1.0, 1.0]), dtype=np.float64)[:3]
        linear = np.diag(spacings)
        origin = np.zeros(3)
    affine = np.eye(4)
    affine[:3, :3] = flip[:, None] * linear
    affine[:3, 3] = flip * origin
    return affine


def _scalar_axes(header: dict, path: Path | str) -> list[int]:
    """Indices of the spatial axes; refuses vector/list axes (RGB, tensors, multi-echo)."""
    kinds = header.get("kinds")
    sizes = [int(n) for n in header["sizes"]]
    if kinds is None:
        return list(range(len(sizes)))
    keep = []
    for axis, (kind, size) in enumerate(zip(kinds, sizes)):
        if str(kind).lower() in _SPATIAL_KINDS or (str(kind).lower() == "none" and size > 1):
            keep.append(axis)
        elif size > 1:
            raise InputError(f"{path}: NRRD axis {axis} is of kind {kind!r} with {size} values; a scalar 3-D volume is needed")
    return keep


def read_nrrd(path: str | Path, max_voxels: int = DEFAULT_MAX_INPUT_VOXELS) -> Volume:
    """Read a scalar 3-D ``.nrrd``/``.nhdr`` file into a validated RAS+ Volume.

    The header is checked (dimension, kinds, size limit, geometry) before the voxels are read.
    """
    nrrd = require("nrrd")
    path = Path(path)
    try:
        header = nrrd.read_header(str(path))
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (nrrd.NRRDError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: is not a valid NRRD file ({exc})") from None
    if "sizes" not in header:
        raise InputError(f"{path}: NRRD header has no sizes field")
    axes = _scalar_axes(header, path)
    sizes = [int(header["sizes"][a]) for a in axes]
    shape = spatial_shape(path, sizes)
    # the voxel count alone decides; 8 bytes a voxel is only for the message's GiB estimate
    check_size(path, shape, 8, max_voxels)
    affine = check_affine(path, nrrd_affine(header, path))
    check_spacing(path, np.linalg.norm(affine[:3, :3], axis=0))
    try:
        raw, _ = nrrd.read(str(path), index_order="F")
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (nrrd.NRRDError, ValueError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: NRRD data is corrupt or truncated ({exc})") from None
    raw = np.asarray(raw)
    check_scalar_dtype(path, raw.dtype)
    if raw.size != np.prod(shape):
        raise InputError(f"{path}: NRRD data has {raw.size} values, the header says {shape}")
    data = raw.reshape(shape, order="F").astype(np.float32)
    check_voxels(path, data)
    return Volume(
        data=data,
        affine=affine,
        header=None,
        source_dtype=raw.dtype.newbyteorder("="),
        source_path=path,
        meta={"format": "nrrd", "space": header.get("space")},
    )


# the name readers.read_volume dispatches to
load_nrrd = read_nrrd
