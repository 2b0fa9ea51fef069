"""Image-quality metrics for 3-D volumes: PSNR, Gaussian-window SSIM and a head mask.

Conventions (stated once, used everywhere):

- ``data_range`` is the HR reference's ``max - min`` (not the dtype's range), so PSNR does not
  depend on how a file stores its intensities.
- SSIM is Wang et al. (2004) with a 3-D Gaussian window (sigma 1.5 voxels, truncated at 3.5
  sigma: an 11^3 window), K1 = 0.01, K2 = 0.03, population (not sample) covariances, the
  local statistics computed with ``scipy.ndimage.gaussian_filter`` in float64 and mirrored
  ("reflect") borders; the mean is taken over every voxel (no border crop) or over a mask.
- The head mask is where the comparison is meaningful: air around the head is easy to
  reconstruct and would inflate every score.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..extras import require

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5 voxels, as scikit-image's Gaussian SSIM
SSIM_K1 = 0.01
SSIM_K2 = 0.03
HEAD_THRESHOLD = 0.10  # fraction of the intensity range above the minimum
HEAD_DILATION = 2  # voxels


def _check_pair(ref: np.ndarray, test: np.ndarray) -> None:
    if ref.shape != test.shape:
        raise InputError(f"cannot compare volumes of shapes {ref.shape} and {test.shape}")


def _selection(shape: tuple[int, ...], mask: np.ndarray | None) -> np.ndarray | slice:
    """Boolean mask checked against ``shape``, or ``slice(None)`` for the whole volume."""
    if mask is None:
        return slice(None)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise InputError(f"mask shape {mask.shape} does not match volume shape {shape}")
    if not mask.any():
        raise InputError("the mask selects no voxels; nothing to compare")
    return mask


def default_data_range(ref: np.ndarray) -> float:
    """``max - min`` of the reference; 1.0 for a constant reference (any value would be arbitrary)."""
    value = float(np.max(ref)) - float(np.min(ref))
    return value if value > 0 else 1.0


def psnr(ref: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)`` over ``mask`` (or all).

    Identical volumes give ``math.inf`` (MSE 0), not a division error.

    Example:
        >>> ref = np.zeros((4, 4, 4)); ref[0] = 1.0
        >>> round(psnr(ref, ref + 0.1), 2)
        20.0
    """
    ref = np.asarray(ref)
    test = np.asarray(test)
    _check_pair(ref, test)
    where = _selection(ref.shape, mask)
    rng = default_data_range(ref) if data_range is None else float(data_range)
    if not rng > 0:
        raise InputError(f"data_range must be > 0, got {data_range}")
    diff = ref[where].astype(np.float64) - test[where].astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(rng * rng / mse)


def ssim_map(ref: np.ndarray, test: np.ndarray, data_range: float | None = None) -> np.ndarray:
    """Per-voxel SSIM (float64, same shape as the inputs) with the module's Gaussian window."""
    ndimage = require("scipy.ndimage")
    ref = np.asarray(ref)
    test = np.asarray(test)
    _check_pair(ref, test)
    rng = default_data_range(ref) if data_range is None else float(data_range)
    if not rng > 0:
        raise InputError(f"data_range must be > 0, got {data_range}")
    c1 = (SSIM_K1 * rng) ** 2
    c2 = (SSIM_K2 * rng) ** 2
    x = ref.astype(np.float64)
    y = test.astype(np.float64)

    def local_mean(v: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(v, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x * mu_x
    var_y = local_mean(y * y) - mu_y * mu_y
    cov = local_mean(x * y) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return num / den


def ssim3d(ref: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, data_range: float | None = None) -> float:
    """Mean 3-D SSIM over ``mask`` (or the whole volume); 1.0 for identical volumes."""
    values = ssim_map(ref, test, data_range)
    return float(np.mean(values[_selection(values.shape, mask)]))


def head_mask(hr: np.ndarray) -> np.ndarray:
    """Boolean mask of the head (not the air around it) in an HR volume.

    Recipe: voxels above ``min + 10% of (max - min)``, dilated by 2 voxels (face-connected
    structuring element, so edge voxels just below the threshold count), then 3-D holes filled
    (dark CSF/ventricles enclosed by tissue stay in). A constant volume has no head: the mask
    is empty and metrics over it raise InputError.
    """
    ndimage = require("scipy.ndimage")
    data = np.asarray(hr)
    lo, hi = float(np.min(data)), float(np.max(data))
    mask = data > lo + HEAD_THRESHOLD * (hi - lo)
    mask = ndimage.binary_dilation(mask, iterations=HEAD_DILATION)
    return np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)
