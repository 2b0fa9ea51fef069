"""Safe NIfTI reading (writing: ``nifti_write``).

Reading validates everything a user's file can get wrong and raises a one-line InputError
naming the file and the reason, before any compute starts: the header (dimensions, size,
voxel type, spacing, affine) is checked before a single voxel is read, then the data is read
fully (nibabel is lazy: truncated or corrupt gzip only shows up then) and checked for NaN/Inf
and constant images.

Writing (``nifti_write``) goes through the output guard and ``atomic.atomic_write`` and keeps
the input's header where that is meaningful; see ``save_volume`` for the header rules.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import InputError
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


def load_image(p: Path, describe: Callable[[BaseException], str]):
    """``nib.load`` (no mmap) of a readable file; any nibabel failure is one InputError line."""
    import nibabel as nib

    _check_readable_file(p)
    try:
        with _quiet_nibabel():
            return nib.load(p, mmap=False)
    except Exception as exc:  # nibabel raises many types on garbage; all mean "bad input file"
        raise InputError(f"{p}: {describe(exc)}") from None


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


# millimetres per xyzt_units space unit; unknown (code 0) is taken as mm, as MR tools do
MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3}


def mm_per_unit(header) -> float:
    """Millimetres per unit of a NIfTI header's space (xyzt_units): 1 for mm, unknown, or a non-NIfTI header."""
    import nibabel as nib

    if not isinstance(header, nib.Nifti1Header):
        return 1.0
    try:
        unit = header.get_xyzt_units()[0]
    except Exception:  # an undefined unit code: unknown
        return 1.0
    return MM_PER_UNIT.get(unit, 1.0)


def affine_in_mm(affine: np.ndarray, header) -> np.ndarray:
    """``affine`` in mm: --voxel-size, --reference and every grid are in mm, but a NIfTI
    may state its space in metres or microns (read as mm, 1 mm would have been 1 m)."""
    a = np.array(affine, dtype=np.float64)
    a[:3, :] *= mm_per_unit(header)
    return a


def forms_in_mm(header) -> tuple[np.ndarray | None, int, np.ndarray | None, int]:
    """(qform, qform_code, sform, sform_code) of a NIfTI header, each form in mm; a form whose
    code is 0 carries no meaning and comes back as None (the caller supplies what it uses).
    One reading of a header's forms for reference grids and output headers."""
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    qform = affine_in_mm(header.get_qform(), header) if qcode > 0 else None
    sform = affine_in_mm(header.get_sform(), header) if scode > 0 else None
    return qform, qcode, sform, scode


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


def _data_offset(img) -> int:
    """Where the voxels start: the data proxy's offset (nibabel's loaded header says vox_offset 0)."""
    return int(getattr(img.dataobj, "offset", img.header.get_data_offset()))


def _check_data_bytes_present(path: Path, img, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """For uncompressed files the file size tells, before reading, whether the data is all there."""
    data_file = Path(img.file_map["image"].filename)
    if data_file.name.lower().endswith(".gz"):
        return
    if not data_file.is_file():
        raise InputError(f"{path}: its data file {data_file.name} is missing")
    needed = _data_offset(img) + int(np.prod(shape)) * dtype.itemsize
    have = data_file.stat().st_size
    if have < needed:
        raise InputError(f"{path}: is truncated: the header needs {needed:,} bytes, the file has {have:,}")


def check_forms(path: Path, header) -> None:
    """Each of qform/sform with a code > 0 must be a finite, invertible affine: the writer
    carries both to the new grid, and nibabel raises on a broken quaternion only then, after
    the whole run (a NaN or out-of-range qform under a valid sform reads fine)."""
    for name in ("qform", "sform"):
        code = int(header[f"{name}_code"])
        if code <= 0:
            continue
        try:
            with _quiet_nibabel():
                form = header.get_qform() if name == "qform" else header.get_sform()
            check_affine(path, form)
        except Exception as exc:
            reason = str(exc).split(": ", 1)[-1] if isinstance(exc, InputError) else str(exc)
            raise InputError(f"{path}: its {name} (code {code}) is broken ({reason}); fix it, or set {name}_code to 0 "
                             "if the other form is right") from None


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


def _check_bitpix(path: Path, raw, dtype: np.dtype) -> None:
    """datatype and bitpix say the same thing twice; when they disagree one of them was damaged,
    and reading by datatype alone (as nibabel does) would decode valid bytes as the wrong type."""
    bitpix = int(raw["bitpix"])
    if bitpix != dtype.itemsize * 8:
        raise InputError(
            f"{path}: the header is inconsistent: datatype {int(raw['datatype'])} ({dtype.name}) has "
            f"{dtype.itemsize * 8} bits per voxel, bitpix says {bitpix}; the file is damaged or badly written"
        )


def _verify_gzip_stream(path: Path, img, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Decompress every gzip member to its end so the CRC is checked, with a byte cap.

    nibabel reads only the bytes it needs and never reaches the gzip trailer, so most
    single-byte corruptions of a .nii.gz load silently as wrong voxel values; a streaming
    pass (constant memory) turns them into an error. The pass stops as soon as the stream
    yields more than the header accounts for (a decompression bomb), never inflating GBs,
    and an image stream that ends before the header's size is refused as truncated (a 4-D
    series would otherwise fail only at its last volume, mid-run).
    """
    needed = _data_offset(img) + int(np.prod(shape)) * dtype.itemsize
    cap = needed + GZIP_SLACK
    image = str(img.file_map["image"].filename)
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
        if name == image and total < needed:
            raise InputError(f"{path}: is truncated: the header needs {needed:,} bytes, the data has {total:,}")


def load_volume(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_INPUT_VOXELS) -> Volume:
    """Read and validate a 3-D NIfTI-1/2 volume (``.nii``, ``.nii.gz``, or a ``.hdr``/``.img`` pair).

    The affine is nibabel's best affine (sform if its code > 0, else qform if its code > 0,
    else pixdim), in mm (xyzt_units metres or microns are converted). 4-D files with one
    volume are squeezed to 3-D. ``data`` is float32 with
    scl_slope/scl_inter applied; ``source_dtype`` is the on-disk type (native byte order).

    Raises:
        InputError: one line naming the file and what is wrong with it.
    """
    import nibabel as nib

    p = Path(path)
    img = load_image(p, lambda exc: _describe_read_error(exc, p))
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
    _check_bitpix(p, raw, on_disk)
    _check_vox_offset(p, img, raw)
    try:
        with _quiet_nibabel():
            affine = affine_in_mm(img.affine, header)
    except Exception as exc:
        raise InputError(f"{p}: invalid orientation in the header: {exc}") from None
    affine = check_affine(p, affine)
    check_forms(p, header)
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
