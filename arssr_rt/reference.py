"""``--reference REF``: the output takes another image's voxel grid (``flirt -ref``,
``mri_convert -rl``, TorchIO ``Resample(target)``, ``antsApplyTransforms -r``).

Output shape and affine are the reference's exactly (its first three axes: a 4-D reference
gives its spatial grid, as flirt and mri_convert use it); a NIfTI reference also gives its
qform and sform with their codes (other formats: both = its affine, code 1, scanner);
intensities come from the input. Both images' affines are taken to be in the same world
space (as every tool above does: no registration happens here).

How the output is made (``plan_target`` + ``pipeline.render``):

- the reference grid is the input's axis-aligned FOV-preserving refinement (what
  ``--shape`` of the reference's shape would give, within ``ALIGN_TOLERANCE`` voxels): the
  model runs on it directly, so the result is that of ``--shape``/``--scale``, bit for bit;
- any other grid (oblique or rotated, another field of view or origin): the model
  super-resolves onto an input-aligned FOV-preserving grid (``intermediate_grid``) whose
  spacing along each input axis is the reference's spacing seen along that axis (exactly the
  reference's spacing for an isotropic reference in any orientation, never coarser than the
  input), then that grid is resampled in world space onto the reference grid with the cubic
  B-spline (``resample.resample_world``: interpolating, so samples on the intermediate's
  voxel centres are kept; linear would blur by up to half a voxel where the grids fall
  between each other). Why the detour: the network decodes points of the input's
  FOV-preserving grid only (its coordinates and tiling are defined on that grid).
- ``--interp nearest|linear|cubic`` resample the input onto the reference grid directly.

Reference voxels more than half a voxel outside the input's field of view get ``FILL`` = 0
(flirt, ANTs and mri_convert pad with 0 too). The intermediate covers the input's whole field
of view, file-backed when large (``--max-memory``), and is turned into spline coefficients in
place, slab by slab.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InputError
from .params import flag
from .geometry import MIN_OUTPUT_AXIS, OutputGrid, plan_output_grid, spacing_of

ALIGN_TOLERANCE = 1e-4  # output voxels: float32 header round-off, not a different grid
FILL = 0.0
WORLD_METHOD = "cubic"  # intermediate -> reference grid on the model path


@dataclass(frozen=True)
class Reference:
    """A reference image's grid (read from its header) and how many volumes it holds."""

    path: Path
    grid: OutputGrid
    volumes: int = 1


def read_reference(path: str | os.PathLike) -> Reference:
    """The grid of ``path`` (NIfTI, MGZ/MGH from the header alone; NRRD, DICOM via their
    readers); any problem is one InputError line starting ``--reference``."""
    try:
        return _read(Path(path))
    except InputError as exc:
        raise InputError(f"{flag('reference')} {exc}") from None


def _read(p: Path) -> Reference:
    from .readers import input_format, read_volume

    if not p.exists() and not p.is_symlink():
        raise InputError(f"{p}: no such file or folder")
    if input_format(p) not in ("nifti", "mgh"):
        volume = read_volume(p)  # NRRD, DICOM: their readers' checks
        return Reference(p, _grid(p, volume.shape, volume.affine, None))
    import nibabel as nib

    from .nifti_io import _describe_read_error, _quiet_nibabel, _raw_header, affine_in_mm, load_image
    from .validation import check_affine, check_spacing

    img = load_image(p, lambda exc: _describe_read_error(exc, p))
    if not isinstance(img, (nib.Nifti1Pair, nib.MGHImage)):
        raise InputError(f"{p}: is a {type(img).__name__} file, not NIfTI or MGH/MGZ")
    full = tuple(int(n) for n in img.header.get_data_shape())
    if len(full) < 3:
        raise InputError(f"{p}: is {len(full)}-D (shape {full}); a reference grid needs three axes")
    try:
        with _quiet_nibabel():
            if isinstance(img, nib.MGHImage):
                spacing, forms = np.asarray(img.header["delta"], dtype=np.float64), None
            else:
                spacing, forms = np.asarray(_raw_header(img)["pixdim"][1:4], dtype=np.float64), _nifti_forms(img)
            raw_affine = affine_in_mm(img.affine, img.header)  # MGH headers are in mm already
    except Exception as exc:  # nibabel's many failure types on a broken header
        raise InputError(f"{p}: invalid geometry in the header: {exc}") from None
    check_spacing(p, spacing)
    affine = check_affine(p, raw_affine)
    return Reference(p, _grid(p, full[:3], affine, forms), volumes=math.prod(full[3:]))


def _nifti_forms(img) -> tuple[np.ndarray, int, np.ndarray, int]:
    """The reference's qform and sform (in mm) with their codes; a code-0 form gets the affine in use."""
    from .nifti_io import affine_in_mm, forms_in_mm

    affine = affine_in_mm(img.affine, img.header)
    qform, qcode, sform, scode = forms_in_mm(img.header)
    return (affine if qform is None else qform), qcode, (affine if sform is None else sform), scode


def _grid(p: Path, shape: Sequence[int], affine: np.ndarray, forms) -> OutputGrid:
    shape3 = tuple(int(n) for n in shape[:3])
    if min(shape3) < MIN_OUTPUT_AXIS:
        raise InputError(f"{p}: its grid {shape3} has an axis under {MIN_OUTPUT_AXIS} voxels; a 3-D output grid is needed")
    affine = np.asarray(affine, dtype=np.float64)
    if forms is None:  # no NIfTI header: its affine, in scanner coordinates
        forms = (affine, 1, affine, 1)
    return OutputGrid(shape=shape3, affine=affine, spacing=spacing_of(affine), forms=forms)  # type: ignore[arg-type]


def aligned(in_shape: Sequence[int], in_affine: np.ndarray, grid: OutputGrid) -> bool:
    """Whether ``grid`` is the input's FOV-preserving refinement of its own shape (the model
    path can run on it directly)."""
    try:
        fov = plan_output_grid(in_shape, in_affine, shape=grid.shape)
    except InputError:  # a scale out of range: not a grid --shape could give
        return False
    voxel_map = np.linalg.solve(fov.affine, np.asarray(grid.affine, dtype=np.float64))
    return bool(np.allclose(voxel_map, np.eye(4), rtol=0.0, atol=ALIGN_TOLERANCE))


def intermediate_grid(in_shape: Sequence[int], in_affine: np.ndarray, grid: OutputGrid,
                      on_note: Callable[[str], None] | None = None) -> OutputGrid:
    """The input-aligned FOV-preserving grid the model writes before the world-space resample.

    Spacing along input axis ``a`` (world direction ``u``) is ``1 / |R^-1 u|``, R = the
    reference's voxel-to-world matrix: the reference's own spacing when aligned, the same
    for an isotropic reference at any rotation; an axis where the reference is coarser keeps
    the input's voxels (the model does not down-sample) and gets a warning.
    """
    lin = np.asarray(in_affine, dtype=np.float64)[:3, :3]
    units = lin / np.linalg.norm(lin, axis=0)[None, :]
    spacing = 1.0 / np.linalg.norm(np.linalg.solve(np.asarray(grid.affine, dtype=np.float64)[:3, :3], units), axis=0)
    in_spacing = spacing_of(in_affine)
    shape = []
    coarser = []
    for a, (h, sp, target) in enumerate(zip(in_shape, in_spacing, spacing)):
        n = int(round(h * sp / target))
        if n < h:
            coarser.append(f"axis {a} ({target:.3g} vs {sp:.3g} mm)")
        shape.append(max(int(h), n))
    if coarser and on_note:
        on_note(f"warning: the reference grid is coarser than the input along {', '.join(coarser)}; "
                "resampling onto it is not anti-aliased")
    return plan_output_grid(in_shape, in_affine, shape=shape)


def to_reference(data: np.ndarray, via: OutputGrid, grid: OutputGrid, max_memory: int) -> np.ndarray:
    """The model's result on ``via`` resampled onto ``grid`` (consumes ``data``: it becomes
    spline coefficients); the result is file-backed when large, like the pipeline's output."""
    from .memory import OUTPUT_IN_MEMORY_FRACTION, output_buffer
    from .resample import prefilter_in_place, resample_world

    out = output_buffer(grid.shape, in_memory=4 * grid.voxels <= OUTPUT_IN_MEMORY_FRACTION * max_memory)
    prefilter_in_place(data)
    return resample_world(data, via.affine, grid.shape, grid.affine, WORLD_METHOD, FILL, out=out, prefiltered=True)


def overlaps(in_shape: Sequence[int], in_affine: np.ndarray, grid: OutputGrid) -> bool:
    """Whether any reference voxel centre falls inside the input's field of view (corner test
    of the reference box: cheap; a false 'yes' only costs an all-fill output)."""
    corners = np.array([[i, j, k, 1.0] for i in (0, grid.shape[0] - 1) for j in (0, grid.shape[1] - 1)
                        for k in (0, grid.shape[2] - 1)])
    points = (np.linalg.solve(np.asarray(in_affine, np.float64), np.asarray(grid.affine, np.float64)) @ corners.T)[:3]
    lo, hi = points.min(axis=1), points.max(axis=1)
    return bool(np.all(hi >= -0.5) and np.all(lo <= np.asarray(in_shape, np.float64) - 0.5))
