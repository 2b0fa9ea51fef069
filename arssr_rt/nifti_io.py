"""Safe NIfTI reading and writing.

Reading validates everything a user's file can get wrong and raises a one-line InputError
naming the file and the reason, before any compute starts: the header (dimensions, size,
voxel type, spacing, affine) is checked before a single voxel is read, then the data is read
fully (nibabel is lazy: truncated or corrupt gzip only shows up then) and checked for NaN/Inf
and constant images.

Writing goes through the output guard and ``atomic.atomic_write`` and keeps the input's
header where that is meaningful; see ``save_volume`` for the header rules.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .atomic import atomic_write
from .errors import InputError, OutputError
from .geometry import OutputGrid
from .intensity import choose_output_dtype, to_output_dtype
from .memory import all_finite, convert_in_slabs, min_max
from .outputs import check_output
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

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NIFTI1_MAX_DIM = 32767  # dim[] is int16 in NIfTI-1; larger grids are written as NIfTI-2


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's logger and warnings: they print to stderr, and the CLI promises
    exactly one line there on failure (header problems become InputErrors instead)."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _describe_read_error(exc: BaseException, path: Path | None = None) -> str:
    """A short reason for an exception nibabel or gzip raised while reading a file."""
    from nibabel.filebasedimages import ImageFileError

    if isinstance(exc, EOFError):
        return "is truncated (the data ends early)"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return f"is not valid gzip data (corrupt file?): {exc}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ImageFileError):  # nibabel's messages repeat the path; ours names it once
        return "is not a NIfTI file" + (" (named .gz but not gzip-compressed)" if "gzip" in text else "")
    if path is not None:
        text = text.replace(str(path), "the file")
    return f"cannot be read as NIfTI: {text}"


def read_checked_voxels(p: Path, img, full_shape: tuple[int, ...], shape: tuple[int, ...], describe: Callable[[BaseException], str]) -> np.ndarray:
    """float32 voxels of ``shape`` after the header checks, NaN/Inf refused; one line on failure (NIfTI, MGH)."""
    try:
        with _quiet_nibabel():
            data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
    except MemoryError:
        raise InputError(f"{p}: not enough memory to read {np.prod(full_shape):,} voxels") from None
    except Exception as exc:
        raise InputError(f"{p}: {describe(exc)}") from None
    data = np.ascontiguousarray(data.reshape(shape))
    check_voxels(p, data)
    return data


def _check_readable_file(path: Path) -> None:
    """Missing, directory, empty and permission problems, each with its own message."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a NIfTI file")
    if not path.is_file():
        raise InputError(f"{path}: is not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: is empty (0 bytes)")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _raw_header(img) -> object:
    """The header exactly as stored: nibabel's loader silently 'fixes' zero or negative
    pixdim (sets them to 1 or abs), which would hide a broken voxel size."""
    from nibabel.openers import ImageOpener

    holder = img.file_map.get("header") or img.file_map["image"]  # single files have only "image"
    filename = holder.filename
    with _quiet_nibabel(), ImageOpener(filename) as handle:
        return img.header_class.from_fileobj(handle, check=False)


def _check_data_bytes_present(path: Path, img, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """For uncompressed files the file size tells, before reading, whether the data is all there."""
    data_file = Path(img.file_map["image"].filename)
    if data_file.name.lower().endswith(".gz"):
        return
    if not data_file.is_file():
        raise InputError(f"{path}: its data file {data_file.name} is missing")
    needed = int(img.header.get_data_offset()) + int(np.prod(shape)) * dtype.itemsize
    have = data_file.stat().st_size
    if have < needed:
        raise InputError(f"{path}: is truncated: the header needs {needed:,} bytes, the file has {have:,}")


# bytes a .gz may inflate to beyond what its header accounts for (padding some writers add)
GZIP_SLACK = 1 << 20
# smallest data offset of a single-file NIfTI: the header plus the 4-byte extension flag
MIN_VOX_OFFSET = {"nifti1": 352, "nifti2": 544}


def _check_vox_offset(path: Path, img, raw) -> None:
    """A single-file .nii whose vox_offset points into its own header would read header bytes
    as voxels (vox_offset 0 is legal only for .hdr/.img pairs, whose data file is separate)."""
    import nibabel as nib

    if isinstance(img, nib.Nifti1Pair) and not isinstance(img, nib.Nifti1Image):
        return  # a pair (NIfTI-2 pairs subclass Nifti1Pair too): the data lives in the .img
    kind = "nifti2" if isinstance(img.header, nib.Nifti2Header) else "nifti1"
    offset = float(raw["vox_offset"])
    if not offset >= MIN_VOX_OFFSET[kind]:
        raise InputError(
            f"{path}: vox_offset {offset:g} points into the header (a single-file {kind.upper()} needs >= {MIN_VOX_OFFSET[kind]}); "
            "the file is broken: rewrite it with a NIfTI tool"
        )


def _verify_gzip_stream(path: Path, img, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Decompress every gzip member to its end so the CRC is checked, with a byte cap.

    nibabel reads only the bytes it needs and never reaches the gzip trailer, so most
    single-byte corruptions of a .nii.gz load silently as wrong voxel values; a streaming
    pass (constant memory) turns them into an error. The pass stops as soon as the stream
    yields more than the header accounts for (a decompression bomb), never inflating GBs.
    """
    needed = int(img.header.get_data_offset()) + int(np.prod(shape)) * dtype.itemsize
    cap = needed + GZIP_SLACK
    names = {holder.filename for holder in img.file_map.values() if holder.filename}
    for name in sorted(str(n) for n in names):
        if not name.lower().endswith(".gz"):
            continue
        total = 0
        try:
            with gzip.open(name, "rb") as handle:
                while block := handle.read(min(1 << 24, cap + 1 - total)):
                    total += len(block)
                    if total > cap:
                        raise InputError(
                            f"{path}: {Path(name).name} inflates to more than the {needed:,} bytes its header accounts for "
                            "(a decompression bomb or a wrong header); refused"
                        )
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: {_describe_read_error(exc)}") from None


def load_volume(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_INPUT_VOXELS) -> Volume:
    """Read and validate a 3-D NIfTI-1/2 volume (``.nii``, ``.nii.gz``, or a ``.hdr``/``.img`` pair).

    The affine is nibabel's best affine (sform if its code > 0, else qform if its code > 0,
    else pixdim). 4-D files with one volume are squeezed to 3-D. ``data`` is float32 with
    scl_slope/scl_inter applied; ``source_dtype`` is the on-disk type (native byte order).

    Raises:
        InputError: one line naming the file and what is wrong with it.
    """
    import nibabel as nib

    p = Path(path)
    _check_readable_file(p)
    try:
        with _quiet_nibabel():
            img = nib.load(p, mmap=False)
    except Exception as exc:  # nibabel raises many types on garbage; all mean "bad input file"
        raise InputError(f"{p}: {_describe_read_error(exc, p)}") from None
    if not isinstance(img, nib.Nifti1Pair):  # Nifti1Image, Nifti2Image and the pairs
        raise InputError(f"{p}: is a {type(img).__name__} file, not NIfTI")

    header = img.header
    full_shape = tuple(int(n) for n in header.get_data_shape())
    on_disk = np.dtype(img.get_data_dtype())
    check_scalar_dtype(p, on_disk)
    check_size(p, full_shape, on_disk.itemsize, max_voxels)
    shape = spatial_shape(p, full_shape)
    try:
        raw = _raw_header(img)
    except Exception as exc:
        raise InputError(f"{p}: {_describe_read_error(exc)}") from None
    check_spacing(p, np.asarray(raw["pixdim"][1:4], dtype=np.float64))
    _check_vox_offset(p, img, raw)
    try:
        with _quiet_nibabel():
            affine = img.affine
    except Exception as exc:
        raise InputError(f"{p}: invalid orientation in the header: {exc}") from None
    affine = check_affine(p, affine)
    _check_data_bytes_present(p, img, full_shape, on_disk)
    _verify_gzip_stream(p, img, full_shape, on_disk)

    data = read_checked_voxels(p, img, full_shape, shape, _describe_read_error)

    # nibabel moves scl_slope/scl_inter from the header into the data proxy on load (the
    # header then says NaN), so the scaling the writer must reuse is taken from the proxy
    meta = {
        "format": "nifti2" if isinstance(header, nib.Nifti2Header) else "nifti1",
        "scl_slope": float(getattr(img.dataobj, "slope", 1.0)),
        "scl_inter": float(getattr(img.dataobj, "inter", 0.0)),
        "on_disk_shape": full_shape,
    }
    return Volume(
        data=data,
        affine=affine,
        header=header,
        source_dtype=on_disk.newbyteorder("="),
        source_path=p,
        meta=meta,
    )


def output_suffix(path: Path) -> str:
    """``.nii.gz`` or ``.nii``; anything else cannot be written by this module."""
    name = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise OutputError(f"{path}: output must end in .nii or .nii.gz")


def check_output_path(path: str | os.PathLike, force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse a NIfTI output path that cannot be written safely; call it before any compute.

    The suffix must be .nii/.nii.gz; the rest is the shared guard (``outputs.check_output``):
    missing folder, a folder, an input of the run, an existing file without ``force``.
    """
    p = Path(path)
    output_suffix(p)
    return check_output(p, inputs=inputs, force=force)


def _scaling_for(source: Volume, out_dtype: np.dtype) -> tuple[float, float]:
    """Integer outputs reuse the input's scaling (``meta["scl_slope"]``/``["scl_inter"]``, set
    by load_volume) so stored integers decode to the right values (e.g. a uint8 file with
    slope 1/255 holding 0..1); floats are stored unscaled."""
    if out_dtype.kind not in "iu":
        return 1.0, 0.0
    slope = source.meta.get("scl_slope")
    inter = source.meta.get("scl_inter")
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def form_affines(source: Volume, grid: OutputGrid) -> tuple[np.ndarray, np.ndarray]:
    """(qform, sform) of the output: each of the input's forms carried through the voxel map.

    The output grid is a voxel-space map V (scale + shift) of the input grid, so an input form
    F becomes F @ V. When qform and sform describe different spaces (e.g. scanner, code 1,
    and MNI, code 4), each keeps its own space, instead of both being overwritten with the
    one the pipeline used. A form whose code is 0 carries no meaning and gets ``grid.affine``.
    """
    import nibabel as nib

    src = source.header
    if not isinstance(src, nib.Nifti1Header):
        return grid.affine, grid.affine
    voxel_map = np.linalg.solve(np.asarray(source.affine, dtype=np.float64), np.asarray(grid.affine, dtype=np.float64))
    q_affine = src.get_qform() @ voxel_map if int(src["qform_code"]) > 0 else grid.affine
    s_affine = src.get_sform() @ voxel_map if int(src["sform_code"]) > 0 else grid.affine
    return q_affine, s_affine


def output_header(source: Volume, grid: OutputGrid, out_dtype: np.dtype, slope: float, inter: float, value_range: tuple[float, float],
                  forms: tuple[np.ndarray, np.ndarray]):
    """The header of the output file, ``forms`` = ``form_affines(source, grid)``; see ``save_volume`` for the rules."""
    import nibabel as nib

    src = source.header
    if isinstance(src, nib.Nifti1Header):  # Nifti2Header is a subclass
        hdr = src.copy()
        qcode, scode = int(src["qform_code"]), int(src["sform_code"])
    else:
        hdr = nib.Nifti1Header()
        hdr.set_xyzt_units("mm", "sec")
        qcode = scode = 0
    if qcode == 0 and scode == 0:
        # the input's geometry came from pixdim alone; code 0 would make readers ignore the
        # moved origin of the new grid, so assert scanner coordinates on both forms
        qcode = scode = 1
    if max(grid.shape) > NIFTI1_MAX_DIM and not isinstance(hdr, nib.Nifti2Header):
        with _quiet_nibabel():
            hdr = nib.Nifti2Header.from_header(hdr, check=False)
        hdr["sizeof_hdr"] = 540
    # extensions (AFNI, dcm2niix JSON, CIFTI) describe the old grid; AFNI's would even override it
    hdr.extensions.clear()
    kept_pixdim = np.array(hdr["pixdim"][4:], copy=True)  # TR etc.: set_data_shape resets them
    hdr.set_data_shape(grid.shape)
    hdr["pixdim"][4:] = kept_pixdim
    hdr.set_data_dtype(out_dtype)
    hdr.set_qform(forms[0], code=qcode)
    hdr.set_sform(forms[1], code=scode)
    hdr.set_slope_inter(slope, inter)
    hdr["cal_min"], hdr["cal_max"] = value_range
    # slice timing indices refer to the input's slices; dim_info and slice_duration still hold
    hdr["slice_start"] = 0
    hdr["slice_end"] = 0
    hdr["slice_code"] = 0
    return hdr


def save_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    grid: OutputGrid,
    source: Volume,
    dtype: str | None = None,
    force: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write the restored intensities ``data`` (float32, ``grid.shape``) as NIfTI, atomically.

    Voxel type: ``dtype`` if given (e.g. ``"float32"``); else float inputs give float32 and
    integer inputs keep their type, rounded and clipped to its range; an integer output reuses
    the input's scl_slope/scl_inter so the stored values decode to the right intensities.

    Header: a copy of the input's NIfTI header (descrip, intent, xyzt_units, dim_info, TR are
    kept; NIfTI-2 stays NIfTI-2) with the new shape, voxel type, qform and sform each carried
    through the voxel map of the new grid (see ``form_affines``: a form that agreed with
    ``grid``'s source affine gives ``grid.affine``; pixdim follows), the input's qform/sform codes copied (both 0 in the
    input -> both written as 1, scanner, so readers do not ignore the new origin), cal_min/max
    set to the output range, slice-timing indices and extensions dropped. Inputs without a
    NIfTI header get a fresh NIfTI-1 header with codes 1 and units mm/s.

    The file is written to a hidden temp file in the output folder (same suffix, so nibabel
    picks gzip for .nii.gz) and renamed over ``path``; on any failure the temp file is removed
    and nothing appears at ``path``.

    Raises:
        OutputError: bad suffix, missing folder, existing file without ``force``, an input
            (``inputs`` and ``source.source_path``), non-finite result, or a write failure.
    """
    import nibabel as nib

    protected = [*inputs, *([source.source_path] if source.source_path is not None else [])]
    p = check_output_path(path, force, protected)
    suffix = output_suffix(p)
    data = np.asarray(data)
    if tuple(data.shape) != tuple(grid.shape):
        raise ValueError(f"data shape {data.shape} does not match the output grid {grid.shape}")
    if not all_finite(data):
        raise OutputError(f"{p}: the result has NaN/Inf voxels (model or backend fault); nothing was written")

    out_dtype = choose_output_dtype(source.source_dtype, dtype)
    slope, inter = _scaling_for(source, out_dtype)
    # slab by slab: a huge (file-backed) result is never copied whole into memory
    stored = convert_in_slabs(data, lambda slab: to_output_dtype(slab, out_dtype, slope, inter), out_dtype)
    stored_min, stored_max = min_max(stored)
    decoded_min = stored_min * slope + inter
    decoded_max = stored_max * slope + inter
    forms = form_affines(source, grid)
    header = output_header(source, grid, out_dtype, slope, inter, (decoded_min, decoded_max), forms)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    with _quiet_nibabel():
        image = image_class(stored, grid.affine, header=header)
    # the constructor re-derives some fields; assert the forms, codes and scaling once more
    image.header.set_qform(forms[0], code=int(header["qform_code"]))
    image.header.set_sform(forms[1], code=int(header["sform_code"]))
    image.header.set_slope_inter(slope, inter)
    image.header.extensions.clear()

    def write(tmp: Path) -> None:
        with _quiet_nibabel():
            image.to_filename(tmp)

    # temp file with the same suffix so nibabel picks gzip for .nii.gz; fsync, umask, rename
    atomic_write(p, write, suffix=suffix)
    return p
