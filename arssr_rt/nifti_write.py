"""Safe NIfTI writing: the output header rules (see ``save_volume``), through the output guard
and ``atomic.atomic_write``. Reading lives in ``nifti_io``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .atomic import atomic_write
from .errors import OutputError
from .geometry import OutputGrid
from .intensity import choose_output_dtype, to_output_dtype
from .memory import all_finite, convert_in_slabs, min_max
from .nifti_io import NIFTI1_MAX_DIM, NIFTI_SUFFIXES, _quiet_nibabel, forms_in_mm, mm_per_unit
from .outputs import check_output
from .volume import Volume


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

    if grid.forms is not None:  # a reference grid: its own forms
        return grid.forms[0], grid.forms[2]
    src = source.header
    if not isinstance(src, nib.Nifti1Header):
        return grid.affine, grid.affine
    voxel_map = np.linalg.solve(np.asarray(source.affine, dtype=np.float64), np.asarray(grid.affine, dtype=np.float64))
    # in mm, like source.affine and grid.affine (output_header then states mm)
    qform, _, sform, _ = forms_in_mm(src)
    return (grid.affine if qform is None else qform @ voxel_map), (grid.affine if sform is None else sform @ voxel_map)


def output_header(source: Volume, grid: OutputGrid, out_dtype: np.dtype, slope: float, inter: float, value_range: tuple[float, float],
                  forms: tuple[np.ndarray, np.ndarray], descrip: str | None = None):
    """The header of the output file, ``forms`` = ``form_affines(source, grid)``; see ``save_volume`` for the rules."""
    import nibabel as nib

    from .provenance import with_source

    src = source.header
    if isinstance(src, nib.Nifti1Header):  # Nifti2Header is a subclass
        hdr = src.copy()
        qcode, scode = int(src["qform_code"]), int(src["sform_code"])
        try:
            time_unit = hdr.get_xyzt_units()[1]
        except KeyError:  # an undefined unit code (read as mm): not copied into a new file
            hdr.set_xyzt_units("unknown", "unknown")
        else:
            if mm_per_unit(src) != 1.0:  # metres/microns in: the forms are in mm (form_affines)
                hdr.set_xyzt_units("mm", time_unit)
    else:
        hdr = nib.Nifti1Header()
        hdr.set_xyzt_units("mm", "sec")
        qcode = scode = 0
    if grid.forms is not None:  # a reference grid: its codes with its forms
        qcode, scode = int(grid.forms[1]), int(grid.forms[3])
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
    if descrip is not None:  # what made this file, then the input's own note when it fits
        hdr["descrip"] = with_source(descrip, bytes(hdr["descrip"].tobytes()) if isinstance(src, nib.Nifti1Header) else None)
    return hdr


def save_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    grid: OutputGrid,
    source: Volume,
    dtype: str | None = None,
    force: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    descrip: str | None = None,
) -> Path:
    """Write the restored intensities ``data`` (float32, ``grid.shape``) as NIfTI, atomically.

    Voxel type: ``dtype`` if given (e.g. ``"float32"``); else float inputs give float32 and
    integer inputs keep their type, rounded and clipped to its range; an integer output reuses
    the input's scl_slope/scl_inter so the stored values decode to the right intensities.

    Header: a copy of the input's NIfTI header (intent, xyzt_units, dim_info, TR are
    kept; NIfTI-2 stays NIfTI-2) with the new shape, voxel type, qform and sform each carried
    through the voxel map of the new grid (see ``form_affines``: a form that agreed with
    ``grid``'s source affine gives ``grid.affine``; pixdim follows), the input's qform/sform codes copied (both 0 in the
    input -> both written as 1, scanner, so readers do not ignore the new origin), cal_min/max
    set to the output range, slice-timing indices and extensions dropped; an input whose
    xyzt_units say metres or microns is written in mm (its forms converted, units mm). A grid with
    ``forms`` (a --reference grid) gets those forms and codes instead. ``descrip`` (from
    ``provenance.describe``) replaces the input's descrip, which is appended when both fit in
    80 bytes; None keeps the input's. Inputs without a NIfTI header get a fresh NIfTI-1 header
    with codes 1 and units mm/s.

    The file is written to a hidden temp file in the output folder (same suffix, so nibabel
    picks gzip for .nii.gz) and renamed over ``path``; on any failure the temp file is removed
    and nothing appears at ``path``.

    Raises:
        OutputError: bad suffix, missing folder, existing file without ``force``, an input
            (``inputs`` and ``source.source_path``), non-finite result, or a write failure.
    """
    protected = [*inputs, *([source.source_path] if source.source_path is not None else [])]
    p = check_output_path(path, force, protected)
    suffix = output_suffix(p)
    if not all_finite(np.asarray(data)):
        raise OutputError(f"{p}: the result has NaN/Inf voxels (model or backend fault); nothing was written")
    return write_image(p, nifti_image(data, grid, source, dtype, descrip), suffix)


def nifti_image(data: np.ndarray, grid: OutputGrid, source: Volume, dtype: str | None = None, descrip: str | None = None):
    """The image ``save_volume`` writes, in memory (the Python API returns it): voxel type,
    scaling and header by the rules in ``save_volume``; NIfTI-2 for a NIfTI-2 header. A 4-D
    ``data`` (grid.shape + (T,)) is a series: pixdim beyond the spatial axes (TR) is kept."""
    data = np.asarray(data)
    if tuple(data.shape[:3]) != tuple(grid.shape) or data.ndim not in (3, 4):
        raise ValueError(f"data shape {data.shape} does not match the output grid {grid.shape}")
    out_dtype = choose_output_dtype(source.source_dtype, dtype)
    slope, inter = _scaling_for(source, out_dtype)
    # slab by slab: a huge (file-backed) result is never copied whole into memory
    stored = convert_in_slabs(data, lambda slab: to_output_dtype(slab, out_dtype, slope, inter), out_dtype)
    stored_min, stored_max = min_max(stored)
    decoded_min = stored_min * slope + inter
    decoded_max = stored_max * slope + inter
    forms = form_affines(source, grid)
    header = output_header(source, grid, out_dtype, slope, inter, (decoded_min, decoded_max), forms, descrip)
    if data.ndim == 4:
        kept = np.array(header["pixdim"][4:], copy=True)
        header.set_data_shape(data.shape)
        header["pixdim"][4:] = kept
    return build_nifti_image(stored, grid.affine, header, forms, slope, inter)


def build_nifti_image(stored: np.ndarray, affine: np.ndarray, header, forms, slope: float, inter: float):
    """The image of ``stored`` with ``header``; the forms, codes and scaling are asserted after
    the constructor (which re-derives some fields), header extensions dropped (old grid)."""
    import nibabel as nib

    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    with _quiet_nibabel():
        image = image_class(stored, affine, header=header)
    image.header.set_qform(forms[0], code=int(header["qform_code"]))
    image.header.set_sform(forms[1], code=int(header["sform_code"]))
    image.header.set_slope_inter(slope, inter)
    image.header.extensions.clear()
    return image


def write_nifti_image(p: Path, stored: np.ndarray, affine: np.ndarray, header, forms, slope: float, inter: float, suffix: str) -> Path:
    """Write ``stored`` with ``header`` atomically (``build_nifti_image``, then the atomic writer)."""
    return write_image(p, build_nifti_image(stored, affine, header, forms, slope, inter), suffix)


def write_image(p: Path, image, suffix: str) -> Path:
    """Write a nibabel image atomically at ``p`` (a checked output path)."""
    def write(tmp: Path) -> None:
        with _quiet_nibabel():
            image.to_filename(tmp)

    # temp file with the same suffix so nibabel picks gzip for .nii.gz; fsync, umask, rename
    atomic_write(p, write, suffix=suffix)
    return p
