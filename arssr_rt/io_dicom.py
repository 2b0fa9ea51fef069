"""DICOM series in and out (pydicom): one folder = one series = one RAS+ Volume.

Reading sorts slices by their position along the slice normal (file names and
InstanceNumber are unreliable), checks that the folder holds one geometrically regular
series, and applies RescaleSlope/Intercept. It keeps the first slice's full header and the
slices' SOP Class/Instance UIDs in slice order (``meta``) for the derived series that
dicom_write.py writes from them.

DICOM patient coordinates are LPS; arssr-rt is RAS+ (nibabel), so x and y change sign at
this boundary and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError, one_line
from .extras import require
from .validation import DEFAULT_MAX_INPUT_VOXELS, check_affine, check_size, check_voxels
from .volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
# relative deviation of one slice gap from the median gap that still counts as regular
SPACING_TOLERANCE = 0.01
ORIENTATION_TOLERANCE = 1e-4
# how far ImageOrientationPatient's two cosines may be from unit length and from orthogonal
# (DS strings carry ~6 decimals; anything worse is a broken header, not rounding)
DIRECTION_TOLERANCE = 1e-3
# grey-level photometric interpretations; MONOCHROME1 displays low values bright and is kept
# as such on output (the values are not inverted, so they keep their meaning)
GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")

@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and logger and numpy's float warnings while a series is read:
    they print to stderr, and the CLI promises exactly one line there on failure (an invalid DS,
    excess pixel data or an Inf rescale become InputErrors or NaN/Inf checks instead)."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def is_dicom_file(path: Path) -> bool:
    """True if the file has the DICOM Part 10 preamble marker ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM Part 10 files directly inside ``folder`` (DICOMDIR excluded), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.upper() != "DICOMDIR" and is_dicom_file(p))


# ---------------------------------------------------------------- reading


def _read_headers(folder: Path, files: list[Path]) -> list[Any]:
    pydicom = require("pydicom")
    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            ds.walk(lambda *_: None)  # pydicom decodes values when first used: a bad VR or DS raises here, not later
        except Exception as exc:  # InvalidDicomError, EOFError, NotImplementedError (unknown VR) ...: a broken file
            raise InputError(f"{f}: is not a readable DICOM file ({one_line(exc)})") from None
        headers.append(ds)
    return headers


def _require_one_series(folder: Path, headers: list[Any]) -> None:
    series = sorted({str(getattr(h, "SeriesInstanceUID", "")) for h in headers})
    if len(series) > 1:
        raise InputError(
            f"{folder}: holds {len(series)} DICOM series ({', '.join(s[-12:] for s in series)}); "
            "put each series in its own folder"
        )
    for name in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
        missing = [h for h in headers if name not in h]
        if missing:
            raise InputError(f"{folder}: slice {missing[0].filename} has no {name}; cannot place it in 3-D")
    for header in headers:  # every slice: the checks below compare each slice's values with the first's
        _check_geometry(folder, header)
    photometric = {str(getattr(h, "PhotometricInterpretation", "MONOCHROME2")).strip().upper() for h in headers}
    if not photometric <= set(GREY_PHOTOMETRICS):
        raise InputError(f"{folder}: PhotometricInterpretation {', '.join(sorted(photometric))} is not a grey-level image (MONOCHROME1/2)")
    if len(photometric) > 1:
        raise InputError(f"{folder}: slices mix MONOCHROME1 and MONOCHROME2; mixed series")
    frames = {_number(h, "NumberOfFrames", 1, int) for h in headers}
    if frames != {1}:
        raise InputError(f"{folder}: multi-frame DICOM (NumberOfFrames > 1) is not supported; convert it to single frames")
    first = headers[0]
    for h in headers[1:]:
        if (h.Rows, h.Columns) != (first.Rows, first.Columns):
            raise InputError(f"{folder}: slices differ in size ({first.Rows}x{first.Columns} vs {h.Rows}x{h.Columns}); mixed series")
        if not np.allclose(np.asarray(h.ImageOrientationPatient, float), np.asarray(first.ImageOrientationPatient, float), atol=ORIENTATION_TOLERANCE):
            raise InputError(f"{folder}: slices have different orientations (ImageOrientationPatient); mixed series")
        if not np.allclose(np.asarray(h.PixelSpacing, float), np.asarray(first.PixelSpacing, float), rtol=1e-4):
            raise InputError(f"{folder}: slices have different PixelSpacing; mixed series")


def _number(ds: Any, name: str, default: float, kind: type) -> Any:
    """A numeric tag's value (``default`` when absent or empty); pydicom keeps an invalid IS/DS
    string such as "abc" as text, which is refused here instead of failing later."""
    value = getattr(ds, name, default)
    try:
        return kind(value or default)
    except (TypeError, ValueError):
        raise InputError(f"{ds.filename}: {name} {str(value)[:40]!r} is not a number") from None


def _check_geometry(folder: Path, header: Any) -> None:
    """ImageOrientationPatient must be two orthonormal cosines and PixelSpacing two sizes > 0:
    anything else places the voxels wrongly in 3-D (a skewed or mirrored image, no error)."""
    try:
        iop = np.asarray(header.ImageOrientationPatient, dtype=np.float64).reshape(-1)
        spacing = np.asarray(header.PixelSpacing, dtype=np.float64).reshape(-1)
        position = np.asarray(header.ImagePositionPatient, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{folder}: ImageOrientationPatient, ImagePositionPatient or PixelSpacing is not numeric in {header.filename}") from None
    if position.shape != (3,) or not np.all(np.isfinite(position)):
        raise InputError(f"{folder}: ImagePositionPatient {position.tolist()} is not three finite numbers in {header.filename}")
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise InputError(f"{folder}: ImageOrientationPatient {iop.tolist()} is not six finite numbers")
    row, col = iop[:3], iop[3:]
    lengths = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
    if max(abs(n - 1.0) for n in lengths) > DIRECTION_TOLERANCE or abs(float(row @ col)) > DIRECTION_TOLERANCE:
        raise InputError(
            f"{folder}: ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors "
            f"(lengths {lengths[0]:.4f}, {lengths[1]:.4f}; dot {float(row @ col):.4f}); the header is broken"
        )
    if spacing.shape != (2,) or not np.all(np.isfinite(spacing)) or not np.all(spacing > 0):
        raise InputError(f"{folder}: PixelSpacing {spacing.tolist()} must be two finite sizes > 0 (mm)")


def _sorted_by_position(folder: Path, headers: list[Any]) -> tuple[list[Any], np.ndarray]:
    """Slices ordered along the normal and the mean step vector between them (LPS mm)."""
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([np.asarray(h.ImagePositionPatient, dtype=np.float64) for h in headers])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    distance = distance[order]
    gaps = np.diff(distance)
    if np.any(gaps < 1e-3):
        raise InputError(
            f"{folder}: several slices share one position (multi-echo, repeated or time-series acquisition); "
            "put one 3-D series per folder"
        )
    median = float(np.median(gaps))
    worst = float(np.max(np.abs(gaps - median)))
    if worst > SPACING_TOLERANCE * median:
        raise InputError(
            f"{folder}: slice spacing is irregular (gaps {gaps.min():.3f}..{gaps.max():.3f} mm, median {median:.3f}); "
            "missing slices or a mixed series"
        )
    ordered = [headers[i] for i in order]
    step = (positions[order[-1]] - positions[order[0]]) / (len(headers) - 1)
    return ordered, step


def _rescaled_dtype(values: np.ndarray) -> np.dtype:
    """The smallest integer type that holds the rescaled values exactly, else float32."""
    if not np.all(values == np.round(values)):
        return np.dtype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    for dtype in (np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float32)


def read_dicom_series(folder: str | Path, max_voxels: int = DEFAULT_MAX_INPUT_VOXELS) -> Volume:
    """Read the single series in ``folder`` into a RAS+ Volume.

    Array axes: i = DICOM column index (along the row direction), j = row index, k = slice
    along the normal. The affine's third column is the mean step between slice positions,
    so a gantry tilt shows up as a shear instead of being silently dropped.
    """
    with _quiet_pydicom():
        return _read_dicom_series(require("pydicom"), Path(folder), max_voxels)


def _read_dicom_series(pydicom: Any, folder: Path, max_voxels: int) -> Volume:
    """read_dicom_series with pydicom's and numpy's warnings silenced."""
    if not folder.is_dir():
        raise InputError(f"{folder}: is not a DICOM series folder")
    try:
        files = dicom_files(folder)
    except OSError as exc:
        raise InputError(f"{folder}: cannot be listed ({exc.strerror or exc})") from None
    if not files:
        raise InputError(f"{folder}: contains no DICOM files")
    headers = _read_headers(folder, files)
    _require_one_series(folder, headers)
    if len(headers) < 2:
        raise InputError(f"{folder}: holds a single slice; a 3-D series needs at least 2")
    headers, step = _sorted_by_position(folder, headers)
    first = headers[0]
    rows, cols = int(first.Rows), int(first.Columns)
    shape = (cols, rows, len(headers))
    check_size(folder, shape, 4, max_voxels)

    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing  # along a row: column index i grows
    lps[:3, 1] = iop[3:] * row_spacing  # down a column: row index j grows
    lps[:3, 2] = step
    lps[:3, 3] = np.asarray(first.ImagePositionPatient, dtype=np.float64)
    affine = check_affine(folder, LPS_TO_RAS @ lps)

    data = np.empty(shape, dtype=np.float32)
    stored_dtype = None
    for k, header in enumerate(headers):
        try:
            ds = pydicom.dcmread(header.filename)
            pixels = ds.pixel_array
        except Exception as exc:  # pydicom raises many types on broken pixel data (TypeError on an empty one)
            raise InputError(f"{header.filename}: pixel data cannot be decoded ({one_line(exc)})") from None
        if pixels.shape != (rows, cols):
            raise InputError(f"{header.filename}: pixel data has shape {pixels.shape}, expected {(rows, cols)} (colour or multi-frame?)")
        stored_dtype = pixels.dtype
        slope = _number(ds, "RescaleSlope", 1.0, float)
        intercept = _number(ds, "RescaleIntercept", 0.0, float)
        data[:, :, k] = (pixels.astype(np.float64) * slope + intercept).T
    check_voxels(folder, data)
    reference = pydicom.dcmread(first.filename, stop_before_pixels=True)
    return Volume(
        data=data,
        affine=affine,
        header=None,
        source_dtype=_rescaled_dtype(data),
        source_path=folder,
        meta={
            "format": "dicom",
            "series_instance_uid": str(getattr(first, "SeriesInstanceUID", "")),
            "stored_dtype": str(stored_dtype),
            "photometric": str(getattr(first, "PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
            "dicom_reference": reference,
            # (SOPClassUID, SOPInstanceUID) of each slice in k order: what a derived series references
            "dicom_instances": [(str(getattr(h, "SOPClassUID", "")), str(getattr(h, "SOPInstanceUID", ""))) for h in headers],
        },
    )


# ---------------------------------------------------------------- writing


def write_dicom_series(*args: Any, **kwargs: Any) -> Path:
    """The derived-series writer lives in dicom_write.py (this name is kept for its callers)."""
    from .dicom_write import write_dicom_series as write

    return write(*args, **kwargs)


def load_dicom_series(path: str | Path, max_voxels: int = DEFAULT_MAX_INPUT_VOXELS) -> Volume:
    """readers.read_volume's entry: a series folder, or any one file of it (its folder is read)."""
    path = Path(path)
    return read_dicom_series(path.parent if path.is_file() else path, max_voxels=max_voxels)
