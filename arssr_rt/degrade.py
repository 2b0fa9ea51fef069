"""Simulated MR acquisitions: make an LR volume from an HR one on a centre-aligned grid.

Shared by training (LR made on the fly) and ``evaluate`` so both see the same degradation.
The LR grid of ``h`` voxels covers exactly the HR field of view of ``H`` voxels: LR voxel
``i`` sits at HR continuous index ``(i + 0.5) * H / h - 0.5`` (the published pipeline used a
corner-aligned zoom here, a half-voxel error we do not repeat).
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from .extras import require

Degradation = Literal["cubic", "kspace", "slice", "gaussian"]
DEGRADATIONS: tuple[str, ...] = ("cubic", "kspace", "slice", "gaussian")


def lr_shape_for(hr_shape: Sequence[int], scale: Sequence[float]) -> tuple[int, int, int]:
    """h = round(H / s), at least 1, per axis."""
    return tuple(max(1, int(round(H / s))) for H, s in zip(hr_shape, scale))  # type: ignore[return-value]


def _centre_positions(H: int, h: int) -> np.ndarray:
    return (np.arange(h, dtype=np.float64) + 0.5) * H / h - 0.5


def cubic_resample(volume: np.ndarray, out_shape: Sequence[int], order: int = 3) -> np.ndarray:
    """B-spline (order 3 = tricubic) resampling onto a centre-aligned grid of ``out_shape``.

    A tensor-product spline interpolates separably, so each axis is one small matrix product
    (the matrix is scipy's 1-D spline interpolation applied to unit vectors, mirror boundary).
    Used both to down-sample and as the tricubic baseline.
    """
    out = np.asarray(volume, dtype=np.float64)
    for axis, n_out in enumerate(out_shape):
        n_in = out.shape[axis]
        if n_out == n_in:
            continue
        matrix = interpolation_matrix(n_in, n_out, order)
        out = np.moveaxis(np.tensordot(matrix, out, axes=([1], [axis])), 0, axis)
    return out.astype(np.float32)


def interpolation_matrix(n_in: int, n_out: int, order: int = 3) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D spline interpolation at centre-aligned output positions."""
    ndimage = require("scipy.ndimage")
    pos = _centre_positions(n_in, n_out)
    eye = np.eye(n_in, dtype=np.float64)
    cols = [ndimage.map_coordinates(eye[:, k], [pos], order=order, mode="mirror") for k in range(n_in)]
    return np.stack(cols, axis=1)


def kspace_truncate(volume: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Keep the central k-space of the HR volume (an MR acquisition at lower resolution).

    A DFT crop samples corner-aligned positions; a phase ramp moves them to the centre-aligned
    LR grid so this degradation shares the geometry of the others.
    """
    spec = np.fft.fftn(volume.astype(np.float64))
    for axis, h in enumerate(out_shape):
        H = spec.shape[axis]
        if h == H:
            continue
        freqs = np.fft.fftfreq(H) * H
        keep = np.argsort(np.abs(freqs), kind="stable")[:h]
        keep = np.sort(keep)
        spec = np.take(spec, keep, axis=axis)
        # shift by (H/h - 1)/2 HR voxels so LR voxel 0 sits at HR index 0.5*H/h - 0.5
        shift = (H / h - 1.0) / 2.0
        phase = np.exp(2j * np.pi * freqs[keep] * shift / H)
        shape = [1, 1, 1]
        shape[axis] = h
        spec = spec * phase.reshape(shape)
    ratio = np.prod(out_shape) / np.prod(volume.shape)
    return (np.real(np.fft.ifftn(spec)) * ratio).astype(np.float32)


def slice_profile(volume: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Thick-slice acquisition: box-average over each LR voxel's extent, then sample centres."""
    ndimage = require("scipy.ndimage")
    out = volume.astype(np.float64)
    for axis, h in enumerate(out_shape):
        width = out.shape[axis] / h
        if width > 1.0:
            out = ndimage.uniform_filter1d(out, size=max(1, int(round(width))), axis=axis, mode="mirror")
    return cubic_resample(out, out_shape, order=1)


def gaussian_blur_down(volume: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Anti-aliased down-sampling: Gaussian with FWHM = the LR spacing, then cubic sampling."""
    ndimage = require("scipy.ndimage")
    sigmas = [max(0.0, (H / h) / 2.355 if H > h else 0.0) for H, h in zip(volume.shape, out_shape)]
    blurred = ndimage.gaussian_filter(volume.astype(np.float64), sigma=sigmas, mode="mirror")
    return cubic_resample(blurred, out_shape)


def degrade(volume: np.ndarray, scale: Sequence[float], kind: str = "cubic") -> np.ndarray:
    """LR volume of shape round(H / s) from ``volume`` with the named degradation."""
    out_shape = lr_shape_for(volume.shape, scale)
    if kind == "cubic":
        return cubic_resample(volume, out_shape)
    if kind == "kspace":
        return kspace_truncate(volume, out_shape)
    if kind == "slice":
        return slice_profile(volume, out_shape)
    if kind == "gaussian":
        return gaussian_blur_down(volume, out_shape)
    raise ValueError(f"unknown degradation {kind!r}; choose from {', '.join(DEGRADATIONS)}")
