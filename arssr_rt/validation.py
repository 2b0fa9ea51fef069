"""Checks every reader applies before a volume reaches the pipeline.

They are format-neutral (NIfTI, NRRD, DICOM readers share them) and cheap: the shape and size
checks run on header values alone, before any voxel is read, so a header that claims 30000^3
voxels is refused without allocating anything.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError, InputTooLargeError

# 512^3 voxels: a 0.5 mm whole head is ~400^3; anything larger is almost surely a broken header
DEFAULT_MAX_INPUT_VOXELS = 512**3


def spatial_shape(path: Path | str, shape: Sequence[int]) -> tuple[int, int, int]:
    """The 3-D shape of an image whose axes beyond the third hold a single volume.

    4-D (or higher) images whose extra axes all have length 1 are 3-D volumes stored with
    trailing singleton axes (common for NIfTI written by some tools) and are accepted; a real
    time series or vector image is refused because a model for scalar 3-D volumes cannot
    handle it meaningfully.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) < 3:
        raise InputError(f"{path}: is {len(shape)}-D (shape {shape}); a 3-D volume is needed")
    extra = shape[3:]
    if any(n <= 0 for n in extra):  # not a series to split: there is no volume at all
        raise InputError(f"{path}: has an empty axis beyond the third (shape {shape}): it holds no volume")
    if extra and math.prod(extra) != 1:
        raise InputError(
            f"{path}: is {len(shape)}-D with shape {shape}; only 3-D volumes (or 4-D with one volume) "
            "are supported: split it into 3-D volumes first"
        )
    spatial = shape[:3]
    if any(n <= 0 for n in spatial):
        raise InputError(f"{path}: has an empty axis (shape {spatial})")
    if any(n == 1 for n in spatial):
        raise InputError(
            f"{path}: has an axis of length 1 (shape {spatial}); a single slice cannot be super-resolved in 3-D"
        )
    return spatial  # type: ignore[return-value]


def check_size(path: Path | str, shape: Sequence[int], itemsize: int, max_voxels: int) -> None:
    """Refuse an image larger than ``max_voxels`` before its data is read."""
    voxels = math.prod(int(n) for n in shape)
    if voxels > max_voxels:
        gib = voxels * itemsize / 2**30
        raise InputTooLargeError(
            f"{path}: header claims shape {tuple(int(n) for n in shape)} ({voxels:,} voxels, {gib:.1f} GiB), "
            f"over the input limit of {max_voxels:,} voxels"
        )


def check_spacing(path: Path | str, spacing: Sequence[float]) -> None:
    """Voxel sizes must be finite and > 0 (zero or NaN spacing makes the geometry meaningless)."""
    values = [float(v) for v in spacing]
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{path}: voxel size must be finite and > 0 on every axis, got {values}")


def check_affine(path: Path | str, affine: np.ndarray) -> np.ndarray:
    """The voxel-to-world affine must be finite and invertible; returns it as float64 4x4."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InputError(f"{path}: the voxel-to-world affine has non-finite values")
    if np.abs(a).max() > np.finfo(np.float32).max:  # NRRD/DICOM text can say 1e308; output headers are float32
        raise InputError(f"{path}: the voxel-to-world affine has values beyond float32 range (|x| > 3.4e38 mm)")
    singular_values = np.linalg.svd(a[:3, :3], compute_uv=False)
    # relative test: a spacing of 1e-3 mm is legal, a (near) rank-deficient matrix is not
    if singular_values[0] == 0.0 or singular_values[-1] / singular_values[0] < 1e-9:
        raise InputError(f"{path}: the voxel-to-world affine is singular (zero spacing or collapsed axes)")
    return a


def check_voxels(path: Path | str, data: np.ndarray) -> None:
    """Refuse NaN/Inf voxels and constant images (after scaling) with a count or the value."""
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise InputError(f"{path}: has {bad:,} NaN/Inf voxels; fix or mask them before super-resolution")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InputError(f"{path}: is constant (every voxel is {lo:g}); there is nothing to super-resolve")


def check_scalar_dtype(path: Path | str, dtype: np.dtype) -> None:
    """Only real scalar voxels: complex and RGB/structured images have no single intensity."""
    dtype = np.dtype(dtype)
    if dtype.fields is not None or dtype.kind == "V":
        raise InputError(f"{path}: has RGB/structured voxels ({dtype}); a scalar (grey-level) image is needed")
    if dtype.kind == "c":
        raise InputError(f"{path}: has complex voxels ({dtype}); use the magnitude image")
    if dtype.kind not in "biuf":
        raise InputError(f"{path}: has unsupported voxel type {dtype}")
