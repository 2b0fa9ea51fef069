"""FreeSurfer MGH/MGZ input and output through nibabel's MGHImage.

Reading shares the NIfTI reader's safety path (size checks on header values before any voxel
is read, the decompression cap and CRC pass for .mgz, the same validation); the affine is the
header's vox2ras. MGH has no scaling and only uint8/int16/int32/float32 voxels, so an output
type MGH cannot hold exactly is written as float32 rather than silently wrapped.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from .atomic import atomic_write
from .errors import InputError, OutputError
from .geometry import OutputGrid
from .intensity import choose_output_dtype, to_output_dtype
from .memory import all_finite, convert_in_slabs
from .nifti_io import GZIP_SLACK, _describe_read_error, _quiet_nibabel, load_image, read_checked_voxels
from .outputs import check_output
from .provenance import mgh_cmdline_tag
from .validation import (DEFAULT_MAX_INPUT_VOXELS, check_affine, check_scalar_dtype, check_size, check_spacing,
                         spatial_shape)
from .volume import Volume

MGH_SUFFIXES = (".mgz", ".mgh")
MGH_DTYPES = (np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.float32))


def _check_raw_header(path: Path, max_voxels: int) -> None:
    """The fixed header's version, dims and type, read before nibabel touches the file: a
    header claiming 10^13 voxels would otherwise make nibabel seek for its footer past any
    real file and fail with a bare OS error, instead of being refused for its size. The type
    codes are nibabel's own (``data_type_codes``), so what it reads and what is sized agree."""
    from nibabel.freesurfer.mghformat import data_type_codes

    try:
        opener = gzip.open if path.name.lower().endswith(".mgz") else open
        with opener(path, "rb") as handle:
            head = handle.read(30)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: {_describe_read_error(exc)}") from None
    if len(head) < 30:
        raise InputError(f"{path}: is not a readable MGH/MGZ file (header is {len(head)} bytes, 284 needed)")
    version, *dims, code, _dof = struct.unpack(">7i", head[:28])
    (good_ras,) = struct.unpack(">h", head[28:30])
    if version != 1:
        raise InputError(f"{path}: is not a readable MGH/MGZ file (version {version}, expected 1)")
    if any(n < 1 for n in dims):
        raise InputError(f"{path}: MGH header dimensions {dims} must all be >= 1")
    if code not in data_type_codes.value_set():
        raise InputError(f"{path}: MGH voxel type code {code} is not one of uchar/int/float/short")
    check_size(path, tuple(dims), data_type_codes.numpy_dtype[code].itemsize, max_voxels)
    if good_ras != 1:
        # the geometry fields are then undefined; FreeSurfer assumes coronal LIA, nibabel's
        # default comes out LSP: two readers disagree, so neither frame is guessed
        raise InputError(
            f"{path}: MGH goodRASFlag is {good_ras}: the file does not store its orientation and readers "
            "disagree on the default; set its orientation with FreeSurfer's mri_convert or export it to NIfTI"
        )


def _check_stream(path: Path, needed: int) -> None:
    """Before decoding: an .mgh must hold ``needed`` bytes; an .mgz is inflated to its end once
    (CRC checked, constant memory) and refused as soon as it yields more than ``needed`` plus
    ``GZIP_SLACK`` (room for the MGH tag footer), so a decompression bomb never inflates."""
    if not path.name.lower().endswith(".mgz"):
        have = path.stat().st_size
        if have < needed:
            raise InputError(f"{path}: is truncated: the header needs {needed:,} bytes, the file has {have:,}")
        return
    cap, total = needed + GZIP_SLACK, 0
    try:
        with gzip.open(path, "rb") as handle:
            while block := handle.read(min(1 << 24, cap + 1 - total)):
                total += len(block)
                if total > cap:
                    raise InputError(f"{path}: inflates to more than the {needed:,} bytes its header accounts for "
                                     "(a decompression bomb or a wrong header); refused")
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: {_describe_read_error(exc)}") from None
    if total < needed:
        raise InputError(f"{path}: is truncated: the header needs {needed:,} bytes, the data has {total:,}")


# float32 cosines written by FreeSurfer are orthonormal to ~1e-7; beyond this they are damaged
MDC_TOLERANCE = 1e-4


def _check_orientation(path: Path, header) -> None:
    """MGH keeps orientation as direction cosines (Mdc) that must be orthonormal; nibabel uses
    them as given, so scaled or sheared cosines would place and size the image wrongly."""
    cosines = np.asarray(header["Mdc"], dtype=np.float64)
    error = float(np.max(np.abs(cosines @ cosines.T - np.eye(3)))) if np.all(np.isfinite(cosines)) else np.inf
    if not error <= MDC_TOLERANCE:
        raise InputError(
            f"{path}: MGH direction cosines (Mdc) are not orthonormal (max |Mdc Mdc^T - I| = {error:.3g}); "
            "the header is damaged"
        )


def read_mgh(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_INPUT_VOXELS) -> Volume:
    """Read and validate a 3-D ``.mgz``/``.mgh`` (a 4-D file with one frame is squeezed)."""
    import nibabel as nib

    p = Path(path)
    if p.is_file():  # missing files and folders get load_image's own message
        _check_raw_header(p, max_voxels)
    img = load_image(p, lambda exc: f"is not a readable MGH/MGZ file ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})")
    if not isinstance(img, nib.MGHImage):
        raise InputError(f"{p}: is a {type(img).__name__} file, not MGH/MGZ")
    full_shape = tuple(int(n) for n in img.header.get_data_shape())
    on_disk = np.dtype(img.get_data_dtype())
    check_scalar_dtype(p, on_disk)
    check_size(p, full_shape, on_disk.itemsize, max_voxels)
    shape = spatial_shape(p, full_shape)
    _check_orientation(p, img.header)
    check_spacing(p, np.asarray(img.header["delta"], dtype=np.float64))
    affine = check_affine(p, img.affine)
    _check_stream(p, int(img.header.get_data_offset()) + int(np.prod(full_shape)) * on_disk.itemsize)
    data = read_checked_voxels(p, img, full_shape, shape, lambda exc: f"cannot be read as MGH/MGZ: {exc}")
    return Volume(data=data, affine=affine, header=img.header, source_dtype=on_disk.newbyteorder("="),
                  source_path=p, meta={"format": "mgh", "on_disk_shape": full_shape})


def mgh_dtype(source_dtype: np.dtype, requested: str | None) -> np.dtype:
    """The output type: the usual rule, then float32 where MGH cannot store that type exactly."""
    dt = choose_output_dtype(source_dtype, requested)
    if dt in MGH_DTYPES:
        return dt
    if dt == np.dtype(np.uint16):
        return np.dtype(np.int32)  # holds every uint16 value
    if dt == np.dtype(np.int8):
        return np.dtype(np.int16)
    return np.dtype(np.float32)


def _scaling_free(source: Volume, dt: np.dtype) -> np.dtype:
    """An integer NIfTI input with scl_slope/inter != 1/0 needs scaling MGH lacks: float32."""
    slope = source.meta.get("scl_slope", 1.0)
    inter = source.meta.get("scl_inter", 0.0)
    scaled = (slope is not None and np.isfinite(slope) and slope not in (0.0, 1.0)) or (
        inter is not None and np.isfinite(inter) and inter != 0.0)
    return np.dtype(np.float32) if dt.kind in "iu" and scaled else dt


def save_mgh(path: str | os.PathLike, data: np.ndarray, grid: OutputGrid, source: Volume, dtype: str | None = None,
             force: bool = False, inputs: Iterable[str | os.PathLike] = (), descrip: str | None = None) -> Path:
    """Write ``data`` on ``grid`` as MGH/MGZ (gzip by the .mgz suffix), atomically.

    The header is the input's MGH header (TR, flip angle, TE, TI kept) or a fresh one; the
    geometry (Mdc, delta, centre, float32 in MGH) comes from ``grid.affine``. ``descrip`` is
    written as a FreeSurfer TAG_CMDLINE record after the footer (MGH has no description field;
    ``mri_info`` shows command-line tags, nibabel ignores them); the input's tags are not kept.
    """
    protected = [*inputs, *([source.source_path] if source.source_path is not None else [])]
    p = check_output(path, inputs=protected, force=force)
    suffix = next((s for s in MGH_SUFFIXES if p.name.lower().endswith(s)), None)
    if suffix is None:
        raise OutputError(f"{p}: an MGH output must end in .mgz or .mgh")
    data = np.asarray(data)
    if tuple(data.shape[:3]) != tuple(grid.shape):
        raise ValueError(f"data shape {data.shape} does not match the output grid {grid.shape}")
    if not all_finite(data):
        raise OutputError(f"{p}: the result has NaN/Inf voxels (model or backend fault); nothing was written")
    image = mgh_image(data, grid, source, dtype)

    def write(tmp: Path) -> None:
        from nibabel.fileholders import FileHolder

        # one stream (one gzip member for .mgz): nibabel writes header, voxels and footer, the tag follows
        opener = gzip.open(tmp, "wb", compresslevel=1) if suffix == ".mgz" else open(tmp, "wb")
        with opener as handle, _quiet_nibabel():
            image.to_file_map({"image": FileHolder(fileobj=handle)})
            if descrip:
                handle.write(mgh_cmdline_tag(descrip))

    atomic_write(p, write, suffix=suffix)
    return p


def mgh_image(data: np.ndarray, grid: OutputGrid, source: Volume, dtype: str | None = None):
    """The image ``save_mgh`` writes, in memory (the Python API returns it)."""
    import nibabel as nib
    from nibabel.freesurfer.mghformat import MGHHeader

    out_dtype = _scaling_free(source, mgh_dtype(source.source_dtype, dtype))
    stored = convert_in_slabs(data, lambda slab: to_output_dtype(slab, out_dtype), out_dtype)
    header = source.header.copy() if isinstance(source.header, MGHHeader) else None
    with _quiet_nibabel():
        image = nib.MGHImage(stored, grid.affine, header=header)
        image.header.set_data_dtype(out_dtype)
    return image
